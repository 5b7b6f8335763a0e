"""Start-up trace points for bench/startup.py (in the `proxyqa run` process and its Ray workers).

Nothing here is imported by proxyqa itself: bench/startup.py starts `proxyqa run` through
`child()` below, and Ray's worker processes run `worker_hook()` at their start because the
bench sets Ray's setup-hook variable in the run's environment (workers inherit it from the
raylet, which inherits it from the driver). Each event is one JSON line appended to the file
named by PROXYQA_STARTUP_TRACE: {"event", "t" (UNIX time), "pid", ...}.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

TRACE_ENV = "PROXYQA_STARTUP_TRACE"


def emit(event: str, t: float | None = None, **extra: Any) -> None:
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "t": time.time() if t is None else t,
                       "pid": os.getpid(), **extra}) + "\n"
    # O_APPEND writes of one short line land whole even from several processes at once.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def tree_cpu() -> float:
    """CPU seconds of this process and every live descendant (Ray's own processes and
    its workers, when called in the driver)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return round(total, 3)


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]                 # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _sample_cpu(period_s: float = 0.25) -> None:
    import threading

    def loop():
        while True:
            emit("cpu_sample", cpu=tree_cpu(), machine=machine_busy_s())
            time.sleep(period_s)
    threading.Thread(target=loop, name="startup-cpu-sampler", daemon=True).start()


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()


def worker_hook() -> None:
    """Runs in every Ray worker before it takes its first task or actor: notes when the
    process started and when it got here (Python + `import ray` + connecting), and wraps
    the stage adapter so that constructing it and its first output are noted too."""
    emit("worker_process", t=_process_start())
    emit("worker_ready", cpu=round(time.process_time(), 3))
    # Patched when the stage's actor class brings the module in (Ray Data's own actors
    # never import it, and importing it here would add its cost to them).
    if "proxyqa.pipeline.graph" in sys.modules:
        _trace_adapter(sys.modules["proxyqa.pipeline.graph"])
    else:
        sys.meta_path.insert(0, _PatchAfterImport("proxyqa.pipeline.graph", _trace_adapter))


class _PatchAfterImport:
    """A meta-path finder that lets the normal finders find `name`, then runs `patch` on the
    module once it has been executed."""

    def __init__(self, name: str, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        exec_module, patch = spec.loader.exec_module, self.patch

        def exec_and_patch(module):
            exec_module(module)
            patch(module)
        spec.loader.exec_module = exec_and_patch
        return spec


def _traced_stage(stage):
    """A stage of a Fused step, its first call and output traced under its own name, so that
    the first decoded video is seen inside a worker running every stage."""
    name, first = type(stage).__name__, [True]

    def call(batch):
        if first[0]:
            emit("first_call", stage=name)
        out = stage(batch)
        if first[0]:
            first[0] = False
            emit("first_output", stage=name, cpu=round(time.process_time(), 3))
        return out
    return call


def _trace_adapter(graph) -> None:
    adapter = graph.ArrowAdapter
    if getattr(adapter, "_startup_traced", False):
        return
    init, call = adapter.__init__, adapter.__call__

    @functools.wraps(init)
    def traced_init(self, *args, **kwargs):
        stage = kwargs.get("stage") or (args[0] if args else None)
        # Ray Data wraps the class (_SingleThreadedWrapper): name it by its stage.
        name = getattr(stage, "__name__", type(self).__name__)
        self._startup_name = name
        emit("construct_start", stage=name, cpu=round(time.process_time(), 3))
        init(self, *args, **kwargs)
        emit("construct_done", stage=name, cpu=round(time.process_time(), 3))
        inner = getattr(self.stage, "stages", None)   # a Fused step (ray.fuse_stages)
        if inner:
            self.stage.stages = [_traced_stage(s) for s in inner]

    @functools.wraps(call)
    def traced_call(self, table):
        name = getattr(self, "_startup_name", type(self).__name__)
        first = not getattr(self, "_startup_called", False)
        self._startup_called = True
        if first:
            emit("first_call", stage=name)
        for n, out in enumerate(call(self, table)):
            if first and n == 0:
                emit("first_output", stage=name, cpu=round(time.process_time(), 3))
            yield out

    adapter.__init__, adapter.__call__ = traced_init, traced_call
    adapter._startup_traced = True


def child(argv: list[str]) -> int:
    """`proxyqa run argv...` with driver-side trace points; afterwards, every actor's
    class and the time Ray marked it alive (from GCS's actor table)."""
    # psutil's process start times count from /proc/stat's boot time, a whole second: the
    # bench's clock before it started this process (PROXYQA_STARTUP_T0) is the origin, and
    # this process's psutil start time lines the workers' up with it.
    emit("process", t=float(os.environ.get("PROXYQA_STARTUP_T0") or _process_start()))
    emit("process_psutil", t=_process_start())
    emit("python_ready")
    _sample_cpu()
    import ray

    emit("ray_imported")
    from proxyqa.pipeline import cli, graph

    emit("proxyqa_imported")

    def traced(owner, name: str, before: str | None, after: str):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if before:
                emit(before)
            try:
                return fn(*args, **kwargs)
            finally:
                emit(after, cpu=tree_cpu())
        setattr(owner, name, wrapper)

    traced(ray, "init", "ray_init_start", "ray_init_done")
    traced(cli, "list_videos_table", "listing_start", "listing_done")
    traced(graph, "execute", "execute_start", "execute_done")
    traced(graph, "build_dataset", None, "dataset_built")
    traced(graph, "init_ray", None, "init_ray_done")
    try:
        rc = cli.main(argv)
    finally:
        emit("run_done")
        if ray.is_initialized():
            from ray._private.state import state

            for actor in state.actor_table(None).values():
                emit("actor_alive", t=actor["StartTime"] / 1000.0,
                     actor=actor["ActorClassName"], actor_pid=actor["Pid"])
    return rc


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
