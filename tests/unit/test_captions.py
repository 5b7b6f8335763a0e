"""Geometry-written captions (stages/captions.py, stages/tasks_captions.py) and the rewrite
verifier (stages/verify_captions.py), on hand-made poses (tests/helpers/pose.py)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from proxyqa.core.config import MLLMConfig, TasksConfig
from proxyqa.stages import captions as cap
from proxyqa.stages import posecodes as pc
from proxyqa.stages.mllm_plan import MLLMPlanner, Skip
from proxyqa.stages.sampling import RunContext
from proxyqa.stages.tasks import BuildTasksStage
from proxyqa.stages.verify_captions import check_rewrite, claims
from tests.helpers.pose import make_kps, make_row

RULES = pc.Rules(angle_margin=15.0, position_margin=0.15)
CAPTION_TASKS = ["pose_description", "pose_difference", "description_match", "change_match"]

# Left arm raised, right hanging, both legs straight (person faces the camera).
RAISED_LEFT = dict(arms=((170, 175), (10, 175)), legs=((0, 178), (0, 178)))
POSES = [RAISED_LEFT,
         dict(arms=((10, 175), (10, 175)), legs=((0, 178), (60, 90))),
         dict(arms=((90, 175), (10, 90)), legs=((0, 178), (0, 100)), lean=35),
         dict(arms=((10, 90), (170, 175)), legs=((70, 100), (0, 178)))]
# The left hand swings from the side to above the head (the largest movement) while the right
# hand comes down from shoulder height: every mirrored and reversed change is definitely false.
SWING = [dict(arms=((10, 175), (90, 175)), legs=((0, 178), (0, 178))),
         dict(arms=((170, 175), (10, 175)), legs=((0, 178), (0, 178)))]
# The left arm raised and the right hanging, both legs straight and then the right knee bent:
# the two frames differ in one fact (the right leg), each frame's mirror in the arms: 4 images
# with 4 captions.
STEP = [RAISED_LEFT, dict(RAISED_LEFT, legs=((0, 178), (0, 90)))]


def all_rows() -> list[dict]:
    return build([make_row([make_kps(**p) for p in POSES]),
                  make_row([make_kps(**p) for p in SWING], video_id="vid-swing"),
                  make_row([make_kps(**p) for p in STEP], video_id="vid-step")])


def fact_truth(kps, fact: dict):
    """A caption fact's truth on keypoints (caption margins): True / False / None."""
    if "state" in fact:
        return pc.state_truths(kps, 1000, 1000, 0.5, RULES)[fact["part"]][fact["state"]]
    return pc.heights(kps, 1000, 1000, 0.5, RULES).get(fact["relation"])


def build(rows: list[dict], **cfg) -> list[dict]:
    tasks = TasksConfig.model_validate({
        "enabled": CAPTION_TASKS, "pose_description": {"generator": "rules", "samples_per_video": 4},
        "pose_difference": {"generator": "rules", "samples_per_video": 2},
        "description_match": {"samples_per_video": 4}, "change_match": {"samples_per_video": 3},
        **cfg})
    out = BuildTasksStage(tasks, RunContext("r", "h", 0), 0.5)({k: [r[k] for r in rows] for k in rows[0]})
    return [s for samples in out["samples"] for s in samples]


def test_caption_states_only_facts_true_with_margin_in_the_persons_own_sides():
    kps = make_kps(**RAISED_LEFT)
    f = cap.pose_facts(kps, 1000, 1000, 0.5, RULES)
    assert f.states["left_arm"] == "raised above the head"
    assert f.states["right_arm"] == "hanging down by the side"
    text = cap.describe_pose(f.states, f.relations, cap.Voice("x"))
    assert "left arm" in text and "right" in text and "Both legs" in text
    truths = pc.state_truths(kps, 1000, 1000, 0.5, RULES)
    assert all(truths[x["part"]][x["state"]] is True for x in f.as_list() if "part" in x)


def test_unreliable_joint_gives_no_fact():
    kps = make_kps(**RAISED_LEFT)
    kps[pc.J["left_wrist"]][2] = 0.1    # below min_keypoint_score: the left arm is not described
    f = cap.pose_facts(kps, 1000, 1000, 0.5, RULES)
    assert "left_arm" not in f.states
    assert "left arm" not in cap.describe_pose(f.states, f.relations, cap.Voice("x"))


def test_phrasing_is_deterministic_and_varies_across_seeds():
    f = cap.pose_facts(make_kps(**RAISED_LEFT), 1000, 1000, 0.5, RULES)
    texts = {cap.describe_pose(f.states, f.relations, cap.Voice(str(i))) for i in range(30)}
    assert len(texts) >= 5
    assert (cap.describe_pose(f.states, f.relations, cap.Voice("7"))
            == cap.describe_pose(f.states, f.relations, cap.Voice("7")))


def test_rule_rows_store_their_facts_and_negatives_are_definitely_false():
    rows = all_rows()
    tasks = {r["task"] for r in rows}
    assert tasks == set(CAPTION_TASKS), tasks
    for r in rows:
        s = json.loads(r["answer_struct"])
        assert r["answer_source"] == "geometry" and s["facts"]
        if r["task"] == "description_match":
            assert r["choices"][s["index"]] == r["answer"] and len(r["choices"]) == 4
            assert len(set(r["choices"])) == 4
            for i, facts in enumerate(s["choice_facts"]):
                said = [fact_truth(r["keypoints"][0], f) for f in facts if f not in s["facts"]]
                assert all(v is False for v in said) and bool(said) == (i != s["index"])
        if r["task"] == "change_match":
            assert r["choices"][s["index"]] == r["answer"] and len(set(r["choices"])) == 4
            # Image 1 is the later frame exactly when the row says the pair is reversed
            assert (r["timestamps"][0] > r["timestamps"][1]) == s["reversed"]
            assert "not necessarily in time order" in r["question"]


def _asked(rows: list[dict], task: str) -> list[tuple]:
    """(option set, shown outcome) of each row: the outcome by its coins."""
    out = []
    for r in rows:
        if r["task"] == task:
            s = json.loads(r["answer_struct"])
            out.append((frozenset(r["choices"]), s["mirrored"], s.get("reversed", False), r))
    return out


def test_match_rows_show_every_coin_outcome_and_the_images_follow_it():
    """Over many seeds the same option set is asked with each of its images shown, and a
    mirrored row's image, keypoints and box are the left-right mirror of the frame's."""
    import cv2

    videos = {"change_match": make_row([make_kps(**p) for p in SWING], video_id="vid-swing"),
              "description_match": make_row([make_kps(**p) for p in STEP], video_id="vid-step")}
    outcomes: dict[str, Counter] = {"description_match": Counter(), "change_match": Counter()}
    for (task, video), seed in ((tv, seed) for tv in videos.items() for seed in range(24)):
        tasks = TasksConfig.model_validate({"enabled": [task], "seed": seed})
        out = BuildTasksStage(tasks, RunContext("r", "h", seed), 0.5)(
            {k: [video[k]] for k in video})
        for _, mirrored, reversed_, r in _asked(out["samples"][0], task):
            if task == "description_match":   # the outcome: which frame, mirrored or not
                reversed_ = r["frame_indices"][0] != video["frame_indices"][0]
            s = json.loads(r["answer_struct"])
            outcomes[task][(mirrored, reversed_, json.dumps(s["facts"]))] += 1
            pos = [video["frame_indices"].index(i) for i in r["frame_indices"]]
            frame = cv2.imdecode(np.frombuffer(video["frames_jpeg"][pos[0]], np.uint8), 1)
            shown = cv2.imdecode(np.frombuffer(r["images"][0], np.uint8), 1)
            expect = cv2.flip(frame, 1) if mirrored else frame
            assert np.abs(shown.astype(int) - expect.astype(int)).mean() < 3
            kps = np.asarray(json.loads(video["subject_json"])["keypoints"][pos[0]], float)
            if mirrored:   # the left wrist of the shown image is the frame's right one, x mirrored
                kps = kps[[pc.J[n.replace("left_", "#").replace("right_", "left_").replace("#", "right_")]
                           for n in pc.J]]
                kps[:, 0] = 1 - kps[:, 0]
            assert np.allclose(np.asarray(r["keypoints"][0], float), kps, atol=1e-4)
            assert s["facts"] == s["choice_facts"][s["index"]]
    # change_match: 4 outcomes (mirror x reversal), each with its own true facts
    assert {(m, v) for m, v, _ in outcomes["change_match"]} == {(a, b) for a in (0, 1) for b in (0, 1)}
    assert len({a for *_, a in outcomes["change_match"]}) == 4
    # description_match: 4 outcomes (frame x mirror), each with its own true facts
    assert {(m, v) for m, v, _ in outcomes["description_match"]} == {
        (a, b) for a in (0, 1) for b in (0, 1)}
    assert len({a for *_, a in outcomes["description_match"]}) == 4


def test_rules_generator_off_writes_no_caption_rows_and_mllm_skips_rule_tasks():
    row = make_row([make_kps(**p) for p in POSES])
    rows = build([row, make_row([make_kps(**p) for p in SWING], video_id="vid-swing")],
                 pose_description={"generator": "mllm"}, pose_difference={"generator": "mllm"})
    assert {r["task"] for r in rows} == {"description_match", "change_match"}
    rows = build([row])
    posed = {**row, "samples": rows}
    planner = MLLMPlanner(MLLMConfig(enabled=True), ["pose_description"], RunContext("r", "h", 0), 0.5)
    step = planner.plan(posed, "pose_description", {})
    assert isinstance(step, Skip) and step.kind == "rule_generated"
    # With synthesized_qa the description is still asked for, but no MLLM description row is kept.
    planner = MLLMPlanner(MLLMConfig(enabled=True, rule_draft=True),
                          ["pose_description", "synthesized_qa"], RunContext("r", "h", 0), 0.5)
    step = planner.plan(posed, "pose_description", {})
    assert not isinstance(step, Skip) and "Draft:" in step.prompt and step.meta["draft_facts"]


@pytest.mark.parametrize("text,kept", [
    ("The person stands tall with the torso upright. Her left hand is lifted over her head, and "
     "the right arm hangs loosely by her side. Both legs are straight.", True),
    ("The torso is upright. The right arm is raised above the head, while the left arm hangs "
     "down by the side. Both legs are straight.", False),        # sides exchanged
    ("The torso is upright. The left arm is raised above the head. Both legs are straight.",
     False),                                                      # a fact dropped
])
def test_rewrite_must_keep_every_fact_and_contradict_none(text, kept):
    kps = make_kps(**RAISED_LEFT)
    f = cap.pose_facts(kps, 1000, 1000, 0.5, RULES)
    ok, why = check_rewrite(text, f.as_list(), kps, 1000, 1000, 0.5)
    assert ok is kept, why


def test_rule_captions_parse_back_to_their_own_facts():
    """The verifier reads every phrasing the writer can produce."""
    rng = np.random.default_rng(0)
    for i in range(60):
        arms = tuple((rng.uniform(0, 180), rng.uniform(60, 180)) for _ in range(2))
        legs = tuple((rng.uniform(-10, 100), rng.uniform(60, 180)) for _ in range(2))
        kps = make_kps(arms=arms, legs=legs, lean=rng.uniform(-80, 80))
        f = cap.pose_facts(kps, 1000, 1000, 0.5, RULES)
        text = cap.describe_pose(f.states, f.relations, cap.Voice(str(i)))
        said, rels = claims(text)
        assert said == {(p, s) for p, s in f.states.items()}, (text, said, f.states)
        assert rels == set(f.relations), (text, rels)


def test_every_limb_phrasing_parses_back_and_none_reads_as_a_lifted_leg():
    """Each phrasing of each arm and leg state (singular and plural) reads back as that state. The
    thigh-raised state is a thigh flexed against the torso (a knee lift, and also sitting):
    the audit by eye judged "the left leg is raised with the knee bent" unnatural for a seated
    person, so no phrasing of it says the leg is lifted or raised."""
    for kind, states in (("leg", pc.LEG_STATES), ("arm", pc.ARM_STATES)):
        for state in states:
            for phrase in cap.SINGULAR[state]:
                assert claims(f"The left {kind} {phrase}.")[0] == {(f"left_{kind}", state)}, phrase
            for phrase in cap.PLURAL[state]:
                both = {(f"left_{kind}", state), (f"right_{kind}", state)}
                assert claims(f"Both {kind}s {phrase}.")[0] == both, phrase
    seated = cap.SINGULAR["bent with the thigh raised"] + cap.PLURAL["bent with the thigh raised"]
    assert not any(w in p for p in seated for w in ("lifted", "is raised", "are raised"))


def test_description_match_needs_two_lopsided_frames_differing_in_a_fact():
    """The question is one of 4 images (two frames, each mirrored or not): a video of two
    lopsided poses that differ in one fact gets rows, each wrong option differing from the
    truth only in facts False with margin on the shown image; a video of one pose (no second
    frame) and one of a symmetric pose (its mirror is itself) get none."""
    rows = [r for r in build([make_row([make_kps(**p) for p in STEP * 4], video_id="v")],
                             description_match={"samples_per_video": 16})
            if r["task"] == "description_match"]
    assert rows
    for r in rows:
        s = json.loads(r["answer_struct"])
        assert r["answer"] == r["choices"][s["index"]] and len(set(r["choices"])) == 4
        raised = "left_arm" if not s["mirrored"] else "right_arm"
        assert {"part": raised, "state": "raised above the head"} in s["facts"]
        # the pair's video frame indices; the shown one is the row's frame
        assert s["edit"] == "mirror+frame" and r["frame_indices"][0] in s["frames"]
        for i, facts in enumerate(s["choice_facts"]):
            said = [fact_truth(r["keypoints"][0], f) for f in facts if f not in s["facts"]]
            assert all(v is False for v in said) and bool(said) == (i != s["index"])
    both = dict(arms=((170, 175), (170, 175)), legs=((0, 178), (0, 178)))
    for frames in ([RAISED_LEFT] * 16, [both, dict(both, lean=35)] * 8):
        assert not [r for r in build([make_row([make_kps(**p) for p in frames])],
                                     description_match={"samples_per_video": 16})
                    if r["task"] == "description_match"]


def test_heights_say_which_hand_is_higher_and_the_mirror_exchanges_them():
    from proxyqa.stages.mirror import mirror_keypoints

    # left arm held out (wrist at shoulder height), right arm hanging: the left hand is higher
    kps = make_kps(arms=((90, 175), (10, 175)))
    # (the feet are level: within the margin, so no foot fact either way)
    assert pc.heights(kps, 1000, 1000, 0.5, RULES) == {"left_hand_higher": True,
                                                       "right_hand_higher": False}
    assert pc.heights(mirror_keypoints(kps), 1000, 1000, 0.5, RULES)["right_hand_higher"] is True
    # within the margin (0.1 + 0.15 torso lengths): no height fact either way
    level = make_kps(arms=((20, 175), (10, 175)))
    assert "left_hand_higher" not in pc.heights(level, 1000, 1000, 0.5, RULES)
    # no height from a limb with a collapsed segment (a wrist taken from a neighbour) ...
    collapsed = [list(k) for k in kps]
    collapsed[pc.J["right_elbow"]][:2] = [collapsed[pc.J["right_wrist"]][0] + 0.01,
                                          collapsed[pc.J["right_wrist"]][1]]
    assert not any("hand" in r for r in pc.heights(collapsed, 1000, 1000, 0.5, RULES))
    # ... nor from two wrists one above the other (one may hide the other)
    stacked = [list(k) for k in kps]
    stacked[pc.J["right_wrist"]][0] = stacked[pc.J["left_wrist"]][0] + 0.01   # 0.05 S sideways
    assert not any("hand" in r for r in pc.heights(stacked, 1000, 1000, 0.5, RULES))
    # a height the arm states already say is not stated again in a caption
    states = pc.part_states(kps, 1000, 1000, 0.5, RULES)
    assert states["left_arm"] == "stretched out away from the body"
    assert cap.height_facts(kps, 1000, 1000, 0.5, states, RULES) == ()
    bent = make_kps(arms=((90, 60), (10, 175)))
    bent_states = pc.part_states(bent, 1000, 1000, 0.5, RULES)
    assert "left_hand_higher" in cap.height_facts(bent, 1000, 1000, 0.5, bent_states, RULES)


def test_match_options_have_matched_lengths_whatever_their_order():
    one = {"torso": "leaning", "left_arm": "stretched out away from the body",
            "left_leg": "straight", "right_leg": "straight"}
    mixed = {**one, "right_arm": "bent at the elbow"}
    for base, tolerance in ((one, 2), (mixed, 40)):   # "both arms ..." vs a mixed clause: 38
        states = [base, {**base, "torso": "upright"}, {**base, "left_arm": "bent at the elbow"},
                  {**base, "torso": "upright", "left_arm": "bent at the elbow"}]
        renders = [lambda v, s=s: cap.describe_pose(s, (), v) for s in states]
        voice = cap.Voice("q")
        texts = cap.matched_texts(renders, voice)
        plain = [r(voice) for r in renders]
        spread = max(map(len, texts)) - min(map(len, texts))
        assert spread < max(map(len, plain)) - min(map(len, plain)) and spread <= tolerance, texts
        # the target is a function of the set of options: reordering them changes no text
        assert cap.matched_texts(renders[::-1], voice) == texts[::-1]
        for t, s in zip(texts, states):               # still the same facts
            assert claims(t)[0] == set(s.items())


def test_card_quotes_captions_and_match_options_as_text():
    from proxyqa.trainer.card import caption_examples

    rows = all_rows()
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    md = "\n".join(caption_examples({t: rs[:2] for t, rs in by_task.items()}))
    for task in CAPTION_TASKS:
        assert f"**{task}** (geometry):" in md
        for r in by_task[task][:2]:
            if r["choices"]:
                assert f"**[x]** {r['answer']}" in md
                assert all(f"[ ] {c}" in md for c in r["choices"] if c != r["answer"])
            else:
                assert r["answer"] in md
    assert caption_examples({}) == []
