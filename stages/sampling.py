"""Shared pieces of every task builder: deterministic randomness and the sample row."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from proxyqa import __version__
from proxyqa.core.people import Subject
from proxyqa.core.schema import (
    COORD_CONVENTION,
    DIFFICULTY_FIELDS,
    SCHEMA_VERSION,
    TASK_FAMILY,
    empty_sample,
)


@dataclass(frozen=True)
class RunContext:
    """Run-level facts stamped on every row."""

    run_id: str
    config_hash: str
    seed: int = 0


def rng_for(row: dict, task: str, seed: int) -> np.random.Generator:
    """Same video content + task + seed -> same choices, on any machine, in any order."""
    key = f"{row.get('content_id') or row['video_id']}|{task}|{seed}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def sample_id(row: dict, task: str, key: str, ctx: RunContext) -> str:
    blob = f"{row.get('content_id') or row['video_id']}|{task}|{key}|{ctx.config_hash}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def union_box(boxes: Sequence[list[float] | None]) -> list[float] | None:
    """The box holding the subject in every shown frame (null if absent from any)."""
    if not boxes or any(b is None for b in boxes):
        return None
    arr = np.asarray(boxes, dtype=float)
    return [float(arr[:, 0].min()), float(arr[:, 1].min()),
            float(arr[:, 2].max()), float(arr[:, 3].max())]


def make_sample(
    row: dict,
    task: str,
    ctx: RunContext,
    *,
    key: str,
    positions: Sequence[int],
    question: str,
    answer: str,
    answer_struct: dict[str, Any],
    answer_source: str,
    choices: list[str] | None = None,
    images: list[bytes] | None = None,
    subject_box: list[float] | None = None,
    keypoints: list | None = None,
    template_id: str | None = None,
    difficulty: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """One QA row. `positions` index the video row's sampled frames, in shown order.
    `split` and `content_group` are set at commit (pipeline/dataset.py): they depend on
    the other videos of the dataset."""
    sample = empty_sample()
    subject = Subject.from_json(row["subject_json"]) if row.get("subject_json") else None
    if keypoints is None and subject is not None:
        kps = [subject.keypoints[p] for p in positions]
        keypoints = kps if all(k is not None for k in kps) else None
    if subject_box is None and subject is not None:
        subject_box = union_box([subject.boxes[p] for p in positions])
    sample.update(
        sample_id=sample_id(row, task, key, ctx),
        video_id=row["video_id"],
        video_uri=row["video_uri"],
        task=task,
        family=TASK_FAMILY[task],
        question=question,
        choices=choices,
        answer=answer,
        answer_struct=json.dumps(answer_struct, sort_keys=True),
        images=images if images is not None else [row["frames_jpeg"][p] for p in positions],
        frame_indices=[int(row["frame_indices"][p]) for p in positions],
        timestamps=[float(row["timestamps"][p]) for p in positions],
        frame_size=[int(row["width"]), int(row["height"])],
        coord_convention=COORD_CONVENTION,
        subject_box=subject_box,
        keypoints=keypoints,
        answer_source=answer_source,
        verified=None if answer_source == "mllm" else True,
        schema_version=SCHEMA_VERSION,
        pipeline_version=__version__,
        config_hash=ctx.config_hash,
        run_id=ctx.run_id,
        template_id=template_id,
        difficulty=_difficulty(difficulty),
    )
    return sample


def _difficulty(values: dict[str, float | None] | None) -> dict[str, float | None] | None:
    if not values:
        return None
    unknown = set(values) - set(DIFFICULTY_FIELDS)
    if unknown:
        raise ValueError(f"unknown difficulty fields {sorted(unknown)}")
    return {k: (None if values.get(k) is None else round(float(values[k]), 4))
            for k in DIFFICULTY_FIELDS}
