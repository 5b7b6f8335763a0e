"""Ray workers SIGKILLed mid-run. The run is a real `proxyqa run` process with its own local
Ray; the victim is the actor running the pose stage (its own pool, or a fused worker running
every stage: `ray.fuse_stages`, as configs/local.yaml sets), killed while it is inside
PoseStage.process (py-spy, a dependency of ray[default], reads the worker's Python stack
from outside).

- Killed once: Ray restarts the actor and retries the call; the video's rows are exactly
  those of an undisturbed run, with no duplicate.
- Killed on every attempt at one video (a "poison" video, as a decoder crash or an OOM kill
  would be): after `ray.max_task_retries` retries that video is reported lost and the run
  still completes with every other video's rows.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import latest_run, read_run
from tests.helpers.faults import FAST, GOOD_CLIPS, baseline, comparable, stage_workers
from tests.helpers.ops import PROXYQA, assert_no_duplicates, child_env, copy_clips, kill_group

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PY_SPY = str(Path(sys.executable).parent / "py-spy")
# One pose actor, one video per call: a kill lands inside one video's pose work.
# One pose worker to watch (the killer reads each candidate's stack with py-spy; two workers
# halve how often it looks at each): a pose pool of one, or one fused worker on a 1-CPU Ray.
ONE_AT_A_TIME = ("--set", "pose.resources.concurrency=1", "--set", "pose.resources.batch_size=1",
                 "--set", "write.resources.batch_size=1", "--set", "ray.num_cpus=1")


def _pose_video(pid: int) -> str | None:
    """The URI of the video the worker's PoseStage.process is on right now, if it is in one."""
    try:
        dump = subprocess.run([PY_SPY, "dump", "--locals", "--pid", str(pid)],
                              capture_output=True, text=True, timeout=20).stdout
    except subprocess.TimeoutExpired:
        return None
    at = dump.find("PoseStage.process")
    if at < 0:
        return None
    row = dump[at:].split('"video_uri": "', 1)
    return row[1].split('"', 1)[0] if len(row) == 2 else None


def _run_and_kill(config: Path, folder: Path, out: Path, should_kill, *extra: str,
                  timeout: float = 420) -> tuple[int, str, list[tuple[int, str]], set[int]]:
    """Runs proxyqa; SIGKILLs each pose worker found inside a video that `should_kill(uri,
    kills_so_far)` accepts. -> (exit code, output, [(pid, uri) killed], pose pids seen)."""
    proc = subprocess.Popen([PROXYQA, "run", "--config", str(config), "--input", str(folder),
                             "--output", str(out), *FAST, *ONE_AT_A_TIME, *extra],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    kills: list[tuple[int, str]] = []
    seen: set[int] = set()
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            for worker in stage_workers(proc.pid, "PoseStage") + stage_workers(proc.pid, "Fused"):
                seen.add(worker.pid)
                uri = _pose_video(worker.pid)
                if uri and should_kill(uri, kills):
                    os.kill(worker.pid, signal.SIGKILL)
                    kills.append((worker.pid, uri))
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        kill_group(proc.pid)
        reader.join(timeout=10)
    return proc.returncode, "".join(log), kills, seen


def test_killed_workers_are_retried_and_a_poison_video_is_reported_lost(tmp_path, tmp_path_factory,
                                                                      clips_dir):
    """One run, two faults: the first good video's pose worker is killed once (its retry
    succeeds); a fourth, "poison" video kills its worker on every attempt."""
    config, base_rows = baseline(tmp_path_factory, clips_dir)
    folder = copy_clips(clips_dir, tmp_path / "in", list(GOOD_CLIPS))
    poison = str(folder / "poison.mp4")
    shutil.copy(clips_dir / "pose2sim_single_cam01.mp4", poison)
    out = tmp_path / "out"

    def should_kill(uri: str, kills: list) -> bool:
        if uri == poison:
            return True
        return not [k for k in kills if k[1] != poison]       # one good video, once

    code, output, kills, pose_pids = _run_and_kill(config, folder, out, should_kill,
                                                   "--set", "ray.max_task_retries=1",
                                                   "--set", "ray.lost_video_passes=1")
    assert code == 0, output[-3000:]
    once = [uri for _, uri in kills if uri != poison]
    assert len(once) == 1, kills
    # First try + one retry, in the run's pass and again in its lost-video pass.
    assert [uri for _, uri in kills if uri == poison] == [poison] * 4
    assert "running them again (pass 2)" in output
    assert len(pose_pids) >= 3, "Ray did not start new pose actors"
    assert "retries remaining, so the task will be retried" in output

    rows, manifest, report = read_run(latest_run(out))
    by_uri = {v["uri"]: v for v in report["videos"]}
    assert by_uri[poison]["status"] == "failed"
    assert by_uri[poison]["reason"].startswith("pipeline: lost")
    assert {v["status"] for u, v in by_uri.items() if u != poison} == {"ok"}
    assert_no_duplicates(rows)
    # Every good video, the one killed once included, has exactly its undisturbed rows.
    assert {comparable(r) for r in rows} == {comparable(r) for r in base_rows}
    assert manifest["counts"]["rows"] == len(rows) == len(base_rows)
    assert manifest["counts"]["failures_by_reason"] == {"pipeline: lost": 1}
