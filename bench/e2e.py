"""End to end through Ray Data vs a sequential single-process loop doing the same work.

    python bench/e2e.py [--videos 72] [--quick] [--set KEY=VALUE ...]

Both run the stages of proxyqa.pipeline.graph.steps() (configs/local.yaml, all geometry tasks) on
the same copies of the real clips, into fresh run folders:
- Ray Data: proxyqa.pipeline.graph.build_dataset, as `proxyqa run` does (local Ray, all CPUs);
  Ray is started before the clock (a cluster exists before a job is submitted).
- sequential: one process, no Ray; each stage object built once, every video through
  every stage in turn, the writer fed batches of its configured size.
Throughput is taken where the writer's records come out. Steady state = videos after the
first writer batch / time from the first to the last batch: start-up (actor creation,
model loading) and pipeline fill are left out, the drain at the end is kept. The whole
wall time is reported too. Each pass runs on a quiet machine and is repeated when other
processes took over 0.15 cores meanwhile (bench/common.py quiet_pass).

Writes bench/results/e2e.json.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import common  # noqa: F401  (first: environment, torch before decord)
from common import Clock


def op_stats(ds, origin: float | None = None) -> list[dict[str, Any]]:
    """Per-operator totals from Ray Data's own stats (empty if the API moved); times in
    seconds from `origin` (time.perf_counter() at the pass's start: Ray Data times its tasks
    on the same monotonic clock, shared by the node's processes; default: the first
    operator's start)."""
    try:
        summary = ds._get_stats_summary()
    except Exception:  # noqa: BLE001 - a private API: informational only
        return []
    ops, todo = [], [summary]
    while todo:   # a summary holds its own operators; upstream ones hang off `parents`
        node = todo.pop()
        ops.extend(node.operators_stats)
        todo.extend(node.parents or [])
    ops.sort(key=lambda op: op.earliest_start_time or 0)
    t0 = origin if origin is not None else min(
        (op.earliest_start_time for op in ops if op.earliest_start_time), default=0)
    out = []
    for op in ops:
        out.append({
            "operator": op.operator_name,
            "start_s": round((op.earliest_start_time or t0) - t0, 2),
            "end_s": round((op.latest_end_time or t0) - t0, 2),
            "tasks_wall_s": round(_total(op.wall_time), 2),
            "tasks_cpu_s": round(_total(op.cpu_time), 2),
            "rows": int(_total(op.output_num_rows)),
        })
    return out


def _total(stat: Any) -> float:
    if stat is None:
        return 0.0
    if isinstance(stat, dict):
        return float(stat.get("sum") or 0.0)
    return float(getattr(stat, "sum", 0.0) or 0.0)


def ray_pass(cfg, run, videos: list[dict]) -> dict[str, Any]:
    """Runs the Ray Data plan; per-output timestamps, memory and operator stats."""
    from proxyqa.pipeline.graph import build_dataset

    events: list[tuple[float, int]] = []
    records: list[dict] = []
    with common.MemorySampler() as mem:
        start = time.perf_counter()
        ds = build_dataset(cfg, run, videos)
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            events.append((time.perf_counter() - start, block.num_rows))
            records.extend(block.select(["video_id", "status", "reason"]).to_pylist())
        wall = time.perf_counter() - start
    # From the pass's start: the input operator (FromBlocks) runs no task, so the first
    # operator's own start would be the stage's and the start-up would read 0.
    ops = op_stats(ds, start)
    # Start-up = until the first stage starts on its first video (actors created, models loaded).
    # (the input operator: FromItems, FromArrow or FromBlocks as the listing changed form)
    startup = next((o["start_s"] for o in ops if not o["operator"].startswith("From")), 0.0)
    return {"wall_s": round(wall, 3), "startup_s": startup,
            "steady_per_s": round(len(records) / (wall - startup), 4),
            "first_output_s": round(events[0][0], 3) if events else None,
            "after_first_output_per_s": common.steady_rate(events)["steady_per_s"],
            "outputs": len(events), "videos_out": len(records),
            "not_ok": sum(r["status"] != "ok" for r in records),
            "memory": mem.report(), "operators": ops}


def sequential_pass(cfg, run, videos: list[dict]) -> dict[str, Any]:
    """The same plan in one process, no Ray, no Arrow: the local executor, one video at a
    time through the stages, the writer every `write.resources.batch_size` videos."""
    from proxyqa.pipeline.local import LocalExecutor
    from proxyqa.pipeline.plan import steps
    from proxyqa.stages.base import to_batch, to_rows

    plan = steps(cfg, run)
    with Clock() as startup:
        stages = LocalExecutor(plan[:-1])
        writer = LocalExecutor(plan[-1:])
        writer_step = plan[-1]
    events: list[tuple[float, int]] = []
    pending: list[dict] = []
    not_ok = 0

    def flush() -> None:
        nonlocal not_ok
        out = to_rows(writer.run_batch(to_batch(pending)))
        not_ok += sum(r["status"] != "ok" for r in out)
        events.append((time.perf_counter() - start, len(out)))
        pending.clear()

    with common.MemorySampler() as mem:
        start = time.perf_counter()
        for video in videos:
            pending.extend(to_rows(stages.run_batch(to_batch([dict(video)]))))
            if len(pending) >= writer_step.resources.batch_size:
                flush()
        if pending:
            flush()
        wall = time.perf_counter() - start
    done = sum(n for _, n in events)
    return {"wall_s": round(wall, 3), "startup_s": round(startup.wall, 3),
            "steady_per_s": round(done / wall, 4),
            "first_output_s": round(events[0][0], 3) if events else None,
            "after_first_output_per_s": common.steady_rate(events)["steady_per_s"],
            "outputs": len(events), "videos_out": done, "not_ok": not_ok,
            "memory": {k: mem.report()[k] for k in ("driver_peak_mib", "cpu_s", "foreign_cores")}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=None, help="videos (default 72, quick 36)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both passes (e.g. tuning experiments)")
    ap.add_argument("--skip-sequential", action="store_true")
    args = ap.parse_args(argv)
    n = args.videos or (36 if args.quick else 72)

    from proxyqa.pipeline.fingerprint import config_hash
    from proxyqa.pipeline.graph import init_ray
    from proxyqa.pipeline.run import open_run

    folder, videos = common.bench_input(n)
    cfg = common.bench_config(args.set)
    result: dict[str, Any] = {"videos": n, "input": str(folder), "overrides": args.set,
                              "resources": {k: getattr(cfg, k).resources.model_dump()
                                            for k in ("decode", "pose", "tasks", "write")}}
    with tempfile.TemporaryDirectory(prefix="proxyqa-bench-") as tmp:
        cfg.output = tmp
        with Clock() as ray_start:
            init_ray(cfg)
        result["ray_init_s"] = round(ray_start.wall, 2)
        result["load_before_ray"] = common.machine()["load_avg"]
        attempt = iter(range(1, 100))
        result["ray"] = common.quiet_pass(
            lambda: ray_pass(cfg, open_run(cfg, config_hash(cfg), f"ray-{next(attempt)}"), videos),
            lambda r: r["memory"]["foreign_cores"], "ray data")
        if not args.skip_sequential:
            result["load_before_sequential"] = common.machine()["load_avg"]
            attempt = iter(range(1, 100))
            result["sequential"] = common.quiet_pass(
                lambda: sequential_pass(cfg, open_run(cfg, config_hash(cfg), f"seq-{next(attempt)}"),
                                        videos),
                lambda r: r["memory"]["foreign_cores"], "sequential loop")
    result["machine"] = common.machine()
    ray_rate = result["ray"]["steady_per_s"]
    seq = result.get("sequential")
    if seq and ray_rate and seq["steady_per_s"]:
        result["ray_vs_sequential"] = round(ray_rate / seq["steady_per_s"], 3)
    stages = common.read_json("stages")
    if stages and ray_rate:
        result["slowest_stage"] = stages["slowest_stage"]
        result["ray_vs_slowest_stage"] = round(ray_rate / stages["slowest_videos_per_s"], 3)

    r = result["ray"]
    rows = [{"pass": f"ray data, {n} videos",
             **{c: r[c] for c in ("wall_s", "startup_s", "first_output_s", "steady_per_s", "not_ok")},
             "foreign_cores": r["memory"]["foreign_cores"], "driver_mib": r["memory"]["driver_peak_mib"],
             "worker_max_mib": r["memory"]["worker_peak_mib"]}]
    if seq:
        rows.append({"pass": f"sequential loop, {n} videos",
                     **{c: seq[c] for c in ("wall_s", "startup_s", "first_output_s", "steady_per_s",
                                            "not_ok")},
                     "foreign_cores": seq["memory"]["foreign_cores"],
                     "driver_mib": seq["memory"]["driver_peak_mib"]})
    print(f"\nEnd to end: {n} videos (load {result['machine']['load_avg']})")
    print(common.table(rows, ["pass", "wall_s", "startup_s", "first_output_s", "steady_per_s",
                              "not_ok", "foreign_cores", "driver_mib", "worker_max_mib"], digits=3))
    if result["ray"]["operators"]:
        print(common.table(result["ray"]["operators"],
                           ["operator", "start_s", "end_s", "tasks_wall_s", "tasks_cpu_s", "rows"]))
    cpu = r["memory"]["cpu_s"]
    print(f"CPU seconds in the Ray run ({r['wall_s']:.1f} s wall, "
          f"{sum(cpu.values()) / r['wall_s']:.2f} cores busy on average): "
          + ", ".join(f"{k.replace('ray::MapWorker', '')} {v}" for k, v in cpu.items()))
    if r["after_first_output_per_s"] is None:
        print("warning: the writer's records came out all at the end: the stages did not overlap")
    for key in ("ray_vs_sequential", "ray_vs_slowest_stage"):
        if key in result:
            print(f"{key}: {result[key]:.2f}")
    path = common.write_json("e2e", result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
