"""Caption tasks answered by geometry (docs/captions.md): rule-written `pose_description` and
`pose_difference` rows, and the fine-grained multiple-choice `description_match` (one frame)
and `change_match` (two frames).

Every stated fact is true with margin on the row's keypoints (stages/captions.py); every claim
a wrong option makes beyond the truth is definitely false (False with margin in posecodes,
never unknown). The options of a match question are the captions of the images a fair coin
could show (mirrored or not; change_match: the two frames in either order; description_match:
one of two frames), so the text alone does not tell which is true; their lengths are matched.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Optional

from proxyqa.core.config import CaptionTaskConfig, MatchTaskConfig
from proxyqa.core.people import subject_of
from proxyqa.stages import captions as cap
from proxyqa.stages import posecodes as pc
from proxyqa.stages import templates
from proxyqa.stages.mirror import mirror_box, mirror_jpeg, mirror_keypoints, swap_sides
from proxyqa.stages.sampling import RunContext, make_sample, rng_for, sample_id, union_box
from proxyqa.stages.tasks_spatial import Candidate, box_note, pick_diverse, subject_phrase

SIDE_NOTE = " Left and right mean the person's own left and right, not the viewer's."
TWO_FRAMES = "Image 1 and Image 2 are two frames of one video; Image 1 was taken first."
# change_match shows the two frames in either order (a coin: see the matching questions below).
ANY_ORDER = "Image 1 and Image 2 are two frames of one video, not necessarily in time order."
UP_DOWN_NOTE = " Up and down are directions in the image."
HIGHER_NOTE = " Higher and lower mean higher and lower in the image."
MAX_PAIRS = 64   # frame pairs examined per video at most
# A wrong option "raised above the head" must be false by this many body sizes (not just the
# caption margin): the audit by eye found hands at head height (false by the rule's 0.15, but
# read as "raised" by a person) making such options look right (docs/captions.md).
NEGATIVE_POSITION_MARGIN = 0.4


def _voice(row: dict, task: str, key: str, seed: int) -> cap.Voice:
    return cap.Voice(f"{row.get('content_id') or row['video_id']}|{task}|{key}|{seed}")


def caption_rules(cfg: CaptionTaskConfig | MatchTaskConfig) -> pc.Rules:
    """The documented rules with the captions' (stricter) margins."""
    return pc.Rules(angle_margin=cfg.angle_margin, position_margin=cfg.position_margin)


def _frame_facts(row: dict, subject, min_score: float, rules: pc.Rules) -> dict[int, cap.PoseFacts]:
    w, h = int(row["width"]), int(row["height"])
    return {pos: cap.pose_facts(subject.keypoints[pos], w, h, min_score, rules)
            for pos in subject.usable_frames()}   # never a frame the pose checks flagged


def _pairs(row: dict, subject, rng) -> list[tuple[int, int]]:
    frames, ts = subject.usable_frames(), row["timestamps"]
    pairs = [(a, b) for i, a in enumerate(frames) for b in frames[i + 1:] if ts[b] > ts[a]]
    return [pairs[i] for i in rng.permutation(len(pairs))[:MAX_PAIRS]]


# ---- pose_description / pose_difference (generator: rules) ------------------------------------

def pose_description(row: dict, cfg: CaptionTaskConfig, ctx: RunContext,
                     min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.generator != "rules" or cfg.samples_per_video == 0:
        return []
    facts = _frame_facts(row, subject, min_score, caption_rules(cfg))
    cands: list[Candidate] = [(pos, "|".join(sorted(f.states.values())), {"facts": f})
                              for pos, f in facts.items() if len(f) >= cfg.min_facts]
    rng = rng_for(row, "pose_description", ctx.seed)
    samples = []
    for pos, _, c in pick_diverse(cands, cfg.samples_per_video, rng):
        f: cap.PoseFacts = c["facts"]
        who, named = subject_phrase(row, subject, [pos], "0_1000")
        text = cap.describe_pose(f.states, f.relations,
                                 _voice(row, "pose_description", str(pos), ctx.seed))
        tid, template = templates.pick("pose_description", "ask",
                                       sample_id(row, "pose_description", f"{pos}", ctx))
        question = f"{template.format(who=who)}{box_note(named)}{SIDE_NOTE}"
        samples.append(make_sample(
            row, "pose_description", ctx, key=f"{pos}", positions=[pos], question=question,
            answer=text, answer_struct={"facts": f.as_list()}, answer_source="geometry",
            template_id=tid))
    return samples


def pose_difference(row: dict, cfg: CaptionTaskConfig, ctx: RunContext,
                    min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.generator != "rules" or cfg.samples_per_video == 0:
        return []
    w, h, kps = int(row["width"]), int(row["height"]), subject.keypoints
    rng = rng_for(row, "pose_difference", ctx.seed)
    samples, used = [], set()
    for a, b in _pairs(row, subject, rng):
        if len(samples) >= cfg.samples_per_video:
            break
        if a in used or b in used:   # different frames for each row of a video
            continue
        moved = pc.pose_motion(kps[a], kps[b], w, h, min_score)
        if moved is None or moved < cfg.min_pose_motion:
            continue
        f = cap.change_facts(kps[a], kps[b], w, h, min_score, caption_rules(cfg))
        if len(f) < cfg.min_facts:
            continue
        used |= {a, b}
        who, named = subject_phrase(row, subject, [a, b], "0_1000")
        text = cap.describe_change(f, _voice(row, "pose_difference", f"{a},{b}", ctx.seed))
        tid, template = templates.pick("pose_difference", "ask",
                                       sample_id(row, "pose_difference", f"{a},{b}", ctx))
        question = f"{TWO_FRAMES} {template.format(who=who)}{box_note(named)}{SIDE_NOTE}{UP_DOWN_NOTE}"
        samples.append(make_sample(
            row, "pose_difference", ctx, key=f"{a},{b}", positions=[a, b], question=question,
            answer=text, answer_struct={"facts": f.as_list()}, answer_source="geometry",
            template_id=tid))
    return samples


# ---- the matching questions: exact devices ----------------------------------------------------
#
# A text-only model must not tell the true option from the wrong ones, on any data: poses are far
# from uniform and differ from one corpus to the next, so any table of "how often a value is
# true" that wrong options are drawn from is right for one corpus only (bench/caption_baselines.py
# measured 0.35-0.69 on the shared clips with such tables). The options are therefore built so
# that the data cannot matter: each question is one of a set of images that the same options
# describe, one image per option, and which image is shown is a fair coin.
#
# - Mirror: the frame(s) shown left-right mirrored (stages/mirror.py) or not. In the mirrored
#   image the person's own left is the original right, so its caption is the original caption
#   with left and right exchanged.
# - Reversal (change_match): Image 1 and Image 2 shown in time order or the other way round;
#   the change from Image 1 to Image 2 is then the reverse change (up <-> down, from <-> to).
# - Frame (description_match): which of two frames A and B of the video is shown.
#
# change_match crosses mirror and reversal, description_match mirror and frame: the 4 options
# are the captions of the 4 outcomes, and each is the true one exactly 1/4 of the time given
# the options. A question is asked only when every wrong option is definitely false (each claim
# it makes beyond the truth False with margin) for EVERY coin outcome, a condition that does
# not depend on the coins, so filtering keeps the fairness. Lengths are matched over the set of
# options (captions.matched_texts) (docs/captions.md).

def _negative_rules(rules: pc.Rules) -> pc.Rules:
    """The rules a wrong option's claims are judged false by (NEGATIVE_POSITION_MARGIN)."""
    return pc.Rules(angle_margin=rules.angle_margin,
                    position_margin=max(rules.position_margin, NEGATIVE_POSITION_MARGIN))


def _claims_false(option: list[dict], truth: list[dict], is_false) -> bool:
    """The option says something the truth does not, and every such claim is False with margin."""
    extra = [f for f in option if f not in truth]
    return bool(extra) and all(is_false(f) for f in extra)


def _all_wrong_false(variants: list[list[dict]], is_false_on: list) -> bool:
    """For every coin outcome k (variant k shown; `is_false_on[k]` the claim test on its
    image(s)), every other variant is definitely false: the question is fair to ask whichever
    image the coin shows. Outcomes 0 .. len(is_false_on) - 1 can be shown."""
    return all(_claims_false(variants[j], variants[k], test)
               for k, test in enumerate(is_false_on) for j in range(len(variants)) if j != k)


def _distinct(variants: list[list[dict]]) -> bool:
    return len({json.dumps(v, sort_keys=True) for v in variants}) == len(variants)


def _shown_subject(subject, mirrored: bool):
    """The subject as the shown image has it (boxes and keypoints mirrored with the image)."""
    if not mirrored:
        return subject
    return replace(subject, boxes=[mirror_box(b) for b in subject.boxes],
                   keypoints=[mirror_keypoints(k) for k in subject.keypoints])


def _ask(row: dict, task: str, ctx: RunContext, subject, cands: list[Candidate], n: int, rng,
         render, question) -> list[dict]:
    """Rows of the candidates pick_diverse keeps. A candidate holds its variants (the facts of
    each coin outcome, in a fixed order; `render(facts, voice)` writes one), the outcome the
    coins chose (`shown`), the frame positions in shown order and whether the images are
    mirrored."""
    samples = []
    for _, key, c in pick_diverse(cands, n, rng):
        key = c.get("sample_key", key)
        voice = _voice(row, task, key, ctx.seed)
        order = [int(i) for i in rng.permutation(len(c["variants"]))]
        options = [c["variants"][i].as_list() for i in order]
        # lengths matched across the options (captions.matched_texts): no "pick the shortest"
        texts = cap.matched_texts([lambda v, f=c["variants"][i]: render(f, v) for i in order], voice)
        if len(set(texts)) < len(texts):   # distinct facts, same text: never ask it
            continue
        index = order.index(c["shown"])
        pos, mirrored = c["positions"], c["mirrored"]
        shown = _shown_subject(subject, mirrored)
        struct: dict[str, Any] = {"index": index, "facts": options[index], "choice_facts": options,
                                  "edit": c["edit"], "mirrored": mirrored, **c.get("struct", {})}
        tid, template = templates.pick(task, "ask", sample_id(row, task, key, ctx))
        who, named = subject_phrase(row, shown, pos, "0_1000")
        images = [row["frames_jpeg"][p] for p in pos]
        samples.append(make_sample(
            row, task, ctx, key=key, positions=pos, question=question(template, who, named),
            choices=texts, answer=texts[index], answer_struct=struct, answer_source="geometry",
            template_id=tid, images=[mirror_jpeg(b) for b in images] if mirrored else images,
            keypoints=[shown.keypoints[p] for p in pos],
            subject_box=union_box([shown.boxes[p] for p in pos])))
    return samples


# ---- description_match -------------------------------------------------------------------------
#
# One frame is shown, but the question is one of 4 images: two frames A and B of the video, each
# mirrored or not. The options are the 4 images' captions (over a common set of facts), and a
# fair coin picks the image shown. Asked only when the 4 captions differ pairwise, each only in facts
# definitely false on the other's image; the frames must be lopsided (their mirror says something
# else), which hands and feet at different heights (posecodes.heights) make common.

# Caption keys in body order: a part's state, or which hand / foot is higher ("left" / "right").
KEYS = ("torso", "left_arm", "right_arm", "hand_height", "left_leg", "right_leg", "foot_height")
OTHER_SIDE = {"left": "right", "right": "left"}


def _height_fact(key: str, side: str) -> str:
    """("hand_height", "left") -> "left_hand_higher" (the relation posecodes.heights names)."""
    return f"{side}_{key.removesuffix('_height')}_higher"


def _image_values(keypoints, w: int, h: int, min_score: float, rules: pc.Rules) -> dict[str, str]:
    """key -> value of one image: the part states and the heights a caption may state."""
    states = pc.part_states(keypoints, w, h, min_score, rules)
    values = dict(states)
    for key in ("hand_height", "foot_height"):
        for side in OTHER_SIDE:
            if _height_fact(key, side) in cap.height_facts(keypoints, w, h, min_score, states, rules):
                values[key] = side
    return values


def _mirror_values(values: dict[str, str]) -> dict[str, str]:
    return {swap_sides(k): OTHER_SIDE[v] if k.endswith("_height") else v for k, v in values.items()}


def _value_false_test(keypoints, w: int, h: int, min_score: float, rules: pc.Rules):
    """(key, value) -> is it False with margin on this image. States are judged by the
    negative rules (a hand near the head must not make "raised above the head" look true);
    heights by the caption's: a wrong "the right hand is higher" is only ever asked against a
    left hand higher by the caption margin, which no viewer reads as level."""
    false = cap.definitely_false(keypoints, w, h, min_score, _negative_rules(rules))
    heights = pc.heights(keypoints, w, h, min_score, rules)

    def is_false(key: str, value: str) -> bool:
        if key.endswith("_height"):
            return heights.get(_height_fact(key, value)) is False
        return value in false.get(key, ())
    return is_false


def _facts_over(values: dict[str, str], keys: list[str]) -> cap.PoseFacts:
    keys = [k for k in keys if k in values]
    return cap.PoseFacts({k: values[k] for k in keys if not k.endswith("_height")},
                         tuple(_height_fact(k, values[k]) for k in keys if k.endswith("_height")))


def _group_keys(images: list[tuple[dict, Any]], min_facts: int) -> Optional[list[str]]:
    """The keys the captions of images (A, mirrored A, B, mirrored B) may state (each states
    those it has a value for), or None. A key goes when one image's value for it is not False
    with margin on another image that does not have the same value; of the keys where A's and
    B's captions differ only one stays (the first that works, in body order), so the frames'
    captions differ in one fact. Each caption must claim something every other does not, and
    state >= `min_facts` facts."""
    values = [v for v, _ in images]

    def fits(k: str) -> bool:
        return all(values[i].get(k) == values[j][k] or images[i][1](k, values[j][k])
                   for j in range(4) if k in values[j] for i in range(4) if i != j)
    keys = [k for k in KEYS if any(k in v for v in values) and fits(k)]
    differ = [k for k in keys if values[0].get(k) != values[2].get(k)]
    for pick in differ:
        chosen = [k for k in keys if k not in differ or k == pick]
        # every caption claims something each other image's caption does not (a caption that
        # only leaves facts out would be true of that image too)
        claims_more = all(any(k in values[j] and values[i].get(k) != values[j][k] for k in chosen)
                          for i in range(4) for j in range(4) if i != j)
        if claims_more and all(sum(k in v for k in chosen) >= min_facts for v in values):
            return chosen
    return None


def lopsided_images(subject, w: int, h: int, min_score: float, rules: pc.Rules
                    ) -> dict[int, list[tuple[dict, Any]]]:
    """Usable frame -> [(values, false-test) of the frame, the same of its mirror], for the
    frames whose mirror says something else (and says it consistently)."""
    images = {}
    for pos in subject.usable_frames():
        kps = subject.keypoints[pos]
        values = _image_values(kps, w, h, min_score, rules)
        mirrored = mirror_keypoints(kps)
        # the rules are mirror-symmetric; a frame where rounding says otherwise is not used
        if _mirror_values(values) == values or \
                _image_values(mirrored, w, h, min_score, rules) != _mirror_values(values):
            continue
        images[pos] = [(values, _value_false_test(kps, w, h, min_score, rules)),
                       (_mirror_values(values), _value_false_test(mirrored, w, h, min_score, rules))]
    return images


def description_match(row: dict, cfg: MatchTaskConfig, ctx: RunContext,
                      min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h = int(row["width"]), int(row["height"])
    rng = rng_for(row, "description_match", ctx.seed)
    images = lopsided_images(subject, w, h, min_score, caption_rules(cfg))
    cands: list[Candidate] = []
    frames = sorted(images)
    for i, a in enumerate(frames):
        for b in frames[i + 1:]:
            shown = int(rng.integers(4))   # drawn for every pair: the rng stream stays aligned
            group = images[a] + images[b]   # outcome k: frame (a, b)[k // 2], mirrored if k % 2
            keys = _group_keys(group, cfg.min_facts)
            if keys is None:
                continue
            variants = [_facts_over(v, keys) for v, _ in group]
            # the option set is the diversity key: frames that give the same 4 captions count once
            options = json.dumps(sorted(json.dumps(v.as_list()) for v in variants))
            cands.append((a * 1000 + b, options, {
                "variants": variants, "shown": shown, "sample_key": f"{a},{b}",
                "positions": [(a, b)[shown // 2]], "mirrored": bool(shown % 2),
                "edit": "mirror+frame",
                "struct": {"frames": [int(row["frame_indices"][p]) for p in (a, b)]}}))

    def render(v: cap.PoseFacts, voice: cap.Voice) -> str:
        return cap.describe_pose(v.states, v.relations, voice)

    def question(template: str, who: str, named: bool) -> str:
        return (f"{template.format(who=who)}{box_note(named)}{SIDE_NOTE}{HIGHER_NOTE}"
                " Answer with the option's text.")
    return _ask(row, "description_match", ctx, subject, cands, cfg.samples_per_video, rng, render,
                question)


# ---- change_match ------------------------------------------------------------------------------

def _change_claim_test(kps_a, kps_b, w: int, h: int, min_score: float, rules: pc.Rules,
                       negative_rules: pc.Rules):
    """fact -> is it False with margin from frame a to frame b: the opposite of a definite
    direction; a most-moved part that moved less than the definite top part (by the margin);
    a state change whose start or end state is False with margin."""
    motion = pc.joint_motion(kps_a, kps_b, w, h, min_score, rules)
    top = pc.most_moved(motion, rules)
    sa = pc.state_truths(kps_a, w, h, min_score, negative_rules)
    sb = pc.state_truths(kps_b, w, h, min_score, negative_rules)

    def is_false(f: dict) -> bool:
        if "direction" in f:
            m = motion.get(f["motion"])
            return m is not None and m.vertical is not None and m.vertical != f["direction"]
        if "most_moved" in f:
            return top is not None and f["most_moved"] != top and f["most_moved"] in motion
        return sa[f["part"]].get(f["from"]) is False or sb[f["part"]].get(f["to"]) is False
    return is_false


def change_match(row: dict, cfg: MatchTaskConfig, ctx: RunContext, min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h, kps = int(row["width"]), int(row["height"]), subject.keypoints
    rng = rng_for(row, "change_match", ctx.seed)
    rules = caption_rules(cfg)
    negative_rules = _negative_rules(rules)
    cands: list[Candidate] = []
    for a, b in _pairs(row, subject, rng):
        mirror_coin, reverse_coin = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        moved = pc.pose_motion(kps[a], kps[b], w, h, min_score)
        if moved is None or moved < cfg.min_pose_motion:
            continue
        if len(cap.change_facts(kps[a], kps[b], w, h, min_score, rules)) < cfg.min_facts:
            continue
        ma, mb = mirror_keypoints(kps[a]), mirror_keypoints(kps[b])
        # outcome order: (mirrored, reversed) = (no, no), (no, yes), (yes, no), (yes, yes)
        shown = [(kps[a], kps[b]), (kps[b], kps[a]), (ma, mb), (mb, ma)]
        variants = [cap.change_facts(x, y, w, h, min_score, rules) for x, y in shown]
        lists = [v.as_list() for v in variants]
        if not _distinct(lists) or not _all_wrong_false(lists, [
                _change_claim_test(x, y, w, h, min_score, rules, negative_rules) for x, y in shown]):
            continue
        k = 2 * int(mirror_coin) + int(reverse_coin)
        cands.append((a * 1000 + b, f"{a},{b}", {
            "variants": variants, "shown": k,
            "positions": [b, a] if reverse_coin else [a, b], "mirrored": mirror_coin,
            "edit": "mirror+reverse", "struct": {"reversed": reverse_coin}}))

    def question(template: str, who: str, named: bool) -> str:
        return (f"{ANY_ORDER} {template.format(who=who)}{box_note(named)}{SIDE_NOTE}"
                f"{UP_DOWN_NOTE} Answer with the option's text.")
    return _ask(row, "change_match", ctx, subject, cands, cfg.samples_per_video, rng,
                cap.describe_change, question)


# The caption margins of the config's defaults (tasks.pose_description.angle_margin, ...).
DRAFT_RULES = pc.Rules(angle_margin=15.0, position_margin=0.15)


def frame_caption(keypoints, width: int, height: int, min_score: float, seed: str,
                  rules: pc.Rules = DRAFT_RULES) -> Optional[tuple[str, list[dict]]]:
    """(caption, facts) of one frame, or None without facts: the MLLM rewrite's draft."""
    f = cap.pose_facts(keypoints, width, height, min_score, rules)
    if not len(f):
        return None
    return cap.describe_pose(f.states, f.relations, cap.Voice(seed)), f.as_list()
