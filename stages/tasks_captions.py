"""Caption tasks answered by geometry (docs/captions.md): rule-written `pose_description` and
`pose_difference` rows, and the fine-grained multiple-choice `description_match` (one frame)
and `change_match` (two frames).

Every stated fact is true with margin on the row's keypoints (stages/captions.py); every claim
a wrong option makes beyond the truth is definitely false (False with margin in posecodes,
never unknown). The options of a match question are the captions of the images a fair coin
could show (the frame mirrored or not; for change_match also the two frames in either order),
so the text alone does not tell which is true; their lengths are matched.
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
#
# change_match crosses both: its 4 options are the captions of (mirrored?, reversed?), and each
# is the true one exactly 1/4 of the time given the options. description_match has one frame
# and only the mirror: it crosses the mirror with one slot's value edited (drawn from
# DESC_PRIORS), so a text-only model can at best guess the edit (1/2 at most overall).
# A question is asked only when every wrong option is definitely false (each claim it makes
# beyond the truth False with margin) for EVERY coin outcome, a condition that does not depend
# on the coins, so filtering keeps the fairness. Lengths are matched over the set of options
# (captions.matched_texts) (docs/captions.md).

Value = tuple  # a unit's value: one entry per part of the unit (None: the part has no fact)

DESC_UNITS: dict[str, tuple[str, ...]] = {"torso": ("torso",), "arms": cap.PAIRS["arm"],
                                          "legs": cap.PAIRS["leg"]}
# A relation about an edited slot's body parts is left out of that question's options, so no
# option contradicts its own context sentence.
DESC_DROP = {"arms": "hands_together", "legs": "feet_apart"}


# The edited value of a description_match slot is drawn from the slot's whole vocabulary with
# the frequency TRUE values have (a fixed table, below): with truth t drawn at rate p(t) (the
# data) and the edit v drawn at rate p(v) (this table), (true t, edit v) is about as frequent
# as (true v, edit t). That holds only as far as the table fits the data; the mirror, not the
# table, is what bounds the text-only accuracy (docs/captions.md). A draw equal to the truth
# or not False with margin on the frame is not redrawn (a redraw would favour rare truths).
#
# Measured with `python bench/caption_baselines.py --priors` (code of commit caafe93, after
# issue 13's pose checks and its "bent below 120 degrees" rule; 2-core AMD EPYC dev box):
# the true value of each frame eligible for description_match (>= min_facts facts, caption
# margins 15 deg / 0.15), configs/local.yaml pose (mediapipe, 512 px, num_poses 2) over the 9
# shared clips at decode.num_frames=64 plus the 17 hand-labelled images as stills (frames the
# pose checks did not flag); counts of frames (116 torso, 67 arms, 81 legs; 7-10 videos).
# Leave-one-video-out spread (largest change of a value's share when one video is left
# out): torso 0.18, arms 0.20, legs 0.09 -- the table is coarse (few videos), so its values
# are counts to draw from, not a claim about poses in general.
_B, _R, _S, _H = "bent at the elbow", "raised above the head", \
    "stretched out away from the body", "hanging down by the side"
_ST, _TR = "straight", "bent with the thigh raised"
DESC_PRIORS: dict[str, dict[tuple, int]] = {
    "torso": {("upright",): 87, ("leaning",): 29},
    "arms": {(None, _B): 27, (_R, _R): 22, (_B, _B): 6, (_S, _S): 4, (_S, None): 2, (_H, None): 2,
             (_B, None): 1, (None, _R): 1, (None, _H): 1, (_S, _B): 1},
    "legs": {(_ST, _ST): 61, (None, _ST): 18, (_ST, None): 1, (_TR, None): 1},
}


def _prior_draw(unit: str, truth: Value, rng) -> Optional[Value]:
    """One draw from DESC_PRIORS[unit] among the values stating the same parts as `truth`."""
    pool = [(v, n) for v, n in DESC_PRIORS[unit].items() if _shape(v) == _shape(truth)]
    k = rng.random() * sum(n for _, n in pool)   # always one draw: the rng stream stays aligned
    for v, n in pool:
        if k < n:
            return v
        k -= n
    return None


def _value(get, parts: tuple[str, ...]) -> Optional[Value]:
    v = tuple(get(p) for p in parts)
    return None if all(x is None for x in v) else v


def _shape(v: Value) -> tuple[bool, ...]:
    return tuple(x is None for x in v)


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

def _desc_states(facts: cap.PoseFacts, option: dict[str, Value]) -> dict[str, str]:
    states = dict(facts.states)
    for unit, v in option.items():
        for part, s in zip(DESC_UNITS[unit], v):
            if s is not None:
                states[part] = s
    return states


def _definitely_false_edit(option: dict[str, Value], truth: dict[str, Value],
                           false: dict[str, list[str]]) -> bool:
    """Every part state the option changes is False with margin on the frame."""
    return all(a == t or a in false.get(p, ()) for u, v in option.items()
               for p, t, a in zip(DESC_UNITS[u], truth[u], v))


def _mirror_facts(f: cap.PoseFacts) -> cap.PoseFacts:
    return cap.PoseFacts({swap_sides(p): s for p, s in f.states.items()}, f.relations)


def _negative_rules(rules: pc.Rules) -> pc.Rules:
    """The rules a wrong option's claims are judged false by (NEGATIVE_POSITION_MARGIN)."""
    return pc.Rules(angle_margin=rules.angle_margin,
                    position_margin=max(rules.position_margin, NEGATIVE_POSITION_MARGIN))


def _pose_claim_test(keypoints, w: int, h: int, min_score: float, rules: pc.Rules):
    """fact -> is it False with margin on this frame (a state, or a relation)."""
    false = cap.definitely_false(keypoints, w, h, min_score, rules)
    rel = pc.relations(keypoints, w, h, min_score, rules)
    return lambda f: (f["state"] in false.get(f["part"], ()) if "state" in f
                      else rel.get(f["relation"]) is False)


def description_match(row: dict, cfg: MatchTaskConfig, ctx: RunContext,
                      min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h = int(row["width"]), int(row["height"])
    rng = rng_for(row, "description_match", ctx.seed)
    rules = caption_rules(cfg)
    negative_rules = _negative_rules(rules)
    facts = {pos: f for pos, f in _frame_facts(row, subject, min_score, rules).items()
             if len(f) >= cfg.min_facts}
    cands: list[Candidate] = []
    for pos, f in facts.items():
        kps = subject.keypoints[pos]
        mirrored_kps = mirror_keypoints(kps)
        # the rules are mirror-symmetric; a frame where rounding says otherwise is not asked
        if cap.pose_facts(mirrored_kps, w, h, min_score, rules) != _mirror_facts(f):
            continue
        values = {u: v for u, parts in DESC_UNITS.items() if (v := _value(f.states.get, parts))}
        false = cap.definitely_false(kps, w, h, min_score, negative_rules)
        edits = {}
        for u, v in values.items():   # one prior draw per unit, in a fixed order (rng aligned)
            x = _prior_draw(u, v, rng)
            if x is not None and x != v and _definitely_false_edit({u: x}, values, false):
                edits[u] = x
        mirror_coin = bool(rng.random() < 0.5)
        if not edits:
            continue
        unit = sorted(edits)[int(rng.integers(len(edits)))]
        relations = tuple(r for r in f.relations if r != DESC_DROP.get(unit))
        truth = cap.PoseFacts(dict(f.states), relations)
        edited = cap.PoseFacts(_desc_states(f, {unit: edits[unit]}), relations)
        # outcome order: (not mirrored, truth), (mirrored, truth), edit, mirrored edit
        variants = [truth, _mirror_facts(truth), edited, _mirror_facts(edited)]
        lists = [v.as_list() for v in variants]
        tests = [_pose_claim_test(k, w, h, min_score, negative_rules) for k in (kps, mirrored_kps)]
        if not _distinct(lists) or not _all_wrong_false(lists, tests):   # the edits: never shown
            continue
        cands.append((pos, f"{pos}:{unit}", {
            "variants": variants, "shown": int(mirror_coin), "positions": [pos],
            "mirrored": mirror_coin, "edit": f"mirror+{unit}", "struct": {"slot": unit}}))

    def render(v: cap.PoseFacts, voice: cap.Voice) -> str:
        return cap.describe_pose(v.states, v.relations, voice)

    def question(template: str, who: str, named: bool) -> str:
        return (f"{template.format(who=who)}{box_note(named)}{SIDE_NOTE}"
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
