"""motion_compare (two frames, answered by posecodes) and temporal_order's pose-motion guard."""
from __future__ import annotations

from typing import Optional

import numpy as np

from proxyqa.core.config import MotionCompareConfig
from proxyqa.stages import pose_checks as chk
from proxyqa.stages import posecodes as pc
from proxyqa.stages import templates
from proxyqa.stages.sampling import RunContext, make_sample, rng_for, sample_id
from proxyqa.stages.tasks_spatial import Subject, box_note, part_words, side_note, subject_of, subject_phrase

MAX_PAIRS = 64   # frame pairs examined per video at most

AXES = {"up_down": ("vertical", ["up", "down"]), "left_right": ("horizontal", ["left", "right"])}


def row_pose_motion(min_score: float):
    """The temporal guard: (row, pos_a, pos_b) -> subject pose change (torso lengths) or None.

    Mirror-invariant (`pose_checks.pose_change`: a left/right swap is not motion) and None
    unless the subject passed the pose checks in both frames, save those that only doubt
    which side is which (`pose_checks.sides_only`): they do not touch a left/right-blind
    measure, and they flag a side-on walker, the clearest one-way motion, in most frames."""
    cache: dict[int, tuple[Optional[Subject], set[int]]] = {}

    def motion(row: dict, pos_a: int, pos_b: int) -> Optional[float]:
        if id(row) not in cache:
            subject = subject_of(row)
            cache.clear()
            cache[id(row)] = (subject, set(_motion_frames(subject)) if subject else set())
        subject, usable = cache[id(row)]
        if subject is None or pos_a not in usable or pos_b not in usable:
            return None
        ka, kb = subject.keypoints[pos_a], subject.keypoints[pos_b]
        return chk.pose_change(np.asarray(ka, float), np.asarray(kb, float),
                               int(row["width"]) / int(row["height"]), min_score)
    return motion


def _motion_frames(subject: Subject) -> list[int]:
    flags = subject.flags
    return [p for p in subject.frames() if p >= len(flags) or chk.sides_only(flags[p])]


def same_facing(kps_a, kps_b, aspect: float, min_score: float) -> bool:
    """Whether both skeletons clearly face the camera, or both clearly face away: a pair
    whose sides disagree would turn a mirrored skeleton into motion, and in a side view a
    viewer cannot tell the left limbs from the right."""
    oa = chk.orientation(np.asarray(kps_a, float), aspect, min_score)
    ob = chk.orientation(np.asarray(kps_b, float), aspect, min_score)
    if oa is None or ob is None:
        return False
    if abs(oa) < chk.STRONG_FACING or abs(ob) < chk.STRONG_FACING:
        # A side view: which leg or arm is the left one is not in the picture (the audit's
        # side-on lunge in baggy trousers), however far apart the model puts them.
        return False
    return (oa > 0) == (ob > 0)


def motion_rules(cfg: MotionCompareConfig) -> pc.Rules:
    return pc.Rules(direction_margin=cfg.direction_margin, most_moved_margin=cfg.most_moved_margin,
                    most_moved_ratio=cfg.most_moved_ratio)


def _intro(who: tuple[str, bool]) -> str:
    return (f"Image 1 and Image 2 are two frames of one video; Image 1 was taken first. "
            f"Look at {who[0]}.{box_note(who[1])}")


def _most_moved(motion: dict, rules: pc.Rules, cfg: MotionCompareConfig, rng,
                who: tuple[str, bool], sid_for):
    top = pc.most_moved(motion, rules)
    if top is None:
        return None
    others = [p for p in motion if p != top]
    n_other = min(cfg.max_choices - 1, len(others))
    parts = [top] + [others[i] for i in sorted(rng.choice(len(others), n_other, replace=False))]
    parts = [parts[i] for i in rng.permutation(len(parts))]
    key = f"most_moved:{top}"
    template_id, template = templates.pick("motion_compare", "most_moved", sid_for(key))
    question = (template.format(intro=_intro(who)) + " Left and right mean the person's own "
                "left and right, not the viewer's. Answer with the option's text.")
    ranked = sorted((m.amount for m in motion.values()), reverse=True)
    margin = ranked[0] - ranked[1] - rules.most_moved_margin
    return (key, question, [part_words(p) for p in parts], part_words(top),
            {"most_moved": top, "index": parts.index(top)}, template_id, margin)


def _direction(kind: str, motion: dict, rng, who: tuple[str, bool], asked: set[str], sid_for,
               rules: pc.Rules):
    attr, choices = AXES[kind]
    parts = [p for p, m in motion.items() if getattr(m, attr) is not None]
    if not parts:
        return None
    fresh = [p for p in parts if f"{kind}:{p}" not in asked]   # vary the parts asked about
    parts = fresh or parts
    part = parts[int(rng.integers(len(parts)))]
    direction = getattr(motion[part], attr)
    key = f"{kind}:{part}"
    template_id, template = templates.pick("motion_compare", kind, sid_for(key))
    question = (template.format(intro=_intro(who), part=part_words(part))
                + f"{side_note(part)} Answer with one word: {choices[0]} or {choices[1]}.")
    m = motion[part]
    rel, absolute = (m.rel_dy, m.dy) if kind == "up_down" else (m.rel_dx, m.dx)
    margin = min(abs(rel), abs(absolute)) - rules.direction_margin
    return (key, question, choices, direction,
            {"part": part, "direction": direction, "index": choices.index(direction)},
            template_id, margin)


def motion_compare(row: dict, cfg: MotionCompareConfig, ctx: RunContext,
                   min_score: float) -> list[dict]:
    subject = subject_of(row)
    if subject is None or cfg.samples_per_video == 0 or not cfg.kinds:
        return []
    w, h = int(row["width"]), int(row["height"])
    kps, ts = subject.keypoints, row["timestamps"]
    frames = subject.usable_frames()   # never across a frame the pose checks flagged
    aspect = w / h
    pairs = [(a, b) for i, a in enumerate(frames) for b in frames[i + 1:] if ts[b] > ts[a]]
    rng = rng_for(row, "motion_compare", ctx.seed)
    rules = motion_rules(cfg)
    first_kind = int(rng.integers(len(cfg.kinds)))
    samples, asked = [], set()
    poses: dict[int, pc.Pose] = {}

    def pose_at(pos: int) -> pc.Pose:   # each frame parsed once, however many pairs use it
        if pos not in poses:
            poses[pos] = pc.Pose(kps[pos], w, h, min_score)
        return poses[pos]

    for idx in rng.permutation(len(pairs))[:MAX_PAIRS]:
        if len(samples) >= cfg.samples_per_video:
            break
        a, b = pairs[idx]
        pose_a, pose_b = pose_at(a), pose_at(b)
        moved = pc.pose_motion(pose_a, pose_b, w, h, min_score)
        if moved is None or moved < cfg.min_pose_motion:
            continue
        if not same_facing(kps[a], kps[b], aspect, min_score):
            continue
        motion = pc.joint_motion(pose_a, pose_b, w, h, min_score, rules)
        who = subject_phrase(row, subject, [a, b], "0_1000")
        # Rotate the preferred question kind so a video's questions are mixed.
        start = first_kind + len(samples)
        built = None

        def sid_for(key: str, a: int = a, b: int = b) -> str:
            return sample_id(row, "motion_compare", f"{a},{b}:{key}", ctx)

        for j in range(len(cfg.kinds)):
            kind = cfg.kinds[(start + j) % len(cfg.kinds)]
            built = (_most_moved(motion, rules, cfg, rng, who, sid_for) if kind == "most_moved"
                     else _direction(kind, motion, rng, who, asked, sid_for, rules))
            if built is not None:
                break
        if built is None:
            continue
        key, question, choices, answer, struct, template_id, margin = built
        asked.add(key)
        samples.append(make_sample(
            row, "motion_compare", ctx, key=f"{a},{b}:{key}", positions=[a, b],
            question=question, choices=choices, answer=answer, answer_struct=struct,
            answer_source="geometry", template_id=template_id,
            difficulty={"time_gap_s": ts[b] - ts[a], "margin": margin, "motion": moved},
        ))
    return samples
