"""Shared helpers of the bench scripts: inputs, configs, timing, memory, tables, JSON.

Import this module first in every bench script: it imports torch before decord (decord2
loads CUDA's libnvblas globally and a torch imported afterwards crashes in CPU
convolutions) and keeps ultralytics and Ray offline and quiet.
"""
from __future__ import annotations

import json
import os
import platform
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".cache" / "ultralytics"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")       # a local, private Ray instance
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("GLOG_minloglevel", "2")            # mediapipe's C++ chatter
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import torch  # noqa: F401  (before decord, see above)
except ImportError:
    pass

SHARED = Path(os.environ.get("PROXYQA_SHARED", REPO.parent / "shared")).resolve()
CLIPS = SHARED / "data" / "clips"
RESULTS = Path(os.environ.get("PROXYQA_BENCH_RESULTS", REPO / "bench" / "results"))   # tests: a tmp dir
INPUTS = REPO / ".cache" / "bench" / "videos"      # generated copies (git-ignored .cache/)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")

# Every geometry/construction task: task building and verification see real work.
GEOMETRY_TASKS = ["temporal_order", "temporal_direction", "spatial_grounding",
                  "body_part_state", "motion_compare"]


def clip_paths() -> list[Path]:
    clips = sorted(p for p in CLIPS.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) \
        if CLIPS.is_dir() else []
    if not clips:
        raise SystemExit(f"bench: no clips at {CLIPS} (set PROXYQA_SHARED to the shared folder)")
    return clips


def _padding(suffix: str, n: int) -> bytes:
    """`n` bytes of container-legal filler appended after the last top-level element.

    MP4/MOV: a `free` box; Matroska: an EBML Void element. Decoders skip both, so every
    copy decodes to the same frames, yet its size (hence content_id, hence sample_ids)
    differs: the writer and commit see distinct rows, as with distinct real videos.
    """
    if suffix == ".mkv" or suffix == ".webm":
        return b"\xec\x01" + n.to_bytes(7, "big") + b"\0" * n
    return struct.pack(">I", 8 + n) + b"free" + b"\0" * n


def make_videos(count: int, root: Path = INPUTS) -> Path:
    """A folder of `count` distinct videos cycling over the real clips (cached on disk).

    Copy i is clip i % len(clips) plus i + 1 filler bytes; the folder is reused when it
    already holds exactly these files.
    """
    clips = clip_paths()
    folder = root / f"n{count}"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for i in range(count):
        clip = clips[i % len(clips)]
        wanted[f"v{i:05d}_{clip.stem}{clip.suffix}"] = (clip, i + 1)
    for stale in set(p.name for p in folder.iterdir()) - set(wanted):
        (folder / stale).unlink()
    for name, (clip, pad) in wanted.items():
        path = folder / name
        size = clip.stat().st_size + len(_padding(clip.suffix.lower(), pad))
        if path.is_file() and path.stat().st_size == size:
            continue
        path.write_bytes(clip.read_bytes() + _padding(clip.suffix.lower(), pad))
    return folder


def video_records(folder: Path) -> list[dict]:
    """The listing records the pipeline would make for `folder` (proxyqa.pipeline.sources)."""
    from proxyqa.core.config import Config
    from proxyqa.pipeline.sources import list_videos

    return list_videos(Config(input=str(folder)))


def bench_config(overrides: Sequence[str] = (), base: Path | None = REPO / "configs" / "local.yaml"):
    """The shipped local config (its tuned resources), all geometry tasks, plus overrides."""
    from proxyqa.core.config import load_config

    return load_config(base, [f"tasks.enabled={json.dumps(GEOMETRY_TASKS)}",
                              "ray.progress_bars=false", *overrides])


def warm_page_cache(folder: Path) -> None:
    """Reads every file once so the first measured pass does not pay for the disk."""
    for path in sorted(folder.iterdir()):
        path.read_bytes()


def bench_input(count: int) -> tuple[Path, list[dict]]:
    """`count` distinct videos on disk, in the page cache, and their listing records."""
    folder = make_videos(count)
    warm_page_cache(folder)
    return folder, video_records(folder)


# ------------------------------------------------------------------ machine and load

def machine() -> dict[str, Any]:
    import psutil

    info = {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "gpu": _gpu_name(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - informational only
        return None


def busy_cores(interval_s: float = 3.0) -> float:
    """Cores busy on average over the next `interval_s` seconds (the whole machine)."""
    start = _system_busy_s()
    time.sleep(interval_s)
    return (_system_busy_s() - start) / interval_s


_WAIT_BUDGET_S = [float(os.environ.get("PROXYQA_BENCH_WAIT_S", 600))]   # per process


def wait_for_quiet(max_busy: float = 0.2, timeout_s: float = 120.0) -> float:
    """Waits until under `max_busy` cores are busy over 5 s; returns the last value.

    Other jobs on the machine distort every figure here: timings are taken when it is
    quiet, and each measured pass reports the cores others used meanwhile (foreign_cores).
    Waiting is bounded per call and in total per process (PROXYQA_BENCH_WAIT_S, 600 s).
    """
    start = time.time()
    deadline = start + min(timeout_s, _WAIT_BUDGET_S[0])
    busy = busy_cores(2.0)
    while busy > max_busy and time.time() < deadline:
        busy = busy_cores(5.0)
    _WAIT_BUDGET_S[0] = max(0.0, _WAIT_BUDGET_S[0] - (time.time() - start))
    return round(busy, 2)


MAX_FOREIGN_CORES = 0.15   # a pass during which others used more is measured again
ATTEMPTS = 3


def quiet_pass(run: Callable[[], Any], foreign: Callable[[Any], float], what: str) -> Any:
    """Runs a measured pass on a quiet machine; again (up to ATTEMPTS) when other processes
    used over MAX_FOREIGN_CORES meanwhile. Returns the cleanest attempt."""
    best, best_foreign = None, float("inf")
    for attempt in range(1, ATTEMPTS + 1):
        wait_for_quiet()
        result = run()
        used = foreign(result)
        if used < best_foreign:
            best, best_foreign = result, used
        if used <= MAX_FOREIGN_CORES:
            break
        again = attempt < ATTEMPTS and _WAIT_BUDGET_S[0] > 0
        print(f"bench: {what}: other processes kept {used:.2f} cores busy during attempt "
              f"{attempt}" + (", measuring again" if again else ", keeping the cleanest"), flush=True)
        if not again:
            break
    return best


# ------------------------------------------------------------------ timing

class Clock:
    """Wall and process-CPU seconds of a block: `with Clock() as c: ...; c.wall`."""

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def steady_rate(events: list[tuple[float, int]]) -> dict[str, float | None]:
    """Rate from (time, items completed at that time) events, start of the run at 0.

    Steady state = items after the first event / time from the first to the last event:
    it leaves out start-up and pipeline fill (everything before the first output). Outputs
    bunched into the last quarter of the run (stages that did not overlap) have none.
    """
    if not events:
        return {"first_output_s": None, "steady_per_s": None, "overall_per_s": None}
    events = sorted(events)
    total = sum(n for _, n in events)
    t_first, t_last = events[0][0], events[-1][0]
    bunched = len(events) < 3 or (t_last - t_first) < 0.25 * t_last
    steady = None if bunched else (total - events[0][1]) / (t_last - t_first)
    return {"first_output_s": round(t_first, 3),
            "steady_per_s": None if steady is None else round(steady, 4),
            "overall_per_s": round(total / t_last, 4) if t_last > 0 else None,
            "outputs_bunched": bunched}


# ------------------------------------------------------------------ memory

class MemorySampler:
    """Peak RSS and CPU seconds of this driver and of its Ray processes, sampled in a thread.

    A local ray.init starts the raylet as our child, so our Ray processes are our
    descendants (other users' Ray instances are not counted). Workers are named by their
    `ray::...` title (an actor's title names its stage); the rest (raylet, GCS, dashboard,
    agents) is "ray system". CPU seconds cover the sampling window only.
    """

    def __init__(self, interval_s: float = 0.5):
        import psutil

        self.me = psutil.Process()
        self.interval = interval_s
        self.driver_peak = 0
        self.worker_peak = 0            # largest single worker
        self.workers_total_peak = 0     # largest sum over workers at one instant
        self.worker_peaks: dict[str, int] = {}   # by worker name
        self._busy_first = self._busy_last = _system_busy_s()
        self._t_first = self._t_last = time.perf_counter()
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._name: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _title(proc) -> str:
        cmd = proc.cmdline()     # the full title (proc.name() is cut at 15 characters)
        if not cmd or not cmd[0].startswith("ray::"):
            return "ray system"  # raylet, GCS, dashboard and agents
        return re.sub(r"\)\)\..*$", "))", cmd[0].split(" ")[0])   # drop .submit etc.

    def _sample(self, first: bool = False) -> None:
        import psutil

        self.driver_peak = max(self.driver_peak, self.me.memory_info().rss)
        self._busy_last, self._t_last = _system_busy_s(), time.perf_counter()
        if first:
            self._busy_first, self._t_first = self._busy_last, self._t_last
        total = 0
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                title = "driver" if proc.pid == self.me.pid else self._title(proc)
                rss = proc.memory_info().rss
                cpu = sum(proc.cpu_times()[:2])
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if first:
                self._cpu_first[proc.pid] = cpu
            self._cpu_last[proc.pid] = cpu
            if title not in ("ray::IDLE", "ray system") or proc.pid not in self._name:
                self._name[proc.pid] = title     # an actor's last stage title wins
            if title in ("driver", "ray system"):
                continue
            total += rss
            self.worker_peak = max(self.worker_peak, rss)
            self.worker_peaks[title] = max(self.worker_peaks.get(title, 0), rss)
        self.workers_total_peak = max(self.workers_total_peak, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used in the window, by process title."""
        out: dict[str, float] = {}
        for pid, last in self._cpu_last.items():
            name = self._name.get(pid, "?")
            if not name.startswith(("ray::MapWorker", "driver")):
                name = "ray system" if name == "ray system" else "ray other actors/idle"
            out[name] = out.get(name, 0.0) + last - self._cpu_first.get(pid, 0.0)
        return {k: round(v, 2) for k, v in sorted(out.items())}

    def foreign_cores(self) -> float:
        """Cores other processes kept busy on average in the window (0 = a quiet machine)."""
        wall = self._t_last - self._t_first
        ours = sum(self.cpu_seconds().values())
        busy = self._busy_last - self._busy_first
        return round(max(0.0, busy - ours) / wall, 3) if wall > 0 else 0.0

    def report(self) -> dict[str, Any]:
        mib = lambda b: round(b / (1 << 20), 1)  # noqa: E731
        return {"driver_peak_mib": mib(self.driver_peak), "worker_peak_mib": mib(self.worker_peak),
                "workers_total_peak_mib": mib(self.workers_total_peak),
                "worker_peaks_mib": {k: mib(v) for k, v in sorted(self.worker_peaks.items())},
                "cpu_s": self.cpu_seconds(), "foreign_cores": self.foreign_cores()}


def _system_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


# ------------------------------------------------------------------ output

def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def read_json(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str], digits: int = 2) -> str:
    """A Markdown table (it reads fine in a terminal too)."""
    rows = list(rows)
    cells = [[fmt(r.get(c), digits) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)
