"""`ray job submit` end to end: a real Ray head on 127.0.0.1 with token auth, the pipeline
submitted with `--working-dir .`, outputs checked, the head stopped.

The head is this test's own (own ports, own temp dir, own process group), so other Ray
instances on the machine are left alone (no `ray stop`, which stops every Ray on the host).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, latest_run, read_videos
from tests.helpers.ops import child_env, copy_clips, free_port, kill_group

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head():
    """(dashboard address, env with the cluster's token) of a fresh single-node head."""
    tmp = Path(tempfile.mkdtemp(prefix="rjs", dir="/tmp"))  # short: Ray's socket paths
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = child_env(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
        # Keep every Ray address on the loopback: Ray otherwise swaps 127.0.0.1 for the
        # host's routable IP, and this single-node test cluster needs no other address.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        YOLO_OFFLINE="1",
    )
    dash = free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--ray-client-server-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port()),
           "--temp-dir", str(tmp / "ray"), "--num-cpus", "2", "--disable-usage-stats"]
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while True:
            probe = subprocess.run([RAY, "job", "list", "--address", address], env=env,
                                   capture_output=True, text=True, timeout=60)
            if probe.returncode == 0:
                break
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"Ray head did not come up:\n{(tmp / 'head.log').read_text()[-3000:]}")
            time.sleep(2)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        kill_group(head.pid)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_dashboard_refuses_requests_without_the_token(ray_head):
    address, env = ray_head
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    no_token["RAY_AUTH_MODE"] = "disabled"
    no_token["HOME"] = tempfile.mkdtemp(prefix="home")  # no ~/.ray/auth_token either
    probe = subprocess.run([RAY, "job", "list", "--address", address], env=no_token,
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0
    assert "token" in (probe.stdout + probe.stderr).lower()


def test_ray_job_submit_runs_the_pipeline(ray_head, clips_dir, tmp_path):
    address, env = ray_head
    clips = copy_clips(clips_dir, tmp_path / "clips",
                       ["kinetics_ta_chi.mp4", "decord_flipping_a_pancake.mkv"])
    out = tmp_path / "out"
    submit = [RAY, "job", "submit", "--address", address, "--working-dir", ".",
              "--runtime-env", "clusters/runtime_env.yaml",
              "--", "proxyqa", "run", "--config", "configs/local.yaml", "--input", str(clips),
              "--output", str(out), "--set", "ray.progress_bars=false"]
    proc = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-4000:]
    assert "succeeded" in logs and "complete in" in logs

    run_dir = latest_run(out)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = {"videos": read_videos(run_dir)}
    assert manifest["complete"] and manifest["counts"]["rows"] > 0
    assert [v["status"] for v in report["videos"]] == ["ok", "ok"]
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["counts"]["rows"]
    for shard in manifest["shards"]:
        assert (run_dir / shard["path"]).is_file()
