"""Helpers of the operations tests: `proxyqa run` as a real subprocess, run contents."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.helpers import REPO

PROXYQA = str(Path(sys.executable).parent / "proxyqa")
LOCAL = REPO / "configs" / "local.yaml"
QUIET = ("--set", "ray.progress_bars=false")


def frozen_config(folder: Path, source: Path = LOCAL) -> Path:
    """A copy of the config taken once: runs compared by a test must share one config_hash
    even if the repo's config file is edited while the test runs."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / source.name))


_GIVEN: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never one this process was given before: each socket is
    closed when its port is returned, so the OS may hand the same port out again, and a
    `ray start` given it for two components refuses to start (CI saw --port and
    --dashboard-agent-listen-port both get 55019)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


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


ID_COLUMNS = ["sample_id", "video_id", "task", "run_id", "config_hash"]


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


# Credentials for the moto S3 server (it takes any); what a test's child processes get too.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_s3_server():
    """A real S3 endpoint (moto's server) on 127.0.0.1, with this process's AWS variables
    pointed at it for the duration; yields its URL. Stopped (and the variables restored)
    on exit."""
    import pytest
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto keeps its buckets in process-global backends, not per server: without a reset a
    # second server in the same pytest process still serves the first one's objects (an
    # S3 run once listed another module's extra clip that way).
    _moto_reset(url)
    mp = pytest.MonkeyPatch()
    for key, value in AWS_ENV.items():
        mp.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        mp.delenv(key, raising=False)
    try:
        yield url
    finally:
        mp.undo()
        _moto_reset(url)
        server.stop()


def _moto_reset(url: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30).close()
