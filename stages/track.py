"""Linking people across sampled frames, and choosing the main subject.

Used when the sampled frames are too far apart for ultralytics' trackers (see PoseStage).
Association is frame to frame: each live track moves its last box and joints by its
centre's constant velocity (so two people who cross keep their ids), and detections are
assigned by the Hungarian method on a similarity of centre distance, box size and
keypoint agreement (`similarity`). A track survives `max_missed` sampled frames without a
detection, so a person missed in one frame keeps its id.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from proxyqa.core.people import box_area, box_iou  # noqa: F401 - part of this module's API


class Detected(Protocol):
    box: list[float]                 # [x1, y1, x2, y2], normalised to the frame
    keypoints: np.ndarray            # (17, 3): x, y normalised, score
    track_id: Optional[int]


def keypoint_similarity(kp_a: np.ndarray, kp_b: np.ndarray, height: float,
                        aspect: float = 1.0, min_score: float = 0.3) -> Optional[float]:
    """OKS-like agreement (0-1) of two skeletons over joints confident in both.

    Distances are in units of the body (box) height; `aspect` (frame width/height) makes
    x and y the same physical unit. None when fewer than 3 joints are confident in both.
    """
    both = (kp_a[:, 2] >= min_score) & (kp_b[:, 2] >= min_score)
    if both.sum() < 3:
        return None
    dist = np.linalg.norm((kp_a[both, :2] - kp_b[both, :2]) * [aspect, 1.0], axis=1)
    return float(np.exp(-((dist / max(height, 1e-6)) ** 2) / (2 * KEYPOINT_SIGMA ** 2)).mean())


# Similarity scales, in body heights: sampled frames can be a second apart, so a walking
# person may move about a body width between them.
MOTION_SIGMA = 0.5
KEYPOINT_SIGMA = 0.15


def similarity(pred_box: np.ndarray, pred_kps: np.ndarray, person: Detected,
               aspect: float = 1.0) -> float:
    """How likely `person` continues a track predicted at pred_box / pred_kps (0-1).

    Centre distance (Gaussian, sigma MOTION_SIGMA body heights) times the ratio of box
    heights; averaged with keypoint agreement where both skeletons have confident joints.
    """
    box = np.asarray(person.box, float)
    h_pred, h_det = pred_box[3] - pred_box[1], box[3] - box[1]
    height = max((h_pred + h_det) / 2, 1e-6)
    dist = np.linalg.norm((_center(pred_box) - _center(box)) * [aspect, 1.0]) / height
    motion = np.exp(-(dist ** 2) / (2 * MOTION_SIGMA ** 2))
    motion *= min(h_pred, h_det) / max(h_pred, h_det, 1e-6)
    kps = keypoint_similarity(pred_kps, person.keypoints, height, aspect)
    return float(motion if kps is None else (motion + kps) / 2)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    keypoints: np.ndarray
    last_pos: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def predicted(self, pos: int) -> tuple[np.ndarray, np.ndarray]:
        """Box and joints moved by the centre's velocity; the size is kept (it jitters)."""
        dx, dy = self.velocity * (pos - self.last_pos)
        kps = self.keypoints.copy()
        kps[:, 0] += dx
        kps[:, 1] += dy
        return self.box + np.array([dx, dy, dx, dy]), kps

    def update(self, box: np.ndarray, keypoints: np.ndarray, pos: int) -> None:
        self.velocity = (_center(box) - _center(self.box)) / max(1, pos - self.last_pos)
        self.box, self.keypoints, self.last_pos = box, keypoints, pos


def _center(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def associate(frames: Sequence[Sequence[Detected]], *, min_similarity: float = 0.1,
              max_missed: int = 3, aspect: float = 1.0) -> None:
    """Sets `track_id` (0, 1, ...) on every person of every frame, in place."""
    live: list[_Track] = []
    next_id = 0
    for pos, people in enumerate(frames):
        live = [t for t in live if pos - t.last_pos <= max_missed + 1]
        sim = np.zeros((len(live), len(people)))
        for i, track in enumerate(live):
            pred_box, pred_kps = track.predicted(pos)
            for j, person in enumerate(people):
                sim[i, j] = similarity(pred_box, pred_kps, person, aspect)
        matched = set()
        if sim.size:
            rows, cols = linear_sum_assignment(-sim)
            for i, j in zip(rows, cols):
                if sim[i, j] >= min_similarity:
                    people[j].track_id = live[i].track_id
                    live[i].update(np.asarray(people[j].box, float), people[j].keypoints, pos)
                    matched.add(j)
        for j, person in enumerate(people):
            if j not in matched:
                person.track_id = next_id
                live.append(_Track(next_id, np.asarray(person.box, float), person.keypoints, pos))
                next_id += 1


@dataclass
class TrackSummary:
    track_id: int
    frames: int                      # sampled frames the track is present in
    mean_area: float                 # mean box area while present (fraction of the frame)
    mean_center_dist: float          # mean distance of the box centre from the frame centre


def summarize_tracks(frames: Sequence[Sequence[Detected]]) -> dict[int, TrackSummary]:
    boxes: dict[int, list] = {}
    for people in frames:
        for person in people:
            if person.track_id is not None:
                boxes.setdefault(person.track_id, []).append(person.box)
    out = {}
    for tid, bs in boxes.items():
        arr = np.asarray(bs, float)
        centers = (arr[:, :2] + arr[:, 2:]) / 2
        out[tid] = TrackSummary(
            track_id=tid, frames=len(bs),
            mean_area=float(np.mean([box_area(b) for b in bs])),
            mean_center_dist=float(np.linalg.norm(centers - 0.5, axis=1).mean()),
        )
    return out


SUBJECT_RULES = ("most_frames", "largest_area", "center")


def choose_subject(frames: Sequence[Sequence[Detected]], rule: str) -> Optional[int]:
    """The main subject's track id (None if nobody was seen).

    - most_frames: present in the most sampled frames.
    - largest_area: largest mean box area while present.
    - center: mean box centre nearest the frame centre.
    For largest_area and center only tracks present in at least half as many frames as
    the most-present track compete, so a passer-by seen once cannot win. Ties go to the
    larger mean box area, then to the lower track id.
    """
    if rule not in SUBJECT_RULES:
        raise ValueError(f"unknown subject rule '{rule}'; known: {SUBJECT_RULES}")
    tracks = list(summarize_tracks(frames).values())
    if not tracks:
        return None
    most = max(t.frames for t in tracks)
    if rule == "most_frames":
        key = lambda t: (-t.frames, -t.mean_area, t.track_id)  # noqa: E731
    else:
        tracks = [t for t in tracks if 2 * t.frames >= most]
        if rule == "largest_area":
            key = lambda t: (-t.mean_area, t.track_id)  # noqa: E731
        else:
            key = lambda t: (round(t.mean_center_dist, 6), -t.mean_area, t.track_id)  # noqa: E731
    return min(tracks, key=key).track_id
