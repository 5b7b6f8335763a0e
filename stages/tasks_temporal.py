"""Temporal proxy tasks whose answers come from construction: frame order and direction."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import cv2
import numpy as np

from proxyqa.core.config import TemporalDirectionConfig, TemporalOrderConfig
from proxyqa.stages import templates
from proxyqa.stages.sampling import RunContext, make_sample, rng_for, sample_id

# Optional pose guard: (row, pos_a, pos_b) -> subject motion in body-size units, or None.
PoseMotion = Callable[[dict, int, int], Optional[float]]

MAX_CANDIDATES = 4000   # frame sets looked at per video: all of them at 16 frames, k = 4
MIN_REGION_PX = 4       # a subject region smaller than this (thumbnail pixels) is not compared alone
REGION_PAD = 0.1        # of the region's size on every side: the limbs' reach beyond the joints
Box = tuple[float, float, float, float]


def grey_thumbs(frames_jpeg: list[bytes], side: int = 64) -> np.ndarray:
    """Small grey frames for telling frames apart; decoding at 1/4 scale keeps it cheap."""
    thumbs = []
    for data in frames_jpeg:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_4)
        thumbs.append(cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA))
    return np.stack(thumbs).astype(np.float32)


def frame_diff(thumbs: np.ndarray, a: int, b: int, region: Optional[Box] = None) -> float:
    """Mean absolute grey-level difference (0-255) between two sampled frames, over
    `region` (normalised x0, y0, x1, y1) when given, else the whole frame."""
    da, db = thumbs[a], thumbs[b]
    if region is not None:
        side_y, side_x = da.shape
        x0, x1 = int(region[0] * side_x), int(np.ceil(region[2] * side_x))
        y0, y1 = int(region[1] * side_y), int(np.ceil(region[3] * side_y))
        if x1 - x0 >= MIN_REGION_PX and y1 - y0 >= MIN_REGION_PX:
            da, db = da[y0:y1, x0:x1], db[y0:y1, x0:x1]
    return float(np.abs(da - db).mean())


def subject_region(boxes: Optional[Sequence[Optional[Box]]], a: int, b: int,
                   pad: float = REGION_PAD) -> Optional[Box]:
    """The union of the subject's boxes in frames a and b, padded: where a viewer looks for
    the change. A walker in a wide static shot changes a few percent of the frame, under
    any whole-frame threshold that still rejects a still camera's noise; None when a box
    is missing (then the whole frame is compared)."""
    if boxes is None or max(a, b) >= len(boxes) or boxes[a] is None or boxes[b] is None:
        return None
    ba, bb = boxes[a], boxes[b]
    x0, y0 = min(ba[0], bb[0]), min(ba[1], bb[1])
    x1, y1 = max(ba[2], bb[2]), max(ba[3], bb[3])
    px, py = pad * (x1 - x0), pad * (y1 - y0)
    return (max(0.0, x0 - px), max(0.0, y0 - py), min(1.0, x1 + px), min(1.0, y1 + py))


def _distinct_in_time(row: dict, chosen: list[int]) -> bool:
    ts = [row["timestamps"][p] for p in chosen]
    return all(t1 > t0 for t0, t1 in zip(ts, ts[1:]))


def _spaced(row: dict, chosen: list[int], min_gap_s: float, min_span_s: float) -> bool:
    """Frames far enough apart in time for a person to see the change (measured: spans
    under ~1 s and gaps of a few video frames were undeterminable in the audit)."""
    ts = [row["timestamps"][p] for p in chosen]
    return ts[-1] - ts[0] >= min_span_s and min(b - a for a, b in zip(ts, ts[1:])) >= min_gap_s


def one_way(row: dict, chosen: list[int], pose_motion: PoseMotion, min_step: float) -> bool:
    """Whether the subject's pose changes by >= min_step at every step AND moves steadily
    away from the first frame (each frame >= min_step farther from it than the one before):
    a pose that returns (tai chi, balance, periodic motion) looks the same both ways."""
    steps = [pose_motion(row, a, b) for a, b in zip(chosen, chosen[1:])]
    if any(m is None or m < min_step for m in steps):
        return False
    away = [pose_motion(row, chosen[0], c) for c in chosen[1:]]
    if any(m is None for m in away):
        return False
    return all(b - a >= min_step for a, b in zip(away, away[1:]))


def _candidates(n: int, k: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """Sorted k-frame sets in a seeded random order: every set when there are at most
    MAX_CANDIDATES (the few that pass the determinability rules are found wherever they
    are), else MAX_CANDIDATES distinct random draws."""
    if math.comb(n, k) <= MAX_CANDIDATES:
        sets = list(itertools.combinations(range(n), k))
        for i in rng.permutation(len(sets)):
            yield list(sets[i])
        return
    seen: set[tuple[int, ...]] = set()
    for _ in range(MAX_CANDIDATES):
        chosen = tuple(sorted(rng.choice(n, size=k, replace=False).tolist()))
        if chosen not in seen:
            seen.add(chosen)
            yield list(chosen)


def _cached(pose_motion: PoseMotion) -> PoseMotion:
    """The same row's frame pairs come up in many candidate sets: compute each once."""
    memo: dict[tuple[int, int, int], Optional[float]] = {}

    def motion(row: dict, a: int, b: int) -> Optional[float]:
        key = (id(row), a, b)
        if key not in memo:
            memo[key] = pose_motion(row, a, b)
        return memo[key]
    return motion


def temporal_order(row: dict, cfg: TemporalOrderConfig, ctx: RunContext,
                   thumbs: np.ndarray, pose_motion: PoseMotion | None = None,
                   subject_boxes: Optional[Sequence[Optional[Box]]] = None) -> list[dict]:
    """Up to `samples_per_video` k-frame order questions. With pose output, `pose_motion`
    decides determinability (`one_way`) and the frame difference is measured over the
    subject's boxes (`subject_region`)."""
    n, k = len(row["frames_jpeg"]), cfg.frames
    if n < k or cfg.samples_per_video == 0:
        return []
    rng = rng_for(row, "temporal_order", ctx.seed)
    if pose_motion is not None:
        pose_motion = _cached(pose_motion)
    samples = []
    for chosen in _candidates(n, k, rng):
        if len(samples) >= cfg.samples_per_video:
            break
        if not _distinct_in_time(row, chosen):
            continue
        pairs = list(zip(chosen, chosen[1:]))
        diff = min(frame_diff(thumbs, a, b, subject_region(subject_boxes, a, b)) for a, b in pairs)
        if diff < cfg.min_frame_diff:
            continue
        if not _spaced(row, chosen, cfg.min_gap_s, cfg.min_span_s):
            continue
        if pose_motion is not None and not one_way(row, chosen, pose_motion,
                                                   cfg.min_pose_motion):
            continue
        # difficulty: the smallest pose change between consecutive shown frames
        motions = [pose_motion(row, a, b) for a, b in pairs] if pose_motion is not None else []
        perm = rng.permutation(k)
        while (perm == np.arange(k)).all():
            perm = rng.permutation(k)
        shown = [chosen[p] for p in perm]
        # order[j] = the shown position of the j-th frame in time.
        order = sorted(range(k), key=lambda pos: row["timestamps"][shown[pos]])
        key = ",".join(map(str, shown))
        template_id, template = templates.pick(
            "temporal_order", "order", sample_id(row, "temporal_order", key, ctx))
        ts = row["timestamps"]
        samples.append(make_sample(
            row, "temporal_order", ctx, key=key, positions=shown,
            question=template.format(k=k, first=order[0] + 1),
            answer=", ".join(str(o + 1) for o in order),
            answer_struct={"order": order}, answer_source="construction",
            template_id=template_id,
            difficulty={"time_gap_s": min(ts[b] - ts[a] for a, b in pairs), "frame_diff": diff,
                        "motion": min(motions) if motions else None},
        ))
    return samples


def _directional(row: dict, window: list[int], pose_motion: PoseMotion,
                 cfg: TemporalDirectionConfig) -> bool:
    """A one-way change: the pose path from the first to the last frame is long
    (>= min_net_motion torso lengths end to end) and not returning (end-to-end change >=
    min_straightness x the summed step changes). Near-periodic or symmetric motion fails."""
    steps = [pose_motion(row, a, b) for a, b in zip(window, window[1:])]
    net = pose_motion(row, window[0], window[-1])
    if net is None or any(m is None for m in steps):
        return False
    return net >= cfg.min_net_motion and net >= cfg.min_straightness * sum(steps)


def temporal_direction(row: dict, cfg: TemporalDirectionConfig, ctx: RunContext,
                       thumbs: np.ndarray, pose_motion: PoseMotion | None = None) -> list[dict]:
    n, k = len(row["frames_jpeg"]), cfg.frames
    if n < k or cfg.samples_per_video == 0:
        return []
    rng = rng_for(row, "temporal_direction", ctx.seed)
    starts = rng.permutation(n - k + 1).tolist()
    first_reversed = bool(rng.integers(2))
    samples = []
    for start in starts:
        if len(samples) >= cfg.samples_per_video:
            break
        window = list(range(start, start + k))
        if not _distinct_in_time(row, window):
            continue
        diff = frame_diff(thumbs, window[0], window[-1])
        if diff < cfg.min_frame_diff:
            continue
        ts = row["timestamps"]
        if ts[window[-1]] - ts[window[0]] < cfg.min_span_s:
            continue
        if pose_motion is not None and not _directional(row, window, pose_motion, cfg):
            continue
        # Alternate from a random first choice, so each video's clips are balanced.
        is_reversed = first_reversed ^ bool(len(samples) % 2)
        shown = window[::-1] if is_reversed else window
        choices = ["forward", "reverse"]
        answer = choices[int(is_reversed)]
        key = f"{start}:{int(is_reversed)}"
        template_id, template = templates.pick(
            "temporal_direction", "clip", sample_id(row, "temporal_direction", key, ctx))
        ts = row["timestamps"]
        samples.append(make_sample(
            row, "temporal_direction", ctx, key=key, positions=shown,
            question=template.format(k=k), choices=choices, answer=answer,
            answer_struct={"reversed": is_reversed, "index": int(is_reversed)},
            answer_source="construction", template_id=template_id,
            difficulty={"time_gap_s": ts[window[-1]] - ts[window[0]], "frame_diff": diff},
        ))
    return samples
