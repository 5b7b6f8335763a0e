"""Scale: what the orchestration costs per video, driver memory, files and commit time.

    python bench/scale_orchestration.py [--skipped 20000] [--real 2000] [--only skipped|real]

Two runs of `proxyqa run` (configs/local.yaml), each a fresh process with its own local Ray,
its driver's resident memory sampled every 0.1 s (the driver process only, not Ray's):
- skipped: N hard links of one clip, `--set limits.max_bytes=1`, so the decode stage skips
  every video at once: the wall time is the pipeline's own cost (listing, blocks, every
  stage's pass-through, writer records, commit, report) with no video work at all.
- real: N distinct videos (bench/common.make_videos: copies of the real clips, each with
  its own filler bytes, hence its own sample_ids), the scaling bench's lighter per-video
  config (pose off, the two temporal tasks, 8 frames), so 2,000 videos fit 2 cores.

Reported: wall and per-video orchestration time, phase times (the manifest's timings_s),
driver peak RSS, files per 1,000 videos, shard rows vs `write.rows_per_file`, commit time.
Writes bench/results/scale_orchestration.json. Not a test: timings on a shared machine vary.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common  # noqa: F401  (first: environment)
import psutil
from common import REPO, make_videos, table, write_json

PROXYQA = str(Path(sys.executable).parent / "proxyqa")
LIGHT = ["pose.backend=none", "tasks.enabled=[temporal_order, temporal_direction]",
         "decode.num_frames=8", "decode.resources.concurrency=2"]


def hard_links(n: int) -> Path:
    """N hard links of one clip (cached): N listed videos, one file's bytes."""
    folder = REPO / ".cache" / "bench" / f"links{n}"
    if folder.is_dir() and len(os.listdir(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    clip = sorted((common.CLIPS).glob("*.mp4"))[0]
    for i in range(n):
        os.link(clip, folder / f"v{i:06d}.mp4")
    return folder


def _kind(p: psutil.Process) -> str:
    """A short name for a process of the run: driver, raylet, gcs, a stage's worker, ..."""
    title = " ".join(p.cmdline())[:300]
    for key in ("DecodeStage", "PoseStage", "BuildTasksStage", "ShardWriterStage"):
        if key in title:
            return key
    for key in ("raylet", "gcs_server", "dashboard", "runtime_env", "log_monitor", "monitor.py",
                "default_worker", "ray::"):
        if key in title:
            return key.strip(":").replace(".py", "")
    return p.name()


def _by_kind(cpu: dict[int, float], names: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, t in cpu.items():
        out[names.get(pid, "?")] = round(out.get(names.get(pid, "?"), 0.0) + t, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run(folder: Path, sets: list[str]) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="proxyqa-scale-"))
    args = [PROXYQA, "run", "--config", str(REPO / "configs" / "local.yaml"), "--input", str(folder),
            "--output", str(out), "--set", "ray.progress_bars=false"]
    for s in sets:
        args += ["--set", s]
    peak = [0]
    load_before = os.getloadavg()[0]
    start = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = psutil.Process(proc.pid)

    cpu: dict[int, float] = {}     # pid -> user+system seconds, last seen (driver + all Ray)
    names: dict[int, str] = {proc.pid: "driver"}

    def sample() -> None:
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], driver.memory_info().rss)
                family = [driver, *driver.children(recursive=True)]
            except psutil.Error:
                return
            for p in family:
                try:
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
                    if p.pid != proc.pid:   # the latest title: a forked worker starts as "raylet"
                        names[p.pid] = _kind(p)
                except psutil.Error:
                    pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log, _ = proc.communicate()
    wall = time.time() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{log[-3000:]}")
    run_dir = out / (out / "latest").read_text().strip()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    n = manifest["counts"]["videos"]
    shard_rows = [s["rows"] for s in manifest["shards"]]
    target = manifest["config"]["write"]["rows_per_file"]
    result = {
        "videos": n, "wall_s": round(wall, 2), "per_video_ms": round(1000 * wall / n, 3),
        # CPU seconds of the driver and every Ray process it started: what the run costs
        # whatever else the machine runs (the wall time stretches under load, this does not).
        "cpu_s": round(sum(cpu.values()), 1),
        "cpu_per_video_ms": round(1000 * sum(cpu.values()) / n, 3),
        "cpu_s_by_process": _by_kind(cpu, names),
        "timings_s": manifest["timings_s"], "driver_peak_mib": round(peak[0] / 2**20),
        "files": len(files), "files_per_1000_videos": round(1000 * len(files) / n, 2),
        "shards": len(shard_rows), "rows": sum(shard_rows), "rows_per_file_target": target,
        "shard_rows": shard_rows,
        "mean_shard_fill": round(sum(shard_rows) / len(shard_rows) / target, 3) if shard_rows else None,
        "commit_s": manifest["timings_s"]["commit"],
        "report_json_bytes": (run_dir / "report.json").stat().st_size,
        "report_parquet_bytes": (run_dir / "report.parquet").stat().st_size,
        "status": manifest["counts"]["videos_by_status"],
        # Other work on the machine stretches the wall time: report it next to the figures.
        "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skipped", type=int, default=20000)
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--only", choices=["skipped", "real"])
    parser.add_argument("--rows-per-file", type=int, default=None,
                        help="write.rows_per_file of the real run (default: the config's 2000); "
                        "scale it with --real to keep the rows/target ratio on a busy machine")
    args = parser.parse_args()
    # One run at a time (--only) keeps the other's last figures.
    results: dict[str, Any] = {**(common.read_json("scale_orchestration") or {}),
                               "machine": common.machine()}
    if args.only in (None, "skipped"):
        results["skipped"] = run(hard_links(args.skipped), ["limits.max_bytes=1"])
    if args.only in (None, "real"):
        extra = [f"write.rows_per_file={args.rows_per_file}"] if args.rows_per_file else []
        results["real"] = run(make_videos(args.real), LIGHT + extra)
    rows = [{"run": k, **{c: v for c, v in r.items() if c not in ("shard_rows", "timings_s", "status")},
             **{f"{p}_s": t for p, t in r["timings_s"].items()}}
            for k, r in results.items() if k != "machine"]
    print(table(rows, ["run", "videos", "wall_s", "per_video_ms", "cpu_s", "cpu_per_video_ms", "list_s", "plan_s", "execute_s",
                       "commit_s", "driver_peak_mib", "files_per_1000_videos", "shards",
                       "mean_shard_fill", "report_json_bytes", "report_parquet_bytes",
                       "load_avg_1min"]))
    for k, r in results.items():
        if k != "machine":
            print(f"{k}: CPU seconds by process: {r.get('cpu_s_by_process')}")
            print(f"{k}: shard rows {r['shard_rows'][:20]} (target {r['rows_per_file_target']})")
    print(f"-> {write_json('scale_orchestration', results)}")


if __name__ == "__main__":
    main()
