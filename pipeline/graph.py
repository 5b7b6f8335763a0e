"""The Ray executor: the plan of pipeline/plan.py as a Ray Data dataset. The only module
that imports Ray (the local executor, pipeline/local.py, runs the same plan without it).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from proxyqa.core.config import Config
from proxyqa.core.errors import one_line
from proxyqa.core.schema import to_arrow
from proxyqa.pipeline.memory import release_freed_memory
from proxyqa.pipeline.plan import HEAVY_COLUMNS, Step, fuse, steps, unfusable  # noqa: F401 - bench uses them from here

if TYPE_CHECKING:
    from proxyqa.pipeline.run import Run

log = logging.getLogger(__name__)


class ArrowAdapter:
    """Runs a stage on Arrow blocks: Arrow -> column dict -> stage -> Arrow.

    Ray hands it whole blocks (many videos); it calls the stage on slices of the stage's
    own batch size and yields each result, so Ray's per-call overhead is paid per block, not
    per video (a million immediately-skipped videos cost one pass-through per slice), while
    results still stream out slice by slice (a block of decoded videos is never held whole).
    """

    def __init__(self, stage: type, kwargs: dict[str, Any], drop: tuple[str, ...] = (),
                 batch_size: int | None = None):
        self.stage = stage(**kwargs)
        self.drop = drop
        self.batch_size = batch_size

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        size = self.batch_size or max(1, table.num_rows)
        for start in range(0, table.num_rows, size):
            out = self.stage(table.slice(start, size).to_pydict())
            for name in self.drop:
                out.pop(name, None)
            yield to_arrow(out)


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


def videos_per_block(cfg: Config, n: int, cluster_cpus: int) -> int:
    """Videos per input block: at most `ray.videos_per_block`, and small enough that every
    CPU gets several blocks (a block is the unit a worker takes; too few and workers idle)."""
    return max(1, min(cfg.ray.videos_per_block, math.ceil(n / (16 * cluster_cpus))))


def input_blocks(videos: pa.Table | list[dict], per_block: int) -> list[pa.Table]:
    """The listing as Arrow tables of `per_block` videos: one driver-side object per block,
    not one per video (a million videos: ~4,000 blocks of a few hundred KB)."""
    if isinstance(videos, pa.Table):
        # Zero-copy slices of the listing: Ray's Arrow serializer truncates a slice's buffers
        # to its own rows, so the driver holds no second copy of a million videos.
        return [videos.slice(i, per_block) for i in range(0, videos.num_rows, per_block)]
    columns = list(videos[0]) if videos else []
    return [to_arrow({c: [v.get(c) for v in videos[i:i + per_block]] for c in columns})
            for i in range(0, len(videos), per_block)]


def build_dataset(cfg: Config, run: Run, videos: pa.Table | list[dict], per_block: int | None = None,
                  engine_urls: Sequence[str] = ()):
    import ray

    cpus = _cluster_cpus()
    per_block = per_block or videos_per_block(cfg, len(videos), cpus)
    ds = _from_blocks(input_blocks(videos, per_block))
    release_freed_memory()   # the serialization buffers of every input block
    plan = worker_plan(cfg, run, engine_urls)
    for step, num_cpus in zip(plan, cpu_reservations(plan, cpus)):
        res = step.resources
        # A subclass per stage so Ray's progress bars and logs name the stage.
        adapter = type(step.stage.__name__, (ArrowAdapter,), {})
        pool = (res.concurrency, res.concurrency) if res.concurrency else (1, _cluster_cpus())
        ds = ds.map_batches(
            adapter,
            fn_constructor_kwargs=dict(stage=step.stage, kwargs=step.kwargs, drop=step.drop_after,
                                       batch_size=res.batch_size),
            batch_format="pyarrow",
            batch_size=None,      # whole blocks; the adapter slices them (see ArrowAdapter)
            num_cpus=num_cpus,
            num_gpus=res.num_gpus or None,
            compute=ray.data.ActorPoolStrategy(min_size=pool[0], max_size=max(pool)),
            memory=int(res.memory_gb * (1 << 30)) if res.memory_gb else None,
            # Custom node resources (decode_node, gpu_node, accelerator_type:...): the stage's
            # workers land only on nodes that declare them.
            resources=dict(res.custom) or None,
            # Ray restarts a dead worker (max_restarts=-1 by default) and retries its call a
            # bounded number of times: a video that kills its worker every time cannot
            # stall the run (Ray 2.60 has no named parameter for this yet).
            max_task_retries=cfg.ray.max_task_retries,
        )
    return ds


def worker_plan(cfg: Config, run: Run, engine_urls: Sequence[str] = ()) -> list[Step]:
    """The plan as Ray runs it: a pool per step, or (`ray.fuse_stages`) fused steps whose
    workers, one per CPU, each run every stage of the step (`plan.fuse`: all of them without
    an MLLM). A stage placed by GPUs or custom resources keeps the pools (placement wins;
    one warning)."""
    plan = steps(cfg, run, engine_urls)
    if not cfg.ray.fuse_stages:
        return plan
    if unfusable(plan):
        log.warning("ray.fuse_stages: %s ask(s) for GPUs or custom resources, which place stages "
                    "on their own nodes: running a worker pool per stage", ", ".join(unfusable(plan)))
        return plan
    return fuse(plan, workers=_cluster_cpus())


def _from_blocks(blocks: list[pa.Table]):
    """The input blocks as a dataset, their metadata computed here.

    `ray.data.from_arrow` computes each block's metadata in a remote task: at start-up the
    driver waits for a worker to run them (~0.9 s on 2 cores), and the workers Ray prestarted
    for the run, having run tasks, are then not reused for the stages' actors (two more
    worker processes to start). The listing's blocks are small Arrow tables, so computing
    their metadata in the driver costs nothing (docs/performance.md, start-up)."""
    import ray

    from_blocks = getattr(ray.data, "from_blocks", None)   # a DeveloperAPI: kept if it moves
    return from_blocks(blocks) if from_blocks is not None else ray.data.from_arrow(blocks)


def _cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of each live node."""
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def stage_needs(cfg: Config, run: Run) -> dict[str, dict[str, float]]:
    """What one worker of each stage needs from a single node (CPUs scaled as in the plan)."""
    plan = worker_plan(cfg, run)
    needs = {}
    for step, num_cpus in zip(plan, cpu_reservations(plan, _cluster_cpus())):
        res = step.resources
        need = {"CPU": num_cpus, "GPU": res.num_gpus, **res.custom}
        if res.memory_gb:
            need["memory"] = res.memory_gb * (1 << 30)
        needs[step.stage.__name__] = {k: v for k, v in need.items() if v}
    return needs


def unplaceable(needs: dict[str, dict[str, float]], nodes: list[dict[str, float]]) -> list[str]:
    """Stages none of whose workers fits on any live node."""
    return [name for name, need in needs.items()
            if not any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes)]


class Unschedulable(RuntimeError):
    """A stage has had no node to run on for longer than ray.unschedulable_timeout_s."""


def is_multinode() -> bool:
    return len(alive_nodes()) > 1


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
    # every retry) is dropped, and its videos are run again (ray.lost_video_passes) or
    # reported as lost instead of the run dying.
    ctx.max_errored_blocks = -1
    # Decoded videos are ~0.5 MB each: smaller output blocks hand them to the next stage's
    # workers a few dozen at a time instead of one 128 MiB block (one worker) at a time.
    ctx.target_max_block_size = 16 << 20


class Stalled(Unschedulable):
    """A pass that lost a node stopped making progress (StallWatch)."""


class StallWatch:
    """A pass that has lost a node and then produced nothing for `timeout_s` is stalled.

    Ray rebuilds a lost block by re-running the call that made it, but not when that call
    ran on an actor pool that has already finished and shut down: the next stage then waits
    for the block forever. Without a lost node a quiet stretch is just slow work (a long
    video), so only a pass that lost a node is ever called stalled."""

    def __init__(self, nodes: int, timeout_s: float):
        self.nodes, self.timeout_s = nodes, timeout_s
        self.lost = False
        self.outputs, self.since = -1, 0.0

    def stalled(self, outputs: int, nodes: int, now: float) -> bool:
        self.lost = self.lost or nodes < self.nodes
        self.nodes = max(self.nodes, nodes)
        if outputs != self.outputs:
            self.outputs, self.since = outputs, now
        return self.lost and now - self.since >= self.timeout_s


def execute(cfg: Config, run: Run, videos: pa.Table | list[dict], poll_s: float = 1.0,
            per_block: int | None = None, engine_urls: Sequence[str] = ()) -> None:
    """Runs the plan over `videos` (each batch's records land in the run's `_videos/`).

    `per_block`: videos per input block (default: videos_per_block). A call whose worker dies
    on every retry loses its whole block; the lost-video pass runs one video per block, so a
    video that kills its worker loses only itself there. `engine_urls`: engine mode's
    replicas (`served_engine`).

    The dataset is consumed on a daemon thread while this thread watches the cluster: if
    some stage has had no live node able to host one of its workers for
    `ray.unschedulable_timeout_s` (its nodes were lost), or the pass lost a node and then
    made no progress for `ray.stall_timeout_s` (StallWatch), Unschedulable is raised instead
    of waiting forever; what was written stays for the resumed run.
    """
    init_ray(cfg)
    if len(videos) == 0:
        return
    ds = build_dataset(cfg, run, videos, per_block, engine_urls)
    needs = stage_needs(cfg, run)
    failure: list[BaseException] = []
    outputs = [0]

    def consume(ds) -> None:
        try:
            for _ in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                outputs[0] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=consume, args=(ds,), name="proxyqa-consume", daemon=True)
    worker.start()
    stuck_since: float | None = None
    watch = StallWatch(len(alive_nodes()), cfg.ray.stall_timeout_s)
    while worker.is_alive():
        worker.join(poll_s)
        nodes = alive_nodes()
        if watch.stalled(outputs[0], len(nodes), time.monotonic()):
            raise Stalled(
                f"no progress for {cfg.ray.stall_timeout_s:.0f}s after a node was lost (outputs "
                "held on it could not be rebuilt)")
        missing = unplaceable(needs, nodes)
        if not missing:
            stuck_since = None
            continue
        stuck_since = stuck_since or time.monotonic()
        if time.monotonic() - stuck_since >= cfg.ray.unschedulable_timeout_s:
            raise Unschedulable(
                f"no live Ray node can run stage(s) {', '.join(missing)} (needs "
                + "; ".join(f"{m}: {needs[m]}" for m in missing)
                + f") for {cfg.ray.unschedulable_timeout_s:.0f}s")
    del ds
    release_freed_memory()   # every stage's blocks passed through the driver's heap
    if failure:
        raise failure[0]


@contextmanager
def served_engine(cfg: Config) -> Iterator[list[str]]:
    """Engine mode: `mllm.engine.concurrency` vLLM server replicas as Ray actors (each with
    tensor_parallel_size GPUs), started together and stopped when the block ends; yields
    their URLs. Every MLLM task of every MLLM worker calls these, so a model is loaded once
    per replica for the whole run (not once per task). Yields [] in any other mode.

    A replica that fails to start ends the run before any video (one line, resumable); one
    that dies mid-run makes the MLLM calls fail like an unreachable endpoint (recorded per
    video, retried by the next incremental run)."""
    if not (cfg.mllm.enabled and cfg.mllm.mode == "engine"):
        yield []
        return
    import ray

    from proxyqa.models.vllm_server import ModelServer

    eng = cfg.mllm.engine
    init_ray(cfg)

    class Replica(ModelServer):
        def __init__(self, cfg, host):
            super().__init__(cfg, ray.util.get_node_ip_address() if host == "auto" else host)

    # No CPU reservation: a replica's work is on its GPUs, and a CPU it held would be one the
    # pipeline's CPU stages could never use on small nodes (on 2 CPUs, two replicas
    # reserving one each left the decode stage nothing to start on: the run waited forever).
    actor = ray.remote(Replica).options(
        num_cpus=0, num_gpus=eng.tensor_parallel_size if eng.num_gpus is None else eng.num_gpus,
        resources=dict(eng.resources) or None, max_restarts=0)
    replicas = [actor.remote(eng, eng.host) for _ in range(eng.concurrency)]
    try:
        try:
            urls = ray.get([r.start.remote() for r in replicas],
                           timeout=eng.startup_timeout_s + 60)
        except Exception as exc:  # noqa: BLE001 - one line for the user (the server's last words)
            cause = getattr(exc, "cause", None) or exc     # a RayTaskError wraps the actor's
            raise EngineStartError(f"engine mode: the vLLM replicas did not start: "
                                   f"{one_line(cause, 600)}") from None
        log.info("engine mode: %d vLLM replica(s) of %s at %s", len(urls), eng.model_source, urls)
        yield urls
    finally:
        for r in replicas:
            try:
                ray.get(r.stop.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - a dead replica: its server got SIGTERM with it
                pass
            ray.kill(r)


class EngineStartError(RuntimeError):
    """Engine mode's vLLM replicas could not be started."""


def ray_mapper(parallelism: int, small: Callable[[Callable[..., Any], list], list],
               min_items: int = 64) -> Callable[[Callable[..., Any], list], list]:
    """fn over items as Ray tasks (commit's compaction on a cluster: the workers read and
    write the storage, not the driver), at most `parallelism` in flight. Fewer than
    `min_items` items go to `small` (the driver's threads): starting task workers on a
    busy cluster costs more than a few dozen files."""
    import ray

    def run(fn: Callable[..., Any], items: list) -> list:
        if len(items) < min_items:
            return small(fn, items)

        def call(item):  # ray.remote takes functions, not functools.partial objects
            return fn(item)

        task = ray.remote(num_cpus=0.25, max_retries=3)(call)
        results: list = [None] * len(items)
        pending: dict = {}
        for i, item in enumerate(items):
            if len(pending) >= parallelism:
                done, _ = ray.wait(list(pending), num_returns=1)
                results[pending.pop(done[0])] = ray.get(done[0])
            pending[task.remote(item)] = i
        for ref, i in pending.items():
            results[i] = ray.get(ref)
        return results
    return run
