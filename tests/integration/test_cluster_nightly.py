"""clusters/nightly_submit.py against a real Ray head (127.0.0.1, token auth, its own
process group): one Ray job per night however often the pod runs, and the pod's exit code
follows the Ray job's final status."""
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
import yaml

from tests.helpers import REPO
from tests.helpers.ops import child_env, free_port, kill_group

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")
SUBMIT = REPO / "clusters" / "nightly_submit.py"


@pytest.fixture(scope="module")
def ray_head():
    """(dashboard address, env with the cluster's token) of a fresh single-node head."""
    tmp = Path(tempfile.mkdtemp(prefix="rns", dir="/tmp"))  # short: Ray's socket paths
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = child_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token.read_text(),
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    dash = free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--ray-client-server-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port()),
           "--temp-dir", str(tmp / "ray"), "--num-cpus", "1", "--disable-usage-stats"]
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
        yield address, env, tmp
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        kill_group(head.pid)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _night(ray_head, job_name: str, *entry: str) -> subprocess.CompletedProcess:
    address, env, tmp = ray_head
    runtime_env = tmp / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump({"env_vars": {"NIGHT": job_name}}))
    cmd = [sys.executable, str(SUBMIT), "--address", address, "--job-name", job_name,
           "--runtime-env", str(runtime_env), "--poll-s", "1", "--", *entry]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _submission_ids(ray_head) -> list[str]:
    """Submission ids on the cluster, asked in a child process (this one runs Ray without auth)."""
    address, env, _ = ray_head
    code = ("import json, sys; from ray.job_submission import JobSubmissionClient; "
            "print(json.dumps([j.submission_id for j in JobSubmissionClient(sys.argv[1]).list_jobs()]))")
    out = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_one_ray_job_per_night_and_exit_code_follows_it(ray_head):
    night = "proxyqa-nightly-29412120"      # the CronJob's Job name for 2025-12-03 02:00 UTC
    sid = "proxyqa-nightly-20251203-0200"
    first = _night(ray_head, night, "python", "-c", "import os; print('night', os.environ['NIGHT'])")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"submitted {sid}" in first.stdout and f"ray job {sid}: SUCCEEDED" in first.stdout
    assert f"night {night}" in first.stdout  # the driver log tail

    again = _night(ray_head, night, "python", "-c", "print('second')")  # a retried pod
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{sid} already submitted (SUCCEEDED)" in again.stdout
    assert _submission_ids(ray_head).count(sid) == 1

    failed = _night(ray_head, "proxyqa-nightly-29413560", "python", "-c", "import sys; sys.exit(3)")
    assert failed.returncode == 1
    assert "ray job proxyqa-nightly-20251204-0200: FAILED" in failed.stdout
