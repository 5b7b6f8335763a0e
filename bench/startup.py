"""Start-up of `proxyqa run`: from the process's start to the first decoded video.

    python bench/startup.py [--repeats 3] [--videos 2] [--config configs/local.yaml]
                            [--set KEY=VALUE ...]

Runs `proxyqa run` (a fresh process and a fresh local Ray each time) over the first
`--videos` shared clips, through bench/startup_trace.py: trace points in the driver (Python
and imports, listing, ray.init, dataset built), in every Ray worker (process start, ready
to work, stage constructed, first call, first output) and each actor's "alive" time from
Ray's actor table. Prints every repeat's timeline and the median of each milestone;
the target of issue 17 is `first decoded video` <= 2 s on 2 quiet cores. The load
average before and after each repeat is printed with it (the machine may be shared).

Writes bench/results/startup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SHARED = Path(os.environ.get("PROXYQA_SHARED", REPO.parent / "shared")).resolve()
RESULTS = Path(os.environ.get("PROXYQA_BENCH_RESULTS", BENCH / "results"))
SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"   # ray_constants (read by workers)
STAGE_ORDER = ("DecodeStage", "PoseStage", "BuildTasksStage", "MLLMStage", "ShardWriterStage")


def load() -> float:
    return os.getloadavg()[0]


def traced_env(trace: Path) -> dict[str, str]:
    """The environment that makes a driver, or a `ray start` whose workers it passes on,
    write the trace points of bench/startup_trace.py to `trace`."""
    env = dict(os.environ)
    env.update({
        "PROXYQA_STARTUP_TRACE": str(trace),
        SETUP_HOOK_ENV: "startup_trace.worker_hook",
        "PYTHONPATH": os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    })
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def free_port() -> int:
    from proxyqa.models.vllm_server import free_port as free_port_on

    return free_port_on("127.0.0.1")


class WarmCluster:
    """A single-node Ray started once (`ray start --head --block`, free ports, its own process
    group), as a user keeps one running and sets RAY_ADDRESS: `proxyqa run` then connects
    instead of starting Ray, and Ray Data's own actors (detached) outlive each run."""

    def __init__(self, trace: Path, cpus: int):
        import shutil
        import signal

        self._signal, self._rmtree = signal, shutil.rmtree
        self.tmp = Path(tempfile.mkdtemp(prefix="rst", dir="/tmp"))   # short: socket paths
        self.address = f"127.0.0.1:{free_port()}"
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", self.address.split(":")[1], "--num-cpus", str(cpus),
               "--include-dashboard", "false", "--temp-dir", str(self.tmp / "ray"),
               "--disable-usage-stats", "--ray-client-server-port", str(free_port()),
               "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()),
               "--dashboard-agent-grpc-port", str(free_port()),
               "--metrics-export-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port())]
        self.log = open(self.tmp / "head.log", "w")
        # The head's workers inherit its environment: the trace points go to `trace`.
        self.proc = subprocess.Popen(cmd, env=traced_env(trace), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while subprocess.run([ray, "status", "--address", self.address], capture_output=True,
                             env=traced_env(trace)).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise SystemExit("bench: the Ray head did not come up")
            time.sleep(1)

    def stop(self) -> None:
        self.proc.send_signal(self._signal.SIGTERM)      # `ray start --block` stops what it started
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, self._signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._rmtree(self.tmp, ignore_errors=True)


def one_run(config: str, manifest: Path, sets: list[str], trace: Path | None = None,
            address: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="proxyqa-startup-") as tmp:
        trace = trace or Path(tmp) / "trace.jsonl"
        trace.write_text("")
        env = traced_env(trace)
        if address:
            env["RAY_ADDRESS"] = address
        cmd = [sys.executable, str(BENCH / "startup_trace.py"), "run", "--config", config,
               "--input", str(manifest), "--output", str(Path(tmp) / "out")]
        for kv in sets:
            cmd += ["--set", kv]
        load_before = load()
        env["PROXYQA_STARTUP_T0"] = repr(time.time())
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        exited = time.time()
        if proc.returncode != 0:
            raise SystemExit(f"proxyqa run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        events = [json.loads(line) for line in trace.read_text().splitlines()]
    return timeline(events, exited, load_before, load())


def timeline(events: list[dict], exited: float, load_before: float, load_after: float) -> dict:
    t0 = next(e["t"] for e in events if e["event"] == "process")
    driver_pid = next(e["pid"] for e in events if e["event"] == "process")
    # Worker process starts are psutil's (boot time in whole seconds): shift them by the
    # driver's own psutil start vs the clock read just before it was started.
    shift = t0 - next(e["t"] for e in events if e["event"] == "process_psutil")

    def at(event: str, **match: Any) -> float | None:
        ts = [e["t"] for e in events if e["event"] == event
              and all(e.get(k) == v for k, v in match.items())]
        return round(min(ts) - t0, 3) if ts else None

    marks: dict[str, float | None] = {
        "python started (+ bench hook)": at("python_ready"),
        "import ray": at("ray_imported"),
        "import proxyqa cli": at("proxyqa_imported"),
        "listing done": at("listing_done"),
        "ray.init start": at("ray_init_start"),
        "ray.init done": at("ray_init_done"),
        "init_ray done (+ import ray.data)": at("init_ray_done"),
        "dataset built": at("dataset_built"),
    }
    stages = sorted({e["stage"] for e in events if "stage" in e},
                    key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else 99)
    for s in stages:
        marks[f"{s} constructed (first worker)"] = at("construct_done", stage=s)
    for e in sorted((e for e in events if e["event"] == "actor_alive"), key=lambda e: e["t"]):
        if not e["actor"].startswith("MapWorker"):
            marks[f"{e['actor']} alive"] = round(e["t"] - t0, 3)
    for s in stages:
        marks[f"{s} first call"] = at("first_call", stage=s)
    marks["first decoded video"] = at("first_output", stage="DecodeStage")
    marks["first rows written"] = at("first_output", stage="ShardWriterStage")
    marks["run done"] = at("run_done")
    marks["process exit"] = round(exited - t0, 3)

    samples = sorted((e["t"] - t0, e["cpu"], e["machine"]) for e in events if e["event"] == "cpu_sample")

    def interp(t: float | None, col: int) -> float | None:
        if t is None or not samples:
            return None
        before = [s for s in samples if s[0] <= t] or samples[:1]
        after = [s for s in samples if s[0] >= t] or samples[-1:]
        a, b = before[-1], after[0]
        w = 0.0 if b[0] == a[0] else (t - a[0]) / (b[0] - a[0])
        return a[col] + w * (b[col] - a[col])

    # CPU seconds the run's processes had used by each mark, and the cores other processes
    # on the machine used meanwhile (the quiet-machine check).
    cpu = {name: (round(interp(t, 1), 2) if t is not None and samples else None)
           for name, t in marks.items()}
    t_first = marks["first decoded video"] or marks["run done"]
    foreign = None
    if samples and t_first:
        run_cpu = interp(t_first, 1) - samples[0][1]
        machine = interp(t_first, 2) - samples[0][2]
        foreign = round((machine - run_cpu) / max(1e-9, t_first - samples[0][0]), 2)

    workers = []
    for e in events:
        if e["event"] == "worker_process" and e["pid"] != driver_pid:
            pid = e["pid"]
            ready = next((x["t"] for x in events if x["event"] == "worker_ready" and x["pid"] == pid), None)
            role = next((x.get("stage") for x in events if x["pid"] == pid and "stage" in x), None) \
                or next((x["actor"] for x in events if x["event"] == "actor_alive"
                         and x["actor_pid"] == pid), None) or "idle/task"
            construct = [x for x in events if x["pid"] == pid and x["event"].startswith("construct")]
            ready_cpu = next((x.get("cpu") for x in events if x["event"] == "worker_ready" and x["pid"] == pid), None)
            workers.append({
                "pid": pid, "role": role, "process_s": round(e["t"] + shift - t0, 3),
                "ready_s": round(ready - t0, 3) if ready else None,
                "construct_s": round(construct[-1]["t"] - construct[0]["t"], 3)
                if len(construct) == 2 else None,
                "ready_cpu": ready_cpu,
                "constructed_cpu": construct[-1].get("cpu") if construct else None})
    workers.sort(key=lambda w: w["process_s"])
    return {"marks": marks, "run_cpu_s": cpu, "foreign_cores_to_first_video": foreign,
            "workers": workers,
            "load_before": round(load_before, 2), "load_after": round(load_after, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--config", default="configs/local.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--warm-cluster", action="store_true",
                    help="connect every run to one local Ray head started once (RAY_ADDRESS), "
                    "as `ray start` users do; the first run also starts Ray Data's own actors")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.out = args.out or str(RESULTS / ("startup_warm.json" if args.warm_cluster else "startup.json"))

    clips = sorted(p for p in (SHARED / "data" / "clips").iterdir() if p.is_file())[:args.videos]
    if not clips:
        raise SystemExit(f"bench: no clips under {SHARED}/data/clips (set PROXYQA_SHARED)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="proxyqa-startup-in-") as tmp:
        manifest = Path(tmp) / "videos.jsonl"
        manifest.write_text("".join(json.dumps({"uri": str(c)}) + "\n" for c in clips))
        trace = Path(tmp) / "trace.jsonl" if args.warm_cluster else None
        cluster = WarmCluster(trace, os.cpu_count() or 1) if args.warm_cluster else None
        try:
            for _ in range(args.repeats):
                runs.append(one_run(args.config, manifest, args.set, trace,
                                    cluster.address if cluster else None))
        finally:
            if cluster:
                cluster.stop()
        for i, r in enumerate(runs):
            print(f"\nrepeat {i + 1}: load average {r['load_before']} -> {r['load_after']}, "
                  f"other processes used {r['foreign_cores_to_first_video']} cores until the "
                  "first decoded video")
            print(f"  {'wall s':>8}  {'run CPU-s':>9}")
            for name, t in r["marks"].items():
                c = r["run_cpu_s"].get(name)
                print(f"  {t if t is not None else '-':>8}  {c if c is not None else '-':>9}  {name}")
            print("  workers (process start -> ready, role, stage construction):")
            for w in r["workers"]:
                print(f"    {w['process_s']:7.3f} -> {w['ready_s'] or float('nan'):7.3f}  {w['role']}"
                      + (f"  (constructed in {w['construct_s']:.3f} s)" if w["construct_s"] else "")
                      + (f"  CPU-s: ready {w['ready_cpu']}, constructed {w['constructed_cpu']}"
                         if w.get("constructed_cpu") is not None else ""))
    median, median_cpu = {}, {}
    for name in runs[0]["marks"]:
        for key, out in (("marks", median), ("run_cpu_s", median_cpu)):
            values = [r[key].get(name) for r in runs]
            values = [v for v in values if v is not None]
            out[name] = round(statistics.median(values), 3) if values else None
    print(f"\nmedian of {len(runs)} (load average {[r['load_before'] for r in runs]}, other "
          f"processes' cores {[r['foreign_cores_to_first_video'] for r in runs]}):")
    print(f"  {'wall s':>8}  {'run CPU-s':>9}")
    for name, t in median.items():
        c = median_cpu.get(name)
        print(f"  {t if t is not None else '-':>8}  {c if c is not None else '-':>9}  {name}")
    ready, first = median.get("ray.init done"), median.get("first decoded video")
    if ready is not None and first is not None:
        print(f"  {first - ready:8.3f}  (first decoded video after ray.init returned)")
    target = median.get("first decoded video")
    print(f"\nfirst decoded video: {target} s (target <= 2 s: {'met' if target and target <= 2 else 'not met'})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"median": median, "median_run_cpu_s": median_cpu, "runs": runs, "videos": [c.name for c in clips],
                               "config": args.config, "sets": args.set}, indent=1))


if __name__ == "__main__":
    main()
