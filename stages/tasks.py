"""Task-building stage: runs the enabled builders on each decoded video."""
from __future__ import annotations

from typing import Any

from proxyqa.core.config import TasksConfig
from proxyqa.core.schema import MLLM_TASKS  # their rows come from the MLLM stage, not a builder here
from proxyqa.stages import tasks_captions, tasks_motion, tasks_spatial, tasks_temporal
from proxyqa.stages.base import RowStage
from proxyqa.stages.sampling import RunContext


class BuildTasksStage(RowStage):
    """Adds `samples`: the QA rows of every enabled geometry/construction task."""

    name = "tasks"

    def __init__(self, cfg: TasksConfig, ctx: RunContext, min_keypoint_score: float = 0.5):
        self.cfg, self.ctx = cfg, ctx
        self.min_score = min_keypoint_score
        known = set(BUILDERS) | set(MLLM_TASKS)
        unknown = [t for t in cfg.enabled if t not in known]
        if unknown:
            raise ValueError(f"unknown task(s) in tasks.enabled: {unknown}; known: {sorted(known)}")

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        samples = list(row.get("samples") or [])
        if not row.get("frames_jpeg"):
            row["samples"] = samples
            return row
        thumbs = tasks_temporal.grey_thumbs(row["frames_jpeg"])
        for task in self.cfg.enabled:
            builder = BUILDERS.get(task)
            if builder is not None:
                samples.extend(builder(self, row, thumbs))
        row["samples"] = samples
        return row


def _pose_guard(stage: BuildTasksStage, row: dict, require_subject: bool):
    """(skip, guard): with pose output, the temporal tasks judge determinability from the
    subject's pose (tasks_temporal.one_way / _directional); a video whose pose stage found
    no subject gets none when `require_subject` (nothing shows which way time runs)."""
    if row.get("subject_json"):
        return False, tasks_motion.row_pose_motion(stage.min_score)
    pose_ran = row.get("persons_json") is not None
    return pose_ran and require_subject, None


def _temporal_order(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    skip, guard = _pose_guard(stage, row, stage.cfg.temporal_order.require_subject)
    if skip:
        return []
    subject = tasks_spatial.subject_of(row) if guard is not None else None
    return tasks_temporal.temporal_order(row, stage.cfg.temporal_order, stage.ctx, thumbs,
                                         pose_motion=guard,
                                         subject_boxes=subject.boxes if subject else None)


def _temporal_direction(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    skip, guard = _pose_guard(stage, row, stage.cfg.temporal_direction.require_subject)
    if skip:
        return []
    return tasks_temporal.temporal_direction(row, stage.cfg.temporal_direction, stage.ctx,
                                             thumbs, pose_motion=guard)


def _spatial_grounding(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    return tasks_spatial.spatial_grounding(row, stage.cfg.spatial_grounding, stage.ctx,
                                           stage.min_score)


def _body_part_state(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    return tasks_spatial.body_part_state(row, stage.cfg.body_part_state, stage.ctx,
                                         stage.min_score)


def _motion_compare(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    return tasks_motion.motion_compare(row, stage.cfg.motion_compare, stage.ctx, stage.min_score)


def _pose_description(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    return tasks_captions.pose_description(row, stage.cfg.pose_description, stage.ctx,
                                           stage.min_score)


def _pose_difference(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    return tasks_captions.pose_difference(row, stage.cfg.pose_difference, stage.ctx,
                                          stage.min_score)


def _description_match(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    return tasks_captions.description_match(row, stage.cfg.description_match, stage.ctx,
                                            stage.min_score)


def _change_match(stage: BuildTasksStage, row: dict, thumbs) -> list[dict]:
    return tasks_captions.change_match(row, stage.cfg.change_match, stage.ctx, stage.min_score)


BUILDERS = {
    "temporal_order": _temporal_order,
    "temporal_direction": _temporal_direction,
    "spatial_grounding": _spatial_grounding,
    "body_part_state": _body_part_state,
    "motion_compare": _motion_compare,
    # Captions from geometry (docs/captions.md); pose_description/pose_difference write rows
    # here only with generator: rules, otherwise the MLLM stage writes them.
    "pose_description": _pose_description,
    "pose_difference": _pose_difference,
    "description_match": _description_match,
    "change_match": _change_match,
}
