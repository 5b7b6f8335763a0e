"""Spatial proxy tasks answered by geometry: spatial_grounding and body_part_state.

Both use one frame and the subject's keypoints in it (stages/posecodes.py, docs/posecodes.md).
Left/right are the person's own; with several people the subject is named by its box.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from proxyqa.core.config import BodyPartStateConfig, SpatialGroundingConfig
from proxyqa.core.people import Subject, people_counts, subject_of  # noqa: F401 - tasks_motion
from proxyqa.core.schema import COCO17
from proxyqa.stages import posecodes as pc
from proxyqa.stages import templates
from proxyqa.stages.sampling import RunContext, make_sample, rng_for, sample_id, union_box

Candidate = tuple[int, str, dict[str, Any]]   # (frame position, diversity key, payload)


# --- helpers shared with tasks_motion ---------------------------------------------------

def people_in_frames(row: dict, positions: Sequence[int]) -> int:
    """Most people detected in any of the given frames (1 when the row has no pose output)."""
    counts = people_counts(row)
    if counts is None:
        return 1
    return max((counts[p] for p in positions if p < len(counts)), default=1)


def fmt_coords(values: Sequence[float], coord_format: str) -> str:
    if coord_format == "0_1000":
        return "[" + ", ".join(str(int(round(v * 1000))) for v in values) + "]"
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def coord_words(coord_format: str) -> str:
    if coord_format == "0_1000":
        return ("integers from 0 to 1000 across the image's width and height, "
                "from its top-left corner")
    return "fractions from 0 to 1 of the image's width and height, from its top-left corner"


def subject_phrase(row: dict, subject: Subject, positions: Sequence[int],
                   coord_format: str) -> tuple[str, bool]:
    """('the person', False), or the person named by its box in the shown frames, True.

    Named by box when more than one person is visible in a shown frame or, counting the
    people the person detector found and the pose model missed, anywhere in the video (a
    bystander seen in one frame is usually near in the others)."""
    if people_in_frames(row, positions) <= 1 and not subject.crowded():
        return "the person", False
    box = union_box([subject.boxes[p] for p in positions])
    return f"the person in the box {fmt_coords(box, coord_format)}", True


def box_note(named: bool) -> str:
    """For questions whose subject box subject_phrase wrote 0-1000 (body_part_state,
    motion_compare); spatial_grounding states its own convention for box and answer."""
    return f" Box coordinates are {coord_words('0_1000')}." if named else ""


def part_words(part: str) -> str:
    return part.replace("_", " ")


def side_note(part: str) -> str:
    for side in ("left", "right"):
        if part.startswith(side + "_"):
            return f" {side.capitalize()} means the person's own {side}, not the viewer's."
    return ""


def pick_diverse(candidates: list[Candidate], k: int, rng: np.random.Generator) -> list[Candidate]:
    """k candidates in random order, preferring unseen keys, then unseen frames."""
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    chosen: list[Candidate] = []
    keys: set[str] = set()
    frames: set[int] = set()
    for strict_key, strict_frame in ((True, True), (True, False), (False, False)):
        for cand in order:
            if len(chosen) >= k:
                return chosen
            if cand in chosen or (strict_key and cand[1] in keys) or (
                    strict_frame and cand[0] in frames):
                continue
            chosen.append(cand)
            keys.add(cand[1])
            frames.add(cand[0])
    return chosen


# --- spatial_grounding --------------------------------------------------------------------

def spatial_grounding(row: dict, cfg: SpatialGroundingConfig, ctx: RunContext,
                      min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h = int(row["width"]), int(row["height"])
    cands: list[Candidate] = []
    for pos in subject.usable_frames():   # frames that passed the pose checks
        kps = pc.Pose(subject.keypoints[pos], w, h, min_score)   # parsed once per frame
        if "point" in cfg.kinds:
            for joint in pc.GROUND_JOINTS:
                pt = pc.joint_point(kps, w, h, joint, min_score, cfg.edge_margin,
                                    cfg.min_side_separation)
                if pt is not None:
                    cands.append((pos, joint, {"part": joint, "point": pt}))
        if "box" in cfg.kinds:
            for limb in pc.LIMBS:
                box = pc.limb_box(kps, w, h, limb, min_score, cfg.edge_margin,
                                  cfg.min_side_separation)
                if box is not None:
                    cands.append((pos, limb, {"part": limb, "box": box}))
    rng = rng_for(row, "spatial_grounding", ctx.seed)
    samples = []
    for pos, part, struct in pick_diverse(cands, cfg.samples_per_video, rng):
        who, named = subject_phrase(row, subject, [pos], cfg.coord_format)
        conv = coord_words(cfg.coord_format)
        where = "the box and your answer" if named else "your answer"
        key = "point" if "point" in struct else "box"
        template_id, template = templates.pick(
            "spatial_grounding", key, sample_id(row, "spatial_grounding", f"{pos}:{part}", ctx))
        values = struct[key]
        joints = (", ".join(part_words(j).split(" ", 1)[1] for j in pc.LIMBS[part])
                  if key == "box" else "")
        ask = template.format(part=part_words(part), who=who, joints=joints)
        ask += f" Coordinates in {where} are {conv}."
        struct = {"part": part, key: [round(v, 5) for v in values]}
        joint_names = pc.LIMBS[part] if key == "box" else (part,)
        samples.append(make_sample(
            row, "spatial_grounding", ctx, key=f"{pos}:{part}", positions=[pos],
            question=ask + side_note(part), answer=fmt_coords(struct[key], cfg.coord_format),
            answer_struct=struct, answer_source="geometry", template_id=template_id,
            difficulty={"margin": side_margin(subject.keypoints[pos], w, h, joint_names,
                                              min_score, cfg.min_side_separation)},
        ))
    return samples


def _twin(joint: str) -> str | None:
    for a, b in (("left_", "right_"), ("right_", "left_")):
        if joint.startswith(a):
            return b + joint[len(a):]
    return None


def side_margin(kps, w: int, h: int, joints: Sequence[str], min_score: float,
                min_separation: float) -> float | None:
    """Difficulty of a grounding row: how far (body-size units) beyond min_side_separation
    its joints lie from their other-side twins (the smallest over the joints); None for a
    joint without a side (nose)."""
    scale = pc.body_scale(kps, w, h, min_score)
    if scale is None:
        return None
    px = pc.to_pixels(kps, w, h)
    seps = []
    for joint in joints:
        twin = _twin(joint)
        if twin is None:
            continue
        a, b = px[COCO17.index(joint), :2], px[COCO17.index(twin), :2]
        seps.append(float(np.linalg.norm(a - b)) / scale - min_separation)
    return min(seps) if seps else None


# --- body_part_state ----------------------------------------------------------------------

def state_rules(cfg: BodyPartStateConfig) -> pc.Rules:
    return pc.Rules(angle_margin=cfg.angle_margin, position_margin=cfg.position_margin)


def body_part_state(row: dict, cfg: BodyPartStateConfig, ctx: RunContext,
                    min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0:
        return []
    w, h = int(row["width"]), int(row["height"])
    rules = state_rules(cfg)
    cands: list[Candidate] = []
    for pos in subject.usable_frames():   # frames that passed the pose checks
        truths = pc.state_truths(subject.keypoints[pos], w, h, min_score, rules)
        for part, states in truths.items():
            true = [s for s, v in states.items() if v is True]
            false = [s for s, v in states.items() if v is False]
            if len(true) == 1 and len(false) + 1 >= cfg.min_choices:
                kind = part.split("_")[-1]   # arm / leg / torso: balance states across sides
                cands.append((pos, f"{kind}:{true[0]}", {"part": part, "state": true[0],
                                                         "wrong": false}))
    rng = rng_for(row, "body_part_state", ctx.seed)
    samples = []
    for pos, _, c in pick_diverse(cands, cfg.samples_per_video, rng):
        n_wrong = min(cfg.max_choices - 1, len(c["wrong"]))
        wrong = [c["wrong"][i] for i in sorted(rng.choice(len(c["wrong"]), n_wrong, replace=False))]
        choices = [c["state"], *wrong]
        choices = [choices[i] for i in rng.permutation(len(choices))]
        index = choices.index(c["state"])
        who, named = subject_phrase(row, subject, [pos], "0_1000")
        part = c["part"]
        template_id, template = templates.pick(
            "body_part_state", "state", sample_id(row, "body_part_state", f"{pos}:{part}", ctx))
        question = (template.format(part=part_words(part), who=who)
                    + f"{box_note(named)}{side_note(part)} Answer with the option's text.")
        samples.append(make_sample(
            row, "body_part_state", ctx, key=f"{pos}:{part}", positions=[pos],
            question=question, choices=choices, answer=c["state"],
            answer_struct={"part": part, "state": c["state"], "index": index},
            answer_source="geometry", template_id=template_id,
            difficulty={"margin": state_margin(subject.keypoints[pos], w, h, min_score, rules,
                                               part, c["state"], c["wrong"])},
        ))
    return samples


EXTRA_MARGINS = (5.0, 10.0, 15.0, 20.0, 30.0, 45.0)   # degrees beyond the rule's margin


def state_margin(kps, w: int, h: int, min_score: float, rules: pc.Rules, part: str,
                 state: str, wrong: Sequence[str]) -> float:
    """Difficulty of a body_part_state row: the largest extra margin (degrees added to the
    angle margin; position margins grow alike, 10 degrees ~ 0.1 body-size units) under which
    the same state is still the only true one and the same options definitely false: 0 =
    just past the rule, 45 = far from every threshold."""
    best = 0.0
    for extra in EXTRA_MARGINS:
        stricter = pc.Rules(angle_margin=rules.angle_margin + extra,
                            position_margin=rules.position_margin + extra / 100.0)
        truths = pc.state_truths(kps, w, h, min_score, stricter)[part]
        if truths.get(state) is not True or any(truths.get(s) is not False for s in wrong):
            break
        best = extra
    return best
