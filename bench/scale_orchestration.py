"""Scale: what the orchestration costs per video, driver memory, files and commit time.

    python bench/scale_orchestration.py [--skipped 20000] [--real 2000] [--only skipped|real]
    python bench/scale_orchestration.py --only skipped --skipped 100000   # driver memory at scale
    python bench/scale_orchestration.py --only skipped --nightly          # + the nightly over it

Two runs of `proxyqa run` (configs/local.yaml), each a fresh process with its own local Ray,
its driver's resident memory sampled every 0.1 s (the driver process only, not Ray's):
- skipped: N hard links of one clip, `--set limits.max_bytes=1`, so the decode stage skips
  every video at once: the wall time is the pipeline's own cost (listing, blocks, every
  stage's pass-through, writer records, commit, report) with no video work at all.
- real: N distinct videos (bench/common.make_videos: copies of the real clips, each with
  its own filler bytes, hence its own sample_ids), the scaling bench's lighter per-video
  config (pose off, the two temporal tasks, 8 frames), so 2,000 videos fit 2 cores.

Reported: wall and per-video orchestration time, phase times (the manifest's timings_s),
driver peak RSS (whole run and per phase: start-up + listing, plan, execute, commit) and
driver bytes per listed video, files per 1,000 videos, shard rows vs `write.rows_per_file`,
commit time. Two skipped sizes give the driver's memory as a + b x N (see
`extrapolate`).
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
# Pose off and the two temporal tasks so 2,000 videos fit 2 cores; 16 frames and 4 questions
# per video and task give ~2-3 rows per video and task, about what configs/local.yaml writes
# per task (15.9 rows per video over 8 tasks), so the tasks' row totals, which decide how
# full their files can be, are like a real run's.
LIGHT = ["pose.backend=none", "tasks.enabled=[temporal_order, temporal_direction]",
         "decode.num_frames=16", "tasks.temporal_order.samples_per_video=4",
         "tasks.temporal_direction.samples_per_video=4", "decode.resources.concurrency=2"]


def hard_links(n: int) -> Path:
    """N hard links of one clip (cached): N listed videos, one file's bytes each.

    A file takes at most 65,000 links on ext4, so the links point at private copies of the
    clip, one per 50,000 (in `<folder>_src`, not listed)."""
    folder = REPO / ".cache" / "bench" / f"links{n}"
    if folder.is_dir() and len(os.listdir(folder)) == n:
        return folder
    remove_links(folder)
    folder.mkdir(parents=True)
    sources = folder.with_name(folder.name + "_src")
    sources.mkdir()
    clip = sorted((common.CLIPS).glob("*.mp4"))[0]
    for i in range(n):
        source = sources / f"clip{i // 50000}.mp4"
        if not source.exists():
            shutil.copyfile(clip, source)
        os.link(source, folder / f"v{i:06d}.mp4")
    return folder


def remove_links(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(folder.with_name(folder.name + "_src"), ignore_errors=True)


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


def run(folder: Path, sets: list[str], out: Path | None = None, incremental: bool = False,
        keep: bool = False) -> dict[str, Any]:
    """One `proxyqa run` over `folder` into `out` (a new temporary folder by default, removed
    afterwards unless `keep`); `incremental`: the nightly form, on top of `out`'s latest run."""
    out = out or Path(tempfile.mkdtemp(prefix="proxyqa-scale-"))
    args = [PROXYQA, "run", "--config", str(REPO / "configs" / "local.yaml"), "--input", str(folder),
            "--output", str(out), "--set", "ray.progress_bars=false"]
    if incremental:
        args.append("--incremental")
    for s in sets:
        args += ["--set", s]
    peak = [0]
    samples: list[tuple[float, int, int]] = []    # (time, rss, shared) of the driver
    marks: dict[str, float] = {}                  # when the driver printed its plan line
    load_before = os.getloadavg()[0]
    start = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = psutil.Process(proc.pid)

    cpu: dict[int, float] = {}     # pid -> user+system seconds, last seen (driver + all Ray)
    names: dict[int, str] = {proc.pid: "driver"}

    def sample() -> None:
        while proc.poll() is None:
            try:
                mem = driver.memory_info()
                peak[0] = max(peak[0], mem.rss)
                samples.append((time.time(), mem.rss, _anon(proc.pid)))
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
    lines = []
    for line in proc.stdout:      # the plan line's arrival time marks the phases (below)
        lines.append(line)
        if " videos listed, " in line:
            marks["plan_end"] = time.time()
    proc.wait()
    log = "".join(lines)
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
        "driver_peak_by_phase_mib": _phase_peaks(samples, marks.get("plan_end"), manifest["timings_s"]),
        # The RSS also counts mapped library files (Ray's, Arrow's: ~150 MiB, not per video)
        # and shared memory: the anonymous part is the process's own heap.
        "driver_anon_at_peak_mib": round(max(samples, key=lambda s: s[1])[2] / 2**20) if samples else None,
        # The driver's RSS through the execute phase (a ramp: state kept per video; flat: not).
        "driver_execute_ramp_mib": _ramp(samples, marks.get("plan_end"), manifest["timings_s"]),
        "driver_bytes_per_video": round(peak[0] / n),
        "files": len(files), "files_per_1000_videos": round(1000 * len(files) / n, 2),
        "shards": len(shard_rows), "rows": sum(shard_rows), "rows_per_file_target": target,
        "shard_rows": shard_rows,
        "mean_shard_fill": round(sum(shard_rows) / len(shard_rows) / target, 3) if shard_rows else None,
        # Files per (task, split) and how many of them are below the target: at most one
        # each (only a (task, split) with fewer rows than the target in all has a small file).
        "files_by_task_split": _by_task_split(manifest["shards"], target),
        "commit_s": manifest["timings_s"]["commit"],
        "report_json_bytes": (run_dir / "report.json").stat().st_size,
        "report_parquet_bytes": (run_dir / "report.parquet").stat().st_size,
        "status": manifest["counts"]["videos_by_status"],
        # Other work on the machine stretches the wall time: report it next to the figures.
        "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    result["videos_carried"] = manifest["counts"].get("videos_carried", 0)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return result


def _by_task_split(shards: list[dict], target: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in sorted(shards, key=lambda s: (s["task"], s.get("split") or "")):
        entry = out.setdefault(f"{s['task']}/{s.get('split')}", {"rows": [], "below_target": 0})
        entry["rows"].append(s["rows"])
        entry["below_target"] += s["rows"] < target
    return out


def _anon(pid: int) -> int:
    """RssAnon of a process (bytes): its heap, without mapped files and shared memory."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _ramp(samples: list[tuple[float, int, int]], plan_end: float | None,
          timings: dict[str, float]) -> list[int]:
    """Driver RSS (MiB) at each tenth of the execute phase."""
    if plan_end is None or not samples:
        return []
    span = timings.get("execute", 0.0)
    out = []
    for k in range(1, 11):
        t = plan_end + span * k / 10
        out.append(round(max((r for ts, r, _ in samples if ts <= t), default=0) / 2**20))
    return out


def _phase_peaks(samples: list[tuple[float, int, int]], plan_end: float | None,
                 timings: dict[str, float]) -> dict[str, int]:
    """Driver peak RSS per phase (MiB). The phases' bounds come from the time the driver
    printed its plan line and the manifest's phase durations (list, plan, execute, commit)."""
    if plan_end is None or not samples:
        return {}
    list_end = plan_end - timings.get("plan", 0.0)
    execute_end = plan_end + timings.get("execute", 0.0)
    commit_end = execute_end + timings.get("commit", 0.0)
    bounds = [("start+list", 0.0, list_end), ("plan", list_end, plan_end),
              ("execute", plan_end, execute_end), ("commit", execute_end, commit_end),
              ("after", commit_end, float("inf"))]
    return {name: round(max((r for t, r, _ in samples if lo <= t < hi), default=0) / 2**20)
            for name, lo, hi in bounds}


def _commit() -> str:
    """The checked-out commit ('+dirty' with local changes): sizes of one code only."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def extrapolate(points: list[tuple[int, float]], n: int = 1_000_000) -> dict[str, float]:
    """Driver peak as a + b x N through the two largest measured sizes (MiB), at N = n:
    the line through two points, not a fit (more points would hide a growing slope)."""
    (n1, m1), (n2, m2) = sorted(points)[-2:]
    b = (m2 - m1) / (n2 - n1)
    return {"a_mib": round(m1 - b * n1, 1), "b_bytes_per_video": round(b * 2**20, 1),
            "n": n, "peak_mib": round(m1 + b * (n - n1), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skipped", type=int, default=20000)
    parser.add_argument("--real", type=int, default=2000)
    parser.add_argument("--only", choices=["skipped", "real"])
    parser.add_argument("--rows-per-file", type=int, default=None,
                        help="write.rows_per_file of the real run (default: the config's 2000); "
                        "scale it with --real to keep the rows/target ratio on a busy machine")
    parser.add_argument("--nightly", action="store_true",
                        help="after the skipped run, an --incremental run over the same videos "
                        "(the nightly with nothing new: every video carried)")
    parser.add_argument("--remove-links", action="store_true",
                        help="delete the skipped run's hard links afterwards (100,000 of them)")
    args = parser.parse_args()
    # One run at a time (--only) keeps the other's last figures.
    results: dict[str, Any] = {**(common.read_json("scale_orchestration") or {}),
                               "machine": common.machine()}
    if args.only in (None, "skipped"):
        folder = hard_links(args.skipped)
        out = Path(tempfile.mkdtemp(prefix="proxyqa-scale-"))
        results["skipped"] = run(folder, ["limits.max_bytes=1"], out, keep=args.nightly)
        if args.nightly:   # the same listing again, incremental: every video is carried
            results["nightly"] = run(folder, ["limits.max_bytes=1"], out, incremental=True)
        # Every size measured at this commit: two of them give the line a + b x N.
        here = _commit()
        known = results.get("skipped_driver_peak_mib") or {}
        sizes = {int(k): v for k, v in known.get("sizes", {}).items()} if known.get("commit") == here else {}
        sizes[args.skipped] = results["skipped"]["driver_peak_mib"]
        results["skipped_driver_peak_mib"] = {"commit": here,
                                              "sizes": {str(k): v for k, v in sorted(sizes.items())}}
        if len(sizes) >= 2:
            results["driver_extrapolation"] = extrapolate(list(sizes.items()))
        if args.remove_links:
            remove_links(folder)
    if args.only in (None, "real"):
        extra = [f"write.rows_per_file={args.rows_per_file}"] if args.rows_per_file else []
        results["real"] = run(make_videos(args.real), LIGHT + extra)
    rows = [{"run": k, **{c: v for c, v in r.items() if c not in ("shard_rows", "timings_s", "status")},
             **{f"{p}_s": t for p, t in r["timings_s"].items()}}
            for k, r in results.items() if k in ("skipped", "nightly", "real")]
    print(table(rows, ["run", "videos", "wall_s", "per_video_ms", "cpu_s", "cpu_per_video_ms", "list_s", "plan_s", "execute_s",
                       "commit_s", "driver_peak_mib", "files_per_1000_videos", "shards",
                       "mean_shard_fill", "report_json_bytes", "report_parquet_bytes",
                       "load_avg_1min"]))
    for k, r in results.items():
        if k in ("skipped", "nightly", "real"):
            print(f"{k}: driver RSS through execute (MiB, running peak per tenth) "
                  f"{r.get('driver_execute_ramp_mib')}, anonymous at peak {r.get('driver_anon_at_peak_mib')} MiB")
            print(f"{k}: driver peak by phase (MiB) {r.get('driver_peak_by_phase_mib')}, "
                  f"{r.get('driver_bytes_per_video')} B per listed video (whole RSS / N)")
            print(f"{k}: CPU seconds by process: {r.get('cpu_s_by_process')}")
            print(f"{k}: shard rows {r['shard_rows'][:20]} (target {r['rows_per_file_target']})")
    if "driver_extrapolation" in results:
        print(f"driver peak by size (MiB): {results['skipped_driver_peak_mib']}; "
              f"a + b x N: {results['driver_extrapolation']}")
    print(f"-> {write_json('scale_orchestration', results)}")


if __name__ == "__main__":
    main()
