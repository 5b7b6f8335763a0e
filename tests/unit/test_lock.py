"""The run lock (pipeline/lock.py): local O_EXCL and S3 conditional writes (moto's server),
one winner among racing runs, exit 2 with one line for the second run, takeover of an
expired lock, and a holder that notices it was taken over."""
from __future__ import annotations

import json
import threading
import time

import pytest

from proxyqa.core.config import LockConfig, load_config
from proxyqa.core.storage import get_fs
from proxyqa.pipeline.cli import main
from proxyqa.pipeline.lock import LockHeld, RunLock
from tests.helpers.ops import moto_s3_server


@pytest.fixture(scope="module")
def moto_endpoint():
    import boto3

    with moto_s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="locks")
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out"), load_config(None, [])
    endpoint = request.getfixturevalue("moto_endpoint")
    return f"s3://locks/{tmp_path.name}", load_config(None, [f"s3.endpoint_url={endpoint}"])


def _lock(out: str, cfg, **kw) -> RunLock:
    fs, root = get_fs(out, cfg.s3)
    return RunLock(fs, root, out, LockConfig(**kw))


def test_one_of_several_racing_runs_gets_the_lock(output):
    out, cfg = output
    results: list = []
    barrier = threading.Barrier(6)

    def race() -> None:
        lock = _lock(out, cfg)
        barrier.wait()
        try:
            results.append(lock.acquire())
        except LockHeld as exc:
            results.append(exc)

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, RunLock)]
    assert len(winners) == 1, results
    losers = [r for r in results if isinstance(r, LockHeld)]
    assert len(losers) == 5 and all("is locked by" in str(e) and "\n" not in str(e) for e in losers)
    winners[0].release()
    again = _lock(out, cfg).acquire()     # released: the next run gets it
    again.release()


def test_an_expired_lock_is_taken_over_and_its_holder_notices(output, caplog):
    out, cfg = output
    dead = _lock(out, cfg, heartbeat_s=0.2, expiry_s=1.0).acquire()
    dead._stop.set()                       # its process "died": no more heartbeats
    with pytest.raises(LockHeld):          # still fresh
        _lock(out, cfg, expiry_s=1.0).acquire()
    time.sleep(1.5)
    taker = _lock(out, cfg, heartbeat_s=0.2, expiry_s=1.0).acquire()
    assert "took over the lock" in caplog.text
    dead.heartbeat()                       # the old holder wakes up: it lost the lock
    assert dead.lost
    with pytest.raises(LockHeld, match="taken over"):
        dead.check()
    dead.release()                         # must not remove the new holder's lock
    with pytest.raises(LockHeld):
        _lock(out, cfg, expiry_s=1.0).acquire()
    taker.release()


def test_heartbeats_keep_a_long_run_locked(output):
    out, cfg = output
    holder = _lock(out, cfg, heartbeat_s=0.2, expiry_s=1.0).acquire()
    time.sleep(1.6)                        # longer than the expiry: heartbeats keep it
    with pytest.raises(LockHeld):
        _lock(out, cfg, expiry_s=1.0).acquire()
    assert not holder.lost
    holder.release()


def test_second_run_on_the_same_output_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"not a video")
    cfg = load_config(None, [])
    holder = _lock(str(out), cfg).acquire()     # a run in progress on `out`
    try:
        for mode in ("--incremental", "--full"):
            code = main(["run", "--config", str(tmp_path / "c.yaml"), "--input",
                         str(tmp_path / "in"), "--output", str(out), mode])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1 and "is locked by" in err[0], err
        lock = json.loads((out / "_lock.json").read_text())
        assert lock["owner"] in err[0] and lock["token"] == holder.token
    finally:
        holder.release()
    assert not (out / "_lock.json").exists()


@pytest.fixture(autouse=True)
def _config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("pose: {backend: none}\n")


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    code = ("import sys; from proxyqa.core.config import LockConfig; "
            "from proxyqa.core.storage import get_fs; from proxyqa.pipeline.lock import RunLock; "
            "fs, root = get_fs(sys.argv[1]); RunLock(fs, root, sys.argv[1], LockConfig()).acquire(); "
            "print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        cfg = load_config(None, [])
        with pytest.raises(LockHeld):          # alive: held, whatever the expiry
            _lock(str(out), cfg).acquire()
    finally:
        proc.kill()                            # kill -9: no release
        proc.wait()
    assert (out / "_lock.json").exists()
    taker = _lock(str(out), load_config(None, [])).acquire()   # gone: no need to wait
    taker.release()
