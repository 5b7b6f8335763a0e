"""The one place that knows Ray: the pipeline as a list of steps, and the Ray Data plan.

Read top to bottom, `steps()` is the whole pipeline. Each step names a stage class (plain
Python, no Ray), its constructor arguments and its resources from the config.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa

from pipeline.config import Config, Resources
from pipeline.schema import to_arrow

if TYPE_CHECKING:
    from pipeline.run import Run

# Stage modules are imported where used, not here: every Ray worker imports this module
# (for ArrowAdapter), and a decode worker need not load pose, MLLM and scipy (importing
# them all took ~1 s more of each worker's start-up).

log = logging.getLogger(__name__)


@dataclass
class Step:
    stage: type
    kwargs: dict[str, Any]
    resources: Resources
    drop_after: tuple[str, ...] = ()   # columns no later step needs (less data between stages)


# Columns only the stages before the writer need; dropped before the writer (less transfer).
HEAVY_COLUMNS = ("frames_jpeg", "subject_crops_jpeg", "persons_json", "subject_json")
# Subject crops feed only the MLLM: without it they are dropped right after pose.
MLLM_ONLY_COLUMNS = ("subject_crops_jpeg",)


def steps(cfg: Config, run: Run) -> list[Step]:
    from stages.decode import DecodeStage
    from stages.mllm import MLLMStage
    from stages.pose import PoseStage, check_pose_config
    from stages.sampling import RunContext
    from stages.tasks import BuildTasksStage
    from stages.write import ShardWriterStage

    ctx = RunContext(run_id=run.run_id, config_hash=run.config_hash, seed=cfg.tasks.seed)
    min_score = cfg.pose.min_keypoint_score
    pipeline = [
        Step(DecodeStage, dict(cfg=cfg.decode, limits=cfg.limits, s3=cfg.s3),
             cfg.decode.resources),
    ]
    if cfg.pose.backend != "none":
        check_pose_config(cfg.pose)  # e.g. missing weights: one clear error, not one per video
        pipeline.append(Step(PoseStage, dict(cfg=cfg.pose), cfg.pose.resources,
                             drop_after=() if cfg.mllm.enabled else MLLM_ONLY_COLUMNS))
    pipeline += [
        Step(BuildTasksStage, dict(cfg=cfg.tasks, ctx=ctx, min_keypoint_score=min_score),
             cfg.tasks.resources),
    ]
    if cfg.mllm.enabled and cfg.mllm.mode == "endpoint":
        pipeline.append(Step(MLLMStage, dict(cfg=cfg.mllm, enabled_tasks=cfg.tasks.enabled, ctx=ctx,
                                             min_keypoint_score=min_score), cfg.mllm.resources))
    if not (cfg.mllm.enabled and cfg.mllm.mode == "engine"):  # the engine passes need frames
        pipeline[-1].drop_after = HEAVY_COLUMNS
    pipeline.append(Step(ShardWriterStage, dict(run_uri=run.uri, run_id=run.run_id,
                                                config_hash=run.config_hash,
                                                rows_per_file=cfg.write.rows_per_file,
                                                compression=cfg.write.compression, s3=cfg.s3),
                         cfg.write.resources))
    return pipeline


class ArrowAdapter:
    """Runs a stage on Arrow blocks: Arrow -> column dict -> stage -> Arrow."""

    def __init__(self, stage: type, kwargs: dict[str, Any], drop: tuple[str, ...] = ()):
        self.stage = stage(**kwargs)
        self.drop = drop

    def __call__(self, table: pa.Table) -> pa.Table:
        out = self.stage(table.to_pydict())
        for name in self.drop:
            out.pop(name, None)
        return to_arrow(out)


def cpu_reservations(plan: list[Step], cluster_cpus: float) -> list[float]:
    """Each step's num_cpus, scaled down alike when one worker of every stage cannot be
    placed at once.

    Ray's CPUs are reservations: a stage whose first worker does not fit waits for the
    stages before it to finish, so the stages run one after another instead of together
    (on 2 cores, 4 stages x 1 CPU ran the writer only at the very end). Scaling keeps
    the ratios, which are what share the CPUs among the stages' workers.
    """
    wanted = [s.resources.num_cpus for s in plan]
    need = sum(cpus * (s.resources.concurrency or 1) for cpus, s in zip(wanted, plan))
    if need <= cluster_cpus or need <= 0:
        return wanted
    factor = cluster_cpus / need
    log.warning("the stages' CPU reservations (%.2f for their first workers) exceed the "
                "cluster's %.0f CPUs: scaled by %.2f so that every stage runs from the start",
                need, cluster_cpus, factor)
    return [cpus * factor for cpus in wanted]


def build_dataset(cfg: Config, run: Run, videos: list[dict]):
    import ray

    from stages.write import ShardWriterStage

    ds = ray.data.from_items(videos, override_num_blocks=max(1, len(videos)))
    plan = steps(cfg, run)
    for step, num_cpus in zip(plan, cpu_reservations(plan, _cluster_cpus())):
        if step.stage is ShardWriterStage and cfg.mllm.enabled and cfg.mllm.mode == "engine":
            ds = _engine_passes(cfg, run, ds)
        res = step.resources
        # A subclass per stage so Ray's progress bars and logs name the stage.
        adapter = type(step.stage.__name__, (ArrowAdapter,), {})
        pool = (res.concurrency, res.concurrency) if res.concurrency else (1, _cluster_cpus())
        ds = ds.map_batches(
            adapter,
            fn_constructor_kwargs=dict(stage=step.stage, kwargs=step.kwargs, drop=step.drop_after),
            batch_format="pyarrow",
            batch_size=res.batch_size,
            num_cpus=num_cpus,
            num_gpus=res.num_gpus or None,
            compute=ray.data.ActorPoolStrategy(min_size=pool[0], max_size=max(pool)),
            memory=int(res.memory_gb * (1 << 30)) if res.memory_gb else None,
            # Ray restarts a dead worker (max_restarts=-1 by default) and retries its call a
            # bounded number of times: a video that kills its worker every time cannot
            # stall the run (Ray 2.60 has no named parameter for this yet).
            max_task_retries=cfg.ray.max_task_retries,
        )
    return ds


def _engine_passes(cfg: Config, run: Run, ds):
    """ray.data.llm processors (GPU vLLM engines) between the last stage and the writer."""
    from pipeline.llm_engine import build_processors
    from stages.sampling import RunContext

    ctx = RunContext(run_id=run.run_id, config_hash=run.config_hash, seed=cfg.tasks.seed)
    for processor in build_processors(cfg.mllm, cfg.tasks.enabled, ctx, cfg.pose.min_keypoint_score):
        ds = processor(ds)
    return ds


def _cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def init_ray(cfg: Config) -> None:
    import os

    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, **kwargs)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    # Stages turn per-video errors into data; a block that still fails (its worker died on
    # every retry) is dropped, and commit reports its videos as lost instead of the run dying.
    ctx.max_errored_blocks = -1


def execute(cfg: Config, run: Run, videos: list[dict]) -> Iterator[dict]:
    """Runs the plan; yields one record per video as the writer finishes it."""
    init_ray(cfg)
    if not videos:
        return
    for batch in build_dataset(cfg, run, videos).iter_batches(batch_format="pyarrow",
                                                              batch_size=None):
        yield from batch.to_pylist()
