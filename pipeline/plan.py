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

from proxyqa.core.config import Config, ConfigError, Resources
from proxyqa.stages.base import to_batch, to_rows

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
    fusable: bool = True                   # may share a worker with its neighbours (ray.fuse_stages)

    @property
    def name(self) -> str:
        return self.stage.__name__


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
        # Never fused: it waits on a server, and a pool of its own keeps requests in flight
        # while the CPU stages' workers compute.
        plan.append(Step(MLLMStage, dict(cfg=cfg.mllm, enabled_tasks=cfg.tasks.enabled, ctx=ctx,
                                         min_keypoint_score=min_score, base_urls=list(engine_urls)),
                         cfg.mllm.resources, fusable=False))
    plan[-1].drop_after = HEAVY_COLUMNS
    plan.append(Step(ShardWriterStage, dict(run_uri=run.uri, run_id=run.run_id,
                                            config_hash=run.config_hash,
                                            compression=cfg.write.compression, s3=cfg.s3),
                     cfg.write.resources))
    return plan


class Fused:
    """Several steps as one stage: a batch goes through each step in turn, in slices of that
    step's own batch size, in this process. The local executor runs the whole plan this
    way, and `ray.fuse_stages` gives each Ray worker the CPU stages (`fuse`): a video's
    frames then never leave the process that decoded them (no object-store copies, no
    Arrow round trip per stage) and one worker per CPU starts instead of one pool per stage."""

    def __init__(self, steps: Sequence[Step]):
        self.steps = list(steps)
        self.stages = [s.stage(**s.kwargs) for s in self.steps]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        for step, stage in zip(self.steps, self.stages):
            n, size = len(next(iter(batch.values()), ())), step.resources.batch_size
            if n:
                parts = [stage({k: v[i:i + size] for k, v in batch.items()}) for i in range(0, n, size)]
                batch = to_batch([row for part in parts for row in to_rows(part)])
            for name in step.drop_after:
                batch.pop(name, None)
        return batch


def unfusable(plan: Sequence[Step]) -> list[str]:
    """Steps that ask for GPUs or custom resources: those exist to put stages on different
    nodes (GPU nodes, decode nodes), which one fused worker cannot honour."""
    return [s.name for s in plan if s.resources.num_gpus or s.resources.custom]


def fused(plan: Sequence[Step], workers: int | None = None) -> Step:
    """Steps as one step: `workers` workers (the executor passes one per CPU, all started at
    once), each running every one of them."""
    if unfusable(plan) or not all(s.fusable for s in plan):
        raise ConfigError(f"cannot fuse {', '.join(s.name for s in plan)}: a step asks for GPUs "
                          "or custom resources, or waits on a server")
    memory = [s.resources.memory_gb for s in plan if s.resources.memory_gb]
    return Step(Fused, dict(steps=list(plan)), Resources(
        num_cpus=1.0, batch_size=max(s.resources.batch_size for s in plan), concurrency=workers,
        memory_gb=sum(memory) if memory else None))


def fuse(plan: Sequence[Step], workers: int | None = None) -> list[Step]:
    """The plan with each run of two or more consecutive fusable steps as one `fused` step
    (`ray.fuse_stages`): without an MLLM, the whole plan; with one, the CPU stages before it
    (the MLLM and the writer after it keep their pools)."""
    out: list[Step] = []
    run: list[Step] = []
    for step in [*plan, None]:
        if step is not None and step.fusable:
            run.append(step)
            continue
        out += [fused(run, workers)] if len(run) >= 2 else run
        run = []
        if step is not None:
            out.append(step)
    return out
