"""The whole pipeline as a list of steps. No Ray here: executors (pipeline/graph.py for Ray
Data, pipeline/local.py for one process) run the same plan.

Read top to bottom, `steps()` is the pipeline. Each step names a stage class (plain Python),
its constructor arguments and its resources from the config. The MLLM step is the same in
both MLLM modes; in engine mode it is given the URLs of the vLLM replicas the executor
started for the run (`engine_urls`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxyqa.core.config import Config, Resources

if TYPE_CHECKING:
    from proxyqa.pipeline.run import Run

# Columns only the stages before the writer need; dropped before the writer (less transfer).
HEAVY_COLUMNS = ("frames_jpeg", "subject_crops_jpeg", "persons_json", "subject_json")
# Subject crops feed only the MLLM: without it they are dropped right after pose.
MLLM_ONLY_COLUMNS = ("subject_crops_jpeg",)


@dataclass
class Step:
    stage: type                            # a stage class: stage(**kwargs)(batch) -> batch
    kwargs: dict[str, Any]
    resources: Resources
    drop_after: tuple[str, ...] = ()       # columns no later step needs (less data between stages)


# Stage modules are imported where used, not at module level: every Ray worker imports this
# module, and a decode worker need not load pose, MLLM and scipy (~1 s more per worker).
def steps(cfg: Config, run: Run, engine_urls: Sequence[str] = ()) -> list[Step]:
    from proxyqa.models.pose_base import check_pose_config
    from proxyqa.stages.decode import DecodeStage
    from proxyqa.stages.mllm import MLLMStage
    from proxyqa.stages.pose import PoseStage
    from proxyqa.stages.sampling import RunContext
    from proxyqa.stages.tasks import BuildTasksStage
    from proxyqa.stages.write import ShardWriterStage

    ctx = RunContext(run_id=run.run_id, config_hash=run.config_hash, seed=cfg.tasks.seed)
    min_score = cfg.pose.min_keypoint_score
    plan = [Step(DecodeStage, dict(cfg=cfg.decode, limits=cfg.limits, s3=cfg.s3), cfg.decode.resources)]
    if cfg.pose.backend != "none":
        check_pose_config(cfg.pose)  # e.g. missing weights: one clear error, not one per video
        plan.append(Step(PoseStage, dict(cfg=cfg.pose), cfg.pose.resources,
                         drop_after=() if cfg.mllm.enabled else MLLM_ONLY_COLUMNS))
    plan.append(Step(BuildTasksStage, dict(cfg=cfg.tasks, ctx=ctx, min_keypoint_score=min_score),
                     cfg.tasks.resources))
    if cfg.mllm.enabled:
        plan.append(Step(MLLMStage, dict(cfg=cfg.mllm, enabled_tasks=cfg.tasks.enabled, ctx=ctx,
                                         min_keypoint_score=min_score, base_urls=list(engine_urls)),
                         cfg.mllm.resources))
    plan[-1].drop_after = HEAVY_COLUMNS
    plan.append(Step(ShardWriterStage, dict(run_uri=run.uri, run_id=run.run_id,
                                            config_hash=run.config_hash,
                                            compression=cfg.write.compression, s3=cfg.s3),
                     cfg.write.resources))
    return plan

