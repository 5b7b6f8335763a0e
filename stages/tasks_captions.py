"""Caption tasks answered by geometry (docs/captions.md): rule-written `pose_description` and
`pose_difference` rows, and the fine-grained multiple-choice `description_match` (one frame)
and `change_match` (two frames).

Every stated fact is true with margin on the row's keypoints (stages/captions.py); every wrong
option differs from the truth in one statement whose claim is definitely false (False with
margin in posecodes, never unknown). Options are built so the truth cannot be told from the
text alone: they are the 2x2 grid of two "slots" (see `_grid_options`), so no option is the odd
one out or the centre of the others; wrong values are drawn as often as true ones occur; and
the options' lengths are matched.
"""
from __future__ import annotations

from typing import Any, Optional

from proxyqa.core.config import CaptionTaskConfig, MatchTaskConfig
from proxyqa.core.people import subject_of
from proxyqa.stages import captions as cap
from proxyqa.stages import posecodes as pc
from proxyqa.stages import templates
from proxyqa.stages.sampling import RunContext, make_sample, rng_for, sample_id
from proxyqa.stages.tasks_spatial import Candidate, box_note, pick_diverse, subject_phrase

SIDE_NOTE = " Left and right mean the person's own left and right, not the viewer's."
TWO_FRAMES = "Image 1 and Image 2 are two frames of one video; Image 1 was taken first."
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


# ---- the matching questions: units, wrong values, grids --------------------------------------
#
# A text-only model must not tell the true option from the wrong ones. Poses are far from
# uniform (most arms are bent, most legs straight), so a wrong value chosen "because it is
# false" is rarer than the truth and gives it away. The wrong value of a slot is therefore drawn
# with the frequency true values have: for description_match from a fixed prior table of the
# slot's whole vocabulary (DESC_PRIORS), for change_match the value of the same slot in ANOTHER
# frame pair of the same video. Either way a (true, wrong) pair is about as likely as the
# (wrong, true) pair, so the text alone carries no hint of which is true. A draw equal to the
# truth, or not definitely false on this frame, is not redrawn (a redraw would favour rare
# truths): the slot is left out. The 4 options are the 2x2 grid of two such slots (each option
# at distances 1, 1, 2 from the other three), so every wrong option differs from the truth in
# one or two slots, each edit definitely false; their phrasings are chosen so that their lengths
# match (captions.matched_texts) (docs/captions.md).

Value = tuple  # a unit's value: one entry per part of the unit (None: the part has no fact)

DESC_UNITS: dict[str, tuple[str, ...]] = {"torso": ("torso",), "arms": cap.PAIRS["arm"],
                                          "legs": cap.PAIRS["leg"]}
CHANGE_UNITS: dict[str, tuple[str, ...]] = {"most_moved": ("most_moved",), "head": ("head",),
                                            "hands": cap.MOTION_PAIRS["hand"],
                                            "feet": cap.MOTION_PAIRS["foot"]}
# A relation or state change that speaks about a slot's body parts is left out of the options
# while that slot is asked, so no option contradicts its own context sentence.
DESC_DROP = {"arms": "hands_together", "legs": "feet_apart"}
CHANGE_DROP = {"hands": ("left_arm", "right_arm"), "feet": ("left_leg", "right_leg"),
               "most_moved": ("left_arm", "right_arm", "left_leg", "right_leg")}


# The wrong value of a description_match slot is drawn from the slot's whole vocabulary with
# the frequency TRUE values have (a fixed table, below), not only from other frames of the
# video: static clips then yield questions too. With truth t drawn at rate p(t) (the data) and
# the wrong value v drawn once at rate p(v) (this table, measured on the same kind of data),
# a question with (true t, wrong v) is as frequent as one with (true v, wrong t), so every
# value is about as often in the true option as in a wrong one and a text-only model cannot
# learn "the typical value is the true one" (bench/caption_baselines.py measures it). The
# draw is conditioned on the truth's shape (which parts are stated), and a draw equal to the
# truth or not False with margin on the frame is not redrawn: the slot is just not asked there.
#
# Measured with `python bench/caption_baselines.py --priors` (code of commit caafe93, after
# issue 13's pose checks and its "bent below 120 degrees" rule; 2-core AMD EPYC dev box):
# the true value of each frame eligible for description_match (>= min_facts facts, caption
# margins 15 deg / 0.15), configs/local.yaml pose (mediapipe, 512 px, num_poses 2) over the 9
# shared clips at decode.num_frames=64 plus the 17 hand-labelled images as stills (frames the
# pose checks did not flag); counts of frames (116 torso, 67 arms, 81 legs; 7-10 videos).
# Leave-one-video-out spread (largest change of a value's share when one video is left
# out): torso 0.18, arms 0.20, legs 0.09 -- the table is coarse (few videos), so its values
# are counts to draw from, not a claim about poses in general; re-measure on a larger corpus
# and whenever a state rule changes.
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


def _project(v: Value, onto: Value) -> Optional[Value]:
    """`v` on the parts `onto` states (the others None), or None if `v` lacks one of them."""
    if any(t is not None and x is None for t, x in zip(onto, v)):
        return None
    return tuple(x if t is not None else None for t, x in zip(onto, v))


def _draw(values: dict[Any, dict[str, Value]], item, units: list[str], rng) -> Optional[dict]:
    """The values of `units` in one other item (frame or frame pair) of the video, drawn
    uniformly among those stating every part `item` states for them; projected onto those
    parts. None when no other item qualifies."""
    pool = [o for o in values if o != item and all(
        u in values[o] and _project(values[o][u], values[item][u]) is not None for u in units)]
    if not pool:
        return None
    other = values[pool[int(rng.integers(len(pool)))]]
    return {u: _project(other[u], values[item][u]) for u in units}


def _partner_values(values: dict[Any, dict[str, Value]], rng) -> dict[Any, dict[str, Value]]:
    """item -> unit -> the wrong value drawn for it (one draw per unit, `_draw`); left out when
    the draw equals the truth (not redrawn: a redraw would favour rare truths)."""
    out: dict[Any, dict[str, Value]] = {}
    for item in values:
        out[item] = {}
        for unit, v in values[item].items():
            alt = _draw(values, item, [unit], rng)
            if alt is not None and alt[unit] != v:
                out[item][unit] = alt[unit]
    return out


def _grid_options(units: list[str], truth: dict[str, Value], alt: dict[str, Value]
                  ) -> list[dict[str, Value]]:
    """The truth first, then the 3 other cells of the 2x2 grid over two units."""
    u, w = units
    cells = [(truth[u], truth[w]), (alt[u], truth[w]), (truth[u], alt[w]), (alt[u], alt[w])]
    return [{u: a, w: b} for a, b in cells]


def _pick_units(available: list[str], rng) -> Optional[list[str]]:
    if len(available) < 2:
        return None
    picks = sorted(int(i) for i in rng.choice(len(available), 2, replace=False))
    return [available[i] for i in picks]


def _ask(row: dict, task: str, ctx: RunContext, cands: list[Candidate], n: int, rng,
         render, positions, question) -> list[dict]:
    samples = []
    for _, key, c in pick_diverse(cands, n, rng):
        voice = _voice(row, task, key, ctx.seed)
        order = [int(i) for i in rng.permutation(len(c["options"]))]
        options = [c["options"][i] for i in order]
        # lengths matched across the options (captions.matched_texts): no "pick the shortest"
        texts = cap.matched_texts([lambda v, o=o, c=c: render(o, c, v) for o in options], voice)
        if len(set(texts)) < len(texts):   # cannot happen with distinct values; never ask it
            continue
        index = order.index(0)
        facts = [c["facts"](o) for o in options]
        struct: dict[str, Any] = {"index": index, "slot": "+".join(c["units"]),
                                  "edit": c.get("edit", "grid"),
                                  "facts": facts[index], "choice_facts": facts}
        pos = positions(c)
        tid, template = templates.pick(task, "ask", sample_id(row, task, key, ctx))
        samples.append(make_sample(
            row, task, ctx, key=key, positions=pos, question=question(pos, template), choices=texts,
            answer=texts[index], answer_struct=struct, answer_source="geometry", template_id=tid))
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


def description_match(row: dict, cfg: MatchTaskConfig, ctx: RunContext,
                      min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h = int(row["width"]), int(row["height"])
    rng = rng_for(row, "description_match", ctx.seed)
    rules = caption_rules(cfg)
    negative_rules = pc.Rules(angle_margin=rules.angle_margin,
                              position_margin=max(rules.position_margin, NEGATIVE_POSITION_MARGIN))
    facts = {pos: f for pos, f in _frame_facts(row, subject, min_score, rules).items()
             if len(f) >= cfg.min_facts}
    values = {pos: {u: v for u, parts in DESC_UNITS.items()
                    if (v := _value(f.states.get, parts)) is not None}
              for pos, f in facts.items()}
    # One draw per (frame, unit) from the unit's prior (DESC_PRIORS); the unit can be asked in
    # this frame when the draw differs from the truth and every part state it changes is False
    # with margin here. Not redrawn: a redraw would favour rare truths (see DESC_PRIORS).
    cands: list[Candidate] = []
    for pos in facts:
        false = cap.definitely_false(subject.keypoints[pos], w, h, min_score, negative_rules)
        alt = {}
        for u, v in values[pos].items():
            x = _prior_draw(u, v, rng)
            if x is not None and x != v and _definitely_false_edit({u: x}, values[pos], false):
                alt[u] = x
        units = _pick_units([u for u in DESC_UNITS if u in alt], rng)
        if units is None:
            continue
        f = facts[pos]
        relations = tuple(r for r in f.relations if r not in {DESC_DROP.get(u) for u in units})
        options = _grid_options(units, values[pos], alt)

        def to_facts(o: dict[str, Value], f: cap.PoseFacts = f, rel: tuple = relations):
            return cap.facts_of(_desc_states(f, o), rel)
        cands.append((pos, f"{pos}:{'+'.join(units)}",
                      {"units": units, "options": options, "pos": pos, "pose": f,
                       "relations": relations, "facts": to_facts}))

    def render(o: dict[str, Value], c: dict, voice: cap.Voice) -> str:
        return cap.describe_pose(_desc_states(c["pose"], o), c["relations"], voice)

    def question(pos: list[int], template: str) -> str:
        who, named = subject_phrase(row, subject, pos, "0_1000")
        return (f"{template.format(who=who)}{box_note(named)}{SIDE_NOTE}"
                " Answer with the option's text.")
    return _ask(row, "description_match", ctx, cands, cfg.samples_per_video, rng, render,
                lambda c: [c["pos"]], question)


# ---- change_match ------------------------------------------------------------------------------

def _change_option(f: cap.ChangeFacts, option: dict[str, Value], drop: set[str]) -> cap.ChangeFacts:
    dirs, most = dict(f.directions), f.most_moved
    for unit, v in option.items():
        if unit == "most_moved":
            most = v[0]
            continue
        for part, d in zip(CHANGE_UNITS[unit], v):
            if d is not None:
                dirs[part] = d
    return cap.ChangeFacts(dirs, most, {p: c for p, c in f.changes.items() if p not in drop})


def change_match(row: dict, cfg: MatchTaskConfig, ctx: RunContext, min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h, kps = int(row["width"]), int(row["height"]), subject.keypoints
    rng = rng_for(row, "change_match", ctx.seed)
    rules = caption_rules(cfg)
    facts: dict[tuple[int, int], cap.ChangeFacts] = {}
    moving: dict[tuple[int, int], set[str]] = {}
    for a, b in _pairs(row, subject, rng):
        moved = pc.pose_motion(kps[a], kps[b], w, h, min_score)
        if moved is None or moved < cfg.min_pose_motion:
            continue
        f = cap.change_facts(kps[a], kps[b], w, h, min_score, rules)
        if len(f) >= cfg.min_facts:
            facts[(a, b)] = f
            moving[(a, b)] = set(pc.joint_motion(kps[a], kps[b], w, h, min_score, rules))
    values = {}
    for pair, f in facts.items():
        get = {"most_moved": f.most_moved, **f.directions}.get
        values[pair] = {u: v for u, parts in CHANGE_UNITS.items()
                        if (v := _value(get, parts)) is not None}
    partners = _partner_values(values, rng)
    cands: list[Candidate] = []
    for pair, f in facts.items():
        # A direction differing from a definite one is definitely false; another part than the
        # most moved one moved less by the margin (posecodes.most_moved), if it was measured.
        ok = [u for u, alt in partners[pair].items() if u != "most_moved" or alt[0] in moving[pair]]
        units = _pick_units(ok, rng)
        if units is None:
            continue
        drop = {p for u in units for p in CHANGE_DROP.get(u, ())}
        options = _grid_options(units, values[pair], partners[pair])
        a, b = pair

        def to_facts(o: dict[str, Value], f: cap.ChangeFacts = f, drop: set = drop):
            return _change_option(f, o, drop).as_list()
        cands.append((a * 1000 + b, f"{a},{b}:{'+'.join(units)}",
                      {"units": units, "options": options, "pair": pair, "change": f,
                       "drop": drop, "facts": to_facts}))

    def render(o: dict[str, Value], c: dict, voice: cap.Voice) -> str:
        return cap.describe_change(_change_option(c["change"], o, c["drop"]), voice)

    def question(pos: list[int], template: str) -> str:
        who, named = subject_phrase(row, subject, pos, "0_1000")
        return (f"{TWO_FRAMES} {template.format(who=who)}{box_note(named)}{SIDE_NOTE}"
                f"{UP_DOWN_NOTE} Answer with the option's text.")
    return _ask(row, "change_match", ctx, cands, cfg.samples_per_video, rng, render,
                lambda c: list(c["pair"]), question)


# The caption margins of the config's defaults (tasks.pose_description.angle_margin, ...).
DRAFT_RULES = pc.Rules(angle_margin=15.0, position_margin=0.15)


def frame_caption(keypoints, width: int, height: int, min_score: float, seed: str,
                  rules: pc.Rules = DRAFT_RULES) -> Optional[tuple[str, list[dict]]]:
    """(caption, facts) of one frame, or None without facts: the MLLM rewrite's draft."""
    f = cap.pose_facts(keypoints, width, height, min_score, rules)
    if not len(f):
        return None
    return cap.describe_pose(f.states, f.relations, cap.Voice(seed)), f.as_list()
