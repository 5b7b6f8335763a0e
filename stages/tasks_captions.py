"""Caption tasks answered by geometry (docs/captions.md): rule-written `pose_description` and
`pose_difference` rows, and the fine-grained multiple-choice `description_match` (one frame)
and `change_match` (two frames).

Every stated fact is true with margin on the row's keypoints (stages/captions.py); every wrong
option differs from the truth in one statement whose claim is definitely false (False with
margin in posecodes, never unknown). Options are built so the truth cannot be told from the
text alone: all four options share every sentence but one "slot", and the slot's four values
form a symmetric set (see `_grid`), so no option is the odd one out or the centre of the others.
"""
from __future__ import annotations

from typing import Any, Optional

from proxyqa.core.config import CaptionTaskConfig, MatchTaskConfig
from proxyqa.core.people import subject_of
from proxyqa.stages import captions as cap
from proxyqa.stages import posecodes as pc
from proxyqa.stages.sampling import RunContext, make_sample, rng_for
from proxyqa.stages.tasks_spatial import Candidate, box_note, pick_diverse, subject_phrase

SIDE_NOTE = " Left and right mean the person's own left and right, not the viewer's."
TWO_FRAMES = "Image 1 and Image 2 are two frames of one video; Image 1 was taken first."
UP_DOWN_NOTE = " Up and down are directions in the image."
MAX_PAIRS = 64   # frame pairs examined per video at most


def _voice(row: dict, task: str, key: str, seed: int) -> cap.Voice:
    return cap.Voice(f"{row.get('content_id') or row['video_id']}|{task}|{key}|{seed}")


def caption_rules(cfg: CaptionTaskConfig | MatchTaskConfig) -> pc.Rules:
    """The documented rules with the captions' (stricter) margins."""
    return pc.Rules(angle_margin=cfg.angle_margin, position_margin=cfg.position_margin)


def _frame_facts(row: dict, subject, min_score: float, rules: pc.Rules) -> dict[int, cap.PoseFacts]:
    w, h = int(row["width"]), int(row["height"])
    return {pos: cap.pose_facts(subject.keypoints[pos], w, h, min_score, rules)
            for pos in subject.frames()}


def _pairs(row: dict, subject, rng) -> list[tuple[int, int]]:
    frames, ts = subject.frames(), row["timestamps"]
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
        question = (f"Describe the body pose of {who}, body part by body part.{box_note(named)}"
                    f"{SIDE_NOTE}")
        samples.append(make_sample(
            row, "pose_description", ctx, key=f"{pos}", positions=[pos], question=question,
            answer=text, answer_struct={"facts": f.as_list()}, answer_source="geometry"))
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
        question = (f"{TWO_FRAMES} How does the pose of {who} change from Image 1 to Image 2?"
                    f"{box_note(named)}{SIDE_NOTE}{UP_DOWN_NOTE}")
        samples.append(make_sample(
            row, "pose_difference", ctx, key=f"{a},{b}", positions=[a, b], question=question,
            answer=text, answer_struct={"facts": f.as_list()}, answer_source="geometry"))
    return samples


# ---- description_match -------------------------------------------------------------------------

def _grid(truth: tuple[str, str], other: str) -> list[tuple[str, str]]:
    """The 2x2 grid of (left, right) values over {truth value(s), other}: the truth (first) and three
    options one statement away from it. Each option's distances to the other three are the
    same (1, 1, 2), and two options say "both", two name the sides: none stands out."""
    a, b = truth
    vals = (a, b) if a != b else (a, other)
    return [truth] + [(x, y) for x in vals for y in vals if (x, y) != truth]


def _match_candidates(facts: cap.PoseFacts, false: dict[str, list[str]], rng,
                      min_facts: int) -> list[tuple[str, dict]]:
    """(diversity key, {"slot", "options": [states dict], "edits"}) for one frame."""
    if len(facts) < min_facts:
        return []
    out = []
    states = facts.states
    for kind, (lp, rp) in cap.PAIRS.items():
        ls, rs = states.get(lp), states.get(rp)
        if ls and rs:
            if ls != rs:
                if ls not in false[rp] or rs not in false[lp]:
                    continue
                grid, edit = _grid((ls, rs), ""), "side"
            else:
                shared = [s for s in false[lp] if s in false[rp]]
                if not shared:
                    continue
                grid, edit = _grid((ls, rs), shared[int(rng.integers(len(shared)))]), "both"
            options = [{**states, lp: x, rp: y} for x, y in grid]
            out.append((f"{kind}:{edit}", {"slot": kind, "options": options, "edit": edit}))
        elif ls or rs:
            part, state = (lp, ls) if ls else (rp, rs)
            wrong = false[part]
            if len(wrong) < 3:
                continue
            picks = [wrong[i] for i in sorted(rng.choice(len(wrong), 3, replace=False))]
            options = [dict(states)] + [{**states, part: s} for s in picks]
            out.append((f"{kind}:state", {"slot": part, "options": options, "edit": "state"}))
    return out


def description_match(row: dict, cfg: MatchTaskConfig, ctx: RunContext,
                      min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h = int(row["width"]), int(row["height"])
    rng = rng_for(row, "description_match", ctx.seed)
    rules = caption_rules(cfg)
    cands: list[Candidate] = []
    for pos, facts in _frame_facts(row, subject, min_score, rules).items():
        false = cap.definitely_false(subject.keypoints[pos], w, h, min_score, rules)
        for key, c in _match_candidates(facts, false, rng, cfg.min_facts):
            cands.append((pos, key, {**c, "relations": facts.relations}))
    samples = []
    for pos, key, c in pick_diverse(cands, cfg.samples_per_video, rng):
        voice = _voice(row, "description_match", f"{pos}:{key}", ctx.seed)
        order = [int(i) for i in rng.permutation(len(c["options"]))]
        options = [c["options"][i] for i in order]
        texts = [cap.describe_pose(o, c["relations"], voice) for o in options]
        index = order.index(0)
        who, named = subject_phrase(row, subject, [pos], "0_1000")
        question = (f"Which description fits the pose of {who}?{box_note(named)}{SIDE_NOTE}"
                    " Answer with the option's text.")
        struct: dict[str, Any] = {
            "index": index, "slot": c["slot"], "edit": c["edit"],
            "facts": cap.facts_of(options[index], c["relations"]),
            "choice_facts": [cap.facts_of(o, c["relations"]) for o in options],
        }
        samples.append(make_sample(
            row, "description_match", ctx, key=f"{pos}:{key}", positions=[pos],
            question=question, choices=texts, answer=texts[index], answer_struct=struct,
            answer_source="geometry"))
    return samples


# ---- change_match ------------------------------------------------------------------------------

def _change_candidates(f: cap.ChangeFacts, motion: dict, cfg: MatchTaskConfig,
                       rng) -> list[tuple[str, dict]]:
    out = []
    if len(f) < cfg.min_facts:
        return out
    for kind, (lp, rp) in cap.MOTION_PAIRS.items():
        ld, rd = f.directions.get(lp), f.directions.get(rp)
        if ld and rd:   # both definite: every other combination is definitely false
            grid = [(x, y) for x in ("up", "down") for y in ("up", "down")]
            grid.remove((ld, rd))
            options = [{**f.directions, lp: x, rp: y} for x, y in [(ld, rd), *grid]]
            out.append((f"{kind}:{'both' if ld == rd else 'side'}",
                        {"slot": kind, "edit": "direction",
                         "options": [cap.ChangeFacts(o, f.most_moved, f.changes) for o in options]}))
    if f.most_moved:
        others = [p for p in motion if p != f.most_moved and p in cap.MOTION_WORDS]
        if len(others) >= 3:
            picks = [others[i] for i in sorted(rng.choice(len(others), 3, replace=False))]
            options = [cap.ChangeFacts(f.directions, p, f.changes) for p in [f.most_moved, *picks]]
            out.append(("most_moved", {"slot": "most_moved", "edit": "most_moved",
                                       "options": options}))
    return out


def change_match(row: dict, cfg: MatchTaskConfig, ctx: RunContext, min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h, kps = int(row["width"]), int(row["height"]), subject.keypoints
    rng = rng_for(row, "change_match", ctx.seed)
    rules = caption_rules(cfg)
    cands: list[Candidate] = []
    for a, b in _pairs(row, subject, rng):
        moved = pc.pose_motion(kps[a], kps[b], w, h, min_score)
        if moved is None or moved < cfg.min_pose_motion:
            continue
        motion = pc.joint_motion(kps[a], kps[b], w, h, min_score, rules)
        f = cap.change_facts(kps[a], kps[b], w, h, min_score, rules)
        for key, c in _change_candidates(f, motion, cfg, rng):
            cands.append((a * 1000 + b, key, {**c, "pair": (a, b)}))
    samples = []
    for _, key, c in pick_diverse(cands, cfg.samples_per_video, rng):
        a, b = c["pair"]
        voice = _voice(row, "change_match", f"{a},{b}:{key}", ctx.seed)
        order = [int(i) for i in rng.permutation(len(c["options"]))]
        options = [c["options"][i] for i in order]
        texts = [cap.describe_change(o, voice) for o in options]
        index = order.index(0)
        who, named = subject_phrase(row, subject, [a, b], "0_1000")
        question = (f"{TWO_FRAMES} Which change of {who}'s pose happened between Image 1 and "
                    f"Image 2?{box_note(named)}{SIDE_NOTE}{UP_DOWN_NOTE} Answer with the "
                    "option's text.")
        struct = {"index": index, "slot": c["slot"], "edit": c["edit"],
                  "facts": options[index].as_list(),
                  "choice_facts": [o.as_list() for o in options]}
        samples.append(make_sample(
            row, "change_match", ctx, key=f"{a},{b}:{key}", positions=[a, b], question=question,
            choices=texts, answer=texts[index], answer_struct=struct, answer_source="geometry"))
    return samples


# The caption margins of the config's defaults (tasks.pose_description.angle_margin, ...).
DRAFT_RULES = pc.Rules(angle_margin=15.0, position_margin=0.15)


def frame_caption(keypoints, width: int, height: int, min_score: float, seed: str,
                  rules: pc.Rules = DRAFT_RULES) -> Optional[tuple[str, list[dict]]]:
    """(caption, facts) of one frame, or None without facts: the MLLM rewrite's draft."""
    f = cap.pose_facts(keypoints, width, height, min_score, rules)
    if not len(f):
        return None
    return cap.describe_pose(f.states, f.relations, cap.Voice(seed)), f.as_list()
