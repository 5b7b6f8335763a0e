"""Scaling: cost per video at 1, 10, 100 and 1000 videos, phase by phase.

    python bench/scaling.py [--sizes 1,10,100,1000] [--quick] [--set KEY=VALUE ...]

Input: N distinct files cycling over the real clips (bench/common.py make_videos: copy i
is clip i % 9 plus a few bytes of container filler, so every copy has its own video_id,
content_id and sample_ids, like distinct real videos; symlinks to identical bytes would
share sample_ids and the commit would drop all but one copy's rows, distorting writing
and commit). The clip mix is the same at every N (one extra copy of the first clip).

Per-video work is lighter than the default run so 1000 videos fit a 2-core machine:
pose off (pose.backend=none), the temporal tasks, decode.num_frames=8, and so two decode
workers (decode.resources.concurrency=2: decode is then the heavy stage). The pipeline
path is otherwise the real one; each N runs in a fresh process with a fresh Ray instance
(started before the clock) and a fresh output folder:
- listing: proxyqa.pipeline.sources.list_videos on the folder;
- plan: open_run + plan_run(incremental=True) (no earlier run: an empty ledger);
- execute: the Ray Data plan (decode -> tasks -> writer), as `proxyqa run`;
- commit: finalize shards, report, ledger snapshot, manifest (proxyqa.pipeline.run.commit),
  with the finalize and ledger-snapshot parts timed apart;
- nightly rerun: `--incremental` again with nothing changed (listing, ledger read and
  carry, commit; no Ray): the ledger's cost when every video is carried over.
Cost per video = wall of listing + plan + execute + commit / N; marginal cost per video
= (wall(N) - wall(1)) / (N - 1) leaves out the fixed per-run start-up. Sizes up to 10 are
run 3 times and the median kept (they last seconds and vary by about one).

Writes bench/results/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # noqa: F401  (first: environment, torch before decord)
from common import Clock

SMALL = 10          # sizes up to this are run 3 times (median)
LIGHT = ["pose.backend=none", "tasks.enabled=[temporal_order, temporal_direction]",
         "decode.num_frames=8",
         "decode.resources.concurrency=2"]   # without pose, decode is the heavy stage: 2 cores


class PhaseTimer:
    """Accumulates the wall time of named functions while patched in (instrumentation only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, module: Any, attr: str, label: str) -> None:
        inner = getattr(module, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        setattr(module, attr, timed)


def one_size(n: int, overrides: list[str]) -> dict[str, Any]:
    """One scaling point, in this process (called by the parent in a fresh subprocess)."""
    from e2e import ray_pass

    import proxyqa.pipeline.run as run_mod
    from proxyqa.pipeline.fingerprint import config_hash
    from proxyqa.pipeline.graph import init_ray
    from proxyqa.pipeline.run import commit, open_run, plan_run
    from proxyqa.pipeline.sources import list_videos

    folder = common.make_videos(n)
    common.warm_page_cache(folder)
    cfg = common.bench_config([*LIGHT, *overrides])
    timer = PhaseTimer()
    timer.wrap(run_mod, "_compact_own_shards", "commit_finalize_s")
    timer.wrap(run_mod, "write_snapshot", "commit_ledger_s")
    out: dict[str, Any] = {"videos": n}
    with tempfile.TemporaryDirectory(prefix="proxyqa-scale-") as tmp:
        cfg.input, cfg.output = str(folder), tmp
        with Clock() as c:
            init_ray(cfg)
        out["ray_init_s"] = round(c.wall, 2)
        out["load_before"] = common.machine()["load_avg"]
        started = time.time()
        chash = config_hash(cfg)
        with Clock() as listing:
            videos = list_videos(cfg)
        with Clock() as planning:
            run = open_run(cfg, chash)
            plan = plan_run(run, videos, incremental=True)
        out["ray"] = ray_pass(cfg, run, plan.todo)
        with Clock() as committing:
            manifest = commit(run, cfg, videos, plan, started, cfg.input)
        out.update(
            listing_s=round(listing.wall, 5), plan_s=round(planning.wall, 5),
            execute_s=out["ray"]["wall_s"], commit_s=round(committing.wall, 5),
            **{k: round(v, 5) for k, v in timer.seconds.items()},
            rows=manifest["counts"]["rows"], shards=len(manifest["shards"]),
            videos_ok=manifest["counts"]["videos_by_status"].get("ok", 0),
        )
        out["wall_s"] = round(out["listing_s"] + out["plan_s"] + out["execute_s"] + out["commit_s"], 3)
        writer = [o for o in out["ray"]["operators"] if "ShardWriter" in o["operator"]]
        out["writer_tasks_s"] = writer[0]["tasks_wall_s"] if writer else None

        # The nightly rerun: nothing changed, everything is carried over by the ledger.
        timer.seconds.clear()
        with Clock() as rerun:
            started = time.time()
            videos = list_videos(cfg)
            run2 = open_run(cfg, chash)
            plan2 = plan_run(run2, videos, incremental=True)
            manifest2 = commit(run2, cfg, videos, plan2, started, cfg.input)
        out["rerun"] = {"wall_s": round(rerun.wall, 5), "to_process": len(plan2.todo),
                        "carried": manifest2["counts"]["videos_carried"],
                        "ledger_write_s": round(timer.seconds.get("commit_ledger_s", 0.0), 5)}
    out["load_after"] = common.machine()["load_avg"]
    return out


def run_sizes(sizes: list[int], overrides: list[str]) -> list[dict]:
    results = []
    for n in sizes:
        common.make_videos(n)  # before the clock, in the parent: shared by the subprocess
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(n),
               *[f"--set={o}" for o in overrides]]
        print(f"scaling: {n} videos ...", flush=True)

        def once(cmd=cmd, n=n) -> dict:
            with Clock() as c:
                proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
                raise SystemExit(f"scaling: the {n}-video run failed (exit {proc.returncode})")
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SCALING_RESULT ")][-1]
            res = json.loads(line.split(" ", 1)[1])
            res["process_wall_s"] = round(c.wall, 1)
            return res

        # Small runs last seconds and vary by a second: the median of 3.
        runs = [common.quiet_pass(once, lambda r: r["ray"]["memory"]["foreign_cores"],
                                  f"scaling, {n} videos") for _ in range(3 if n <= SMALL else 1)]
        runs.sort(key=lambda r: r["wall_s"])
        res = runs[len(runs) // 2]
        res["repeats_wall_s"] = [r["wall_s"] for r in runs]
        results.append(res)
    return results


def summarize(results: list[dict]) -> list[dict]:
    base = next((r for r in results if r["videos"] == 1), None)
    rows = []
    for r in results:
        n = r["videos"]
        row = {
            "videos": n, "wall_s": r["wall_s"], "cost_per_video_s": round(r["wall_s"] / n, 4),
            "marginal_per_video_s": (round((r["wall_s"] - base["wall_s"]) / (n - 1), 4)
                                     if base and n > 1 else None),
            "execute_ms_per_video": round(1000 * r["execute_s"] / n, 2),
            "listing_ms_per_video": round(1000 * r["listing_s"] / n, 3),
            "plan_ms_per_video": round(1000 * r["plan_s"] / n, 3),
            "writer_ms_per_video": (round(1000 * r["writer_tasks_s"] / n, 2)
                                    if r.get("writer_tasks_s") is not None else None),
            "commit_ms_per_video": round(1000 * r["commit_s"] / n, 3),
            "ledger_ms_per_video": round(1000 * r.get("commit_ledger_s", 0.0) / n, 3),
            "rerun_ms_per_video": round(1000 * r["rerun"]["wall_s"] / n, 3),
            "driver_peak_mib": r["ray"]["memory"]["driver_peak_mib"],
            "worker_peak_mib": r["ray"]["memory"]["worker_peak_mib"],
            "workers_total_peak_mib": r["ray"]["memory"]["workers_total_peak_mib"],
            "not_ok": r["ray"]["not_ok"], "rows": r["rows"],
            "foreign_cores": r["ray"]["memory"]["foreign_cores"],
        }
        rows.append(row)
    return rows


def flatness(rows: list[dict], key: str, lo: int = 10, hi: int = 1000) -> float | None:
    """Largest relative deviation of `key` among sizes lo..hi from their mean."""
    vals = [r[key] for r in rows if lo <= r["videos"] <= hi and r.get(key)]
    if len(vals) < 2:
        return None
    mean = sum(vals) / len(vals)
    return round(max(abs(v / mean - 1.0) for v in vals), 3)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated (default 1,10,100,1000; "
                    "quick 1,10,100)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)   # internal: one size, this process
    args = ap.parse_args(argv)
    if args.one:
        print("SCALING_RESULT " + json.dumps(one_size(args.one, args.set)), flush=True)
        return {}
    sizes = [int(s) for s in (args.sizes or ("1,10,100" if args.quick else "1,10,100,1000")).split(",")]
    results = run_sizes(sizes, args.set)
    rows = summarize(results)
    top = max(r["videos"] for r in rows)
    summary = {
        "config": "configs/local.yaml + " + ", ".join(LIGHT + args.set),
        "machine": common.machine(), "sizes": sizes, "rows": rows, "runs": results,
        "cost_spread": flatness(rows, "cost_per_video_s", 10, top),
        "marginal_spread": flatness(rows, "marginal_per_video_s", 10, top),
    }
    print("\nScaling (pose off, temporal tasks, 8 frames/video; each size a fresh process)")
    print(common.table(rows, ["videos", "wall_s", "cost_per_video_s", "marginal_per_video_s",
                              "execute_ms_per_video", "not_ok", "foreign_cores"], digits=3))
    print(common.table(rows, ["videos", "listing_ms_per_video", "plan_ms_per_video",
                              "writer_ms_per_video", "commit_ms_per_video", "ledger_ms_per_video",
                              "rerun_ms_per_video"], digits=3))
    print(common.table(rows, ["videos", "driver_peak_mib", "worker_peak_mib", "workers_total_peak_mib"],
                       digits=0))
    print(f"cost/video spread 10..{top}: {summary['cost_spread']}; "
          f"marginal spread: {summary['marginal_spread']} (largest deviation from the mean)")
    path = common.write_json("scaling", summary)
    print(f"-> {path}")
    return summary


if __name__ == "__main__":
    main()
