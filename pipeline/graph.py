"""The Ray executor: the plan of pipeline/plan.py as a Ray Data dataset. The only module
that imports Ray (the local executor, pipeline/local.py, runs the same plan without it).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from proxyqa.core.config import Config
from proxyqa.core.schema import to_arrow
from proxyqa.pipeline.plan import HEAVY_COLUMNS, Step, steps  # noqa: F401 - bench uses them from here

if TYPE_CHECKING:
    from proxyqa.pipeline.run import Run

log = logging.getLogger(__name__)


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

    ds = ray.data.from_items(videos, override_num_blocks=max(1, len(videos)))
    plan = steps(cfg, run)
    engine = None
    for step, num_cpus in zip(plan, cpu_reservations(plan, _cluster_cpus())):
        if step.kind == "llm":
            engine = engine or _engine_config(cfg)
            ds = _engine_pass(step, engine)(ds)
            continue
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


def _engine_config(cfg: Config):
    from proxyqa.pipeline.engine import engine_processor_config

    return engine_processor_config(cfg.mllm)


def _engine_pass(step: Step, engine_cfg):
    """A ray.data.llm processor: the step's pre, the vLLM engine, the reply record."""
    from ray.data.llm import build_processor

    from proxyqa.pipeline.engine import EnginePost

    return build_processor(engine_cfg, preprocess=step.stage(**step.kwargs),
                           postprocess=EnginePost(step.kwargs["task"]))


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
