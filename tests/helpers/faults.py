"""What the fault tests share: one uninterrupted baseline run of good clips per session, and
a way to find the Ray worker processes of a `proxyqa run` started by a test."""
from __future__ import annotations

import shutil
from pathlib import Path

import psutil

from tests.helpers import latest_run, read_run, run_cli
from tests.helpers.ops import QUIET, frozen_config

# Small real clips, one person each (the fastest to run through pose).
GOOD_CLIPS = ("kinetics_ta_chi.mp4", "decord_flipping_a_pancake.mkv", "kinetics_clean_and_jerk.mp4")
FAST = (*QUIET, "--set", "decode.num_frames=8")

_baselines: dict[str, tuple[Path, list[dict]]] = {}


def baseline(tmp_path_factory, clips_dir: Path) -> tuple[Path, list[dict]]:
    """(config, rows) of one clean run over GOOD_CLIPS, made once per session. Sample ids
    follow the clip's content and the config, not its path: any run of these clips under
    this config must give exactly these rows."""
    if "good" not in _baselines:
        tmp = tmp_path_factory.mktemp("fault_baseline")
        config = frozen_config(tmp / "config")
        folder = tmp / "in"
        folder.mkdir()
        for name in GOOD_CLIPS:
            shutil.copy(clips_dir / name, folder / name)
        assert run_cli(config, "--input", str(folder), "--output", str(tmp / "out"), *FAST) == 0
        rows, _, report = read_run(latest_run(tmp / "out"))
        assert {v["status"] for v in report["videos"]} == {"ok"} and rows
        _baselines["good"] = (config, rows)
    return _baselines["good"]


def comparable(row: dict) -> tuple:
    """A row without what names the run or the file's path: what a trainer learns from."""
    return (row["sample_id"], row["task"], row["question"], row["answer"], row["answer_struct"],
            tuple(row["frame_indices"]), tuple(row["timestamps"]), tuple(row["images"]))


def stage_workers(root_pid: int, stage: str) -> list[psutil.Process]:
    """Ray actor processes of `stage` among the descendants of `root_pid` (Ray titles its
    actor processes 'ray::MapWorker(MapBatches(<Stage>))...')."""
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        try:
            if f"MapBatches({stage})" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def scan_for(secret: bytes, root: Path) -> list[str]:
    """Every regular file under `root` whose bytes contain `secret`."""
    return [str(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]
