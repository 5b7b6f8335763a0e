"""Shared helpers of the bench scripts: inputs, configs, timing, memory, tables, JSON.

Import this module first in every bench script: it imports torch before decord (decord2
loads CUDA's libnvblas globally and a torch imported afterwards crashes in CPU
convolutions) and keeps ultralytics and Ray offline and quiet.
"""
from __future__ import annotations

import json
import os
import platform
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

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
RESULTS = REPO / "bench" / "results"
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
    """The listing records the pipeline would make for `folder` (pipeline.sources)."""
    from pipeline.config import Config
    from pipeline.sources import list_videos

    return list_videos(Config(input=str(folder)))


def bench_config(overrides: Sequence[str] = (), base: Path | None = REPO / "configs" / "local.yaml"):
    """The shipped local config (its tuned resources), all geometry tasks, plus overrides."""
    from pipeline.config import load_config

    return load_config(base, [f"tasks.enabled={json.dumps(GEOMETRY_TASKS)}",
                              "ray.progress_bars=false", *overrides])


def warm_page_cache(folder: Path) -> None:
    """Reads every file once so the first measured pass does not pay for the disk."""
    for path in sorted(folder.iterdir()):
        path.read_bytes()


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


def wait_for_quiet(max_load: float, timeout_s: float = 120.0) -> float:
    """Waits (bounded) until the 1-min load average drops below `max_load`; returns it."""
    deadline = time.time() + timeout_s
    load = os.getloadavg()[0]
    while load > max_load and time.time() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


# ------------------------------------------------------------------ timing

class Clock:
    """Wall and process-CPU seconds of a block: `with Clock() as c: ...; c.wall`."""

    def __enter__(self) -> "Clock":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def steady_rate(events: list[tuple[float, int]]) -> dict[str, float | None]:
    """Rate from (time, items completed at that time) events, start of the run at 0.

    Steady state = items after the first event / time from the first to the last event:
    it leaves out start-up and pipeline fill (everything before the first output).
    """
    if not events:
        return {"first_output_s": None, "steady_per_s": None, "overall_per_s": None}
    events = sorted(events)
    total = sum(n for _, n in events)
    t_first, t_last = events[0][0], events[-1][0]
    steady = (total - events[0][1]) / (t_last - t_first) if t_last > t_first else None
    return {"first_output_s": round(t_first, 3),
            "steady_per_s": None if steady is None else round(steady, 4),
            "overall_per_s": round(total / t_last, 4) if t_last > 0 else None}


# ------------------------------------------------------------------ memory

class MemorySampler:
    """Peak RSS of this process and of its Ray worker descendants, sampled in a thread.

    Ray workers are found as descendants of this driver (a local ray.init starts the raylet
    as our child), named `ray::...`; other users' Ray instances are not counted.
    """

    def __init__(self, interval_s: float = 0.25):
        import psutil

        self.me = psutil.Process()
        self.interval = interval_s
        self.driver_peak = 0
        self.worker_peak = 0            # largest single worker
        self.workers_total_peak = 0     # largest sum over workers at one instant
        self.worker_peaks: dict[str, int] = {}   # by worker name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        import psutil

        self.driver_peak = max(self.driver_peak, self.me.memory_info().rss)
        total = 0
        for proc in self.me.children(recursive=True):
            try:
                name = proc.name()
                if not name.startswith("ray::"):
                    cmd = proc.cmdline()
                    if not cmd or not cmd[0].startswith("ray::"):
                        continue
                    name = cmd[0]
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += rss
            self.worker_peak = max(self.worker_peak, rss)
            key = name.split(" ")[0]
            self.worker_peaks[key] = max(self.worker_peaks.get(key, 0), rss)
        self.workers_total_peak = max(self.workers_total_peak, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, Any]:
        mib = lambda b: round(b / (1 << 20), 1)  # noqa: E731
        return {"driver_peak_mib": mib(self.driver_peak), "worker_peak_mib": mib(self.worker_peak),
                "workers_total_peak_mib": mib(self.workers_total_peak),
                "worker_peaks_mib": {k: mib(v) for k, v in sorted(self.worker_peaks.items())}}


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
