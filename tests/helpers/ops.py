"""Helpers of the operations tests: `proxyqa run` as a real subprocess, run contents."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from tests.helpers import REPO, read_videos

PROXYQA = str(Path(sys.executable).parent / "proxyqa")
LOCAL = REPO / "configs" / "local.yaml"
QUIET = ("--set", "ray.progress_bars=false")


def frozen_config(folder: Path, source: Path = LOCAL) -> Path:
    """A copy of the config taken once: runs compared by a test must share one config_hash
    even if the repo's config file is edited while the test runs."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / source.name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment for a child process, without a Ray cluster to join."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_proxyqa(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
                ) -> subprocess.CompletedProcess:
    """`proxyqa run ...` in its own process (own local Ray), in its own process group."""
    proc = subprocess.Popen([PROXYQA, "run", *args], cwd=REPO, env=env or child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group this test started (Ray's helpers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def copy_clips(clips_dir: Path, folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(clips_dir / name, folder / name)
    return folder


def shard_files(run_dir: Path, manifest: dict) -> list[Path]:
    return [(run_dir / s["path"]).resolve() for s in manifest["shards"]]


def dataset(run_dir: Path) -> tuple[list[dict], dict, dict]:
    """(rows of every manifest shard without images, manifest, report) of a complete run."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    report["videos"] = read_videos(run_dir)
    rows = []
    for path in shard_files(run_dir, manifest):
        rows.extend(pq.read_table(path, columns=["sample_id", "video_id", "task", "run_id",
                                                 "config_hash"]).to_pylist())
    return rows, manifest, report


def assert_no_duplicates(rows: list[dict]) -> None:
    dup = [sid for sid, n in Counter(r["sample_id"] for r in rows).items() if n > 1]
    assert not dup, f"{len(dup)} sample_ids appear more than once, e.g. {dup[:3]}"


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(step)
    return False
