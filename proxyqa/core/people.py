"""The people a pose model found, and the chosen subject: one typed codec for the
`persons_json` / `subject_json` columns, so every reader sees the same values.

Coordinates are fractions of the original frame; keypoints are COCO-17 [x, y, score].
Written with 4 decimals (1e-4 of the frame); read back through float32, the precision
the row's `keypoints` column has, so a geometry checker re-deriving an answer from a row
reads exactly the numbers the answer was decided on.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

NUM_DECIMALS = 4

Keypoints = list[list[float]]          # 17 x [x, y, score]
Box = list[float]                      # [x1, y1, x2, y2]


def _round(values: Sequence[float]) -> list[float]:
    return [round(float(v), NUM_DECIMALS) for v in values]


def round_keypoints(kps: Any) -> Keypoints:
    return [_round(joint) for joint in np.asarray(kps)]


def as_float32(kps: Optional[Sequence[Sequence[float]]]) -> Optional[Keypoints]:
    """Keypoints at the precision rows store them (float32), as plain floats."""
    return None if kps is None else np.asarray(kps, np.float32).astype(float).tolist()


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


@dataclass
class Person:
    """One detected person in one frame."""

    box: Box
    score: float
    keypoints: np.ndarray                  # (17, 3) float32
    track_id: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        return {"box": _round(self.box), "score": round(float(self.score), NUM_DECIMALS),
                "keypoints": round_keypoints(self.keypoints), "track_id": self.track_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Person:
        return cls(box=list(data["box"]), score=float(data["score"]),
                   keypoints=np.asarray(data["keypoints"], np.float32),
                   track_id=data.get("track_id"))


def encode_people(people: Sequence[Sequence[Person]]) -> str:
    """One list of people per sampled frame -> the `persons_json` column."""
    return json.dumps([[p.to_json() for p in frame] for frame in people])


def decode_people(text: Optional[str]) -> list[list[Person]]:
    return [[Person.from_json(p) for p in frame] for frame in json.loads(text or "[]")]


def people_counts(row: dict) -> Optional[list[int]]:
    """People found per sampled frame, or None when the row has no pose output."""
    text = row.get("persons_json")
    return None if not text else [len(frame) for frame in json.loads(text)]


@dataclass
class Subject:
    """The person the questions are about: one track over the sampled frames."""

    track_id: int
    rule: str
    boxes: list[Optional[Box]]                 # per sampled frame (None: not seen there)
    keypoints: list[Optional[Keypoints]]       # per sampled frame
    present: float                             # share of sampled frames with the subject
    # Per sampled frame: why the subject's skeleton there is unfit for geometry questions
    # (stages/pose_checks.py), None when it passed every check. Empty: no checks ran.
    flags: list[Optional[str]] = field(default_factory=list)
    # Per sampled frame: people visible (skeletons plus detector finds no skeleton explains).
    people: list[int] = field(default_factory=list)

    @classmethod
    def from_people(cls, track_id: int, rule: str, mine: Sequence[Optional[Person]],
                    flags: Optional[Sequence[Optional[str]]] = None,
                    people: Optional[Sequence[int]] = None) -> Subject:
        return cls(track_id=int(track_id), rule=rule,
                   boxes=[None if p is None else _round(p.box) for p in mine],
                   keypoints=[None if p is None else round_keypoints(p.keypoints) for p in mine],
                   present=round(sum(p is not None for p in mine) / len(mine), NUM_DECIMALS),
                   flags=list(flags or []), people=[int(n) for n in people or []])

    def to_json(self) -> str:
        data = {"track_id": self.track_id, "rule": self.rule, "boxes": self.boxes,
                "keypoints": self.keypoints, "present": self.present}
        if self.flags:
            data["flags"] = self.flags
        if self.people:
            data["people"] = self.people
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Subject:
        data = json.loads(text)
        return cls(track_id=data["track_id"], rule=data.get("rule", ""),
                   boxes=[None if b is None else list(b) for b in data.get("boxes") or []],
                   keypoints=[as_float32(k) for k in data.get("keypoints") or []],
                   present=data.get("present", 0.0), flags=list(data.get("flags") or []),
                   people=[int(n) for n in data.get("people") or []])

    def frames(self) -> list[int]:
        """Sampled-frame positions where the subject has both keypoints and a box."""
        return [p for p, k in enumerate(self.keypoints)
                if k is not None and p < len(self.boxes) and self.boxes[p] is not None]

    def usable_frames(self) -> list[int]:
        """`frames()` whose skeleton passed the pose checks (all of them when none ran)."""
        return [p for p in self.frames() if p >= len(self.flags) or self.flags[p] is None]

    def crowded(self) -> bool:
        """Whether more than one person is visible in any sampled frame of the video."""
        return max(self.people, default=1) > 1


def subject_of(row: dict) -> Optional[Subject]:
    """The row's subject, or None when the pose stage chose none (or saw no keypoints)."""
    text = row.get("subject_json")
    if not text:
        return None
    subject = Subject.from_json(text)
    return subject if subject.keypoints else None
