"""A real multi-node Ray cluster on 127.0.0.1: a head and worker nodes started with
`ray start` (separate raylets, each with its own CPUs and custom resources), the pipeline
submitted with `ray job submit`, input and output on moto's S3 server.

Nodes (custom resources as a GPU cluster would declare them, clusters/):
  head      1 CPU, head_node        runs the job driver, task building, the writer
  decode    1 CPU, decode_node, pose_node
  pose      2 CPU, pose_node        a "GPU node": pose only

Checks: a node-local output path is refused (exit 2, one line); each stage's actors ran only
on nodes carrying its resources (Ray's state API); the
rows equal a single-node run's; the pose node killed mid-run (its processes, by process
group) -> the run completes with the same sample_ids and no duplicates; the only decode
node killed mid-run -> exit 3 with one line after ray.unschedulable_timeout_s, not a hang,
and the same command resumes it once a node with decode_node joins.

Only the processes this test starts are stopped (their process groups), never `ray stop`.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from proxyqa.core.storage import read_parquet
from tests.helpers import REPO, latest_run, read_run, run_cli
from tests.helpers.ops import (
    AWS_ENV,
    assert_no_duplicates,
    child_env,
    free_port,
    frozen_config,
    kill_group,
    moto_s3_server,
    wait_for,
)

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")      # the venv's: workers import this worktree
PROXYQA = str(Path(sys.executable).parent / "proxyqa")
CLIPS = ["kinetics_ta_chi.mp4", "decord_flipping_a_pancake.mkv", "pose2sim_single_cam01.mp4",
         "mmaction2_demo_skeleton.mp4"]
WAIT_S = 20     # ray.unschedulable_timeout_s of these runs


def _settings(endpoint: str, custom: bool = True) -> list[str]:
    sets = [f"s3.endpoint_url={endpoint}", "decode.num_frames=8", "ray.progress_bars=false",
            "pose.mediapipe.num_poses=1",
            "write.resources.batch_size=1",          # a record per video: resumable per video
            f"ray.unschedulable_timeout_s={WAIT_S}", "lock.heartbeat_s=5"]
    if custom:
        # Task building and the writer on the head, as the docstring says: were they on the
        # pose node when it is killed, their finished outputs would be lost with it, and Ray
        # cannot rebuild the output of an actor pool that has already shut down (the run
        # then stalls until ray.stall_timeout_s ends it with exit 3).
        sets += ["decode.resources.custom={decode_node: 0.01}",
                 "pose.resources.custom={pose_node: 0.01}",
                 "tasks.resources.custom={head_node: 0.01}",
                 "write.resources.custom={head_node: 0.01}"]
    return [a for s in sets for a in ("--set", s)]


class Cluster:
    """Head + workers of this test, each `ray start --block` in its own process group."""

    def __init__(self, env: dict[str, str]):
        self.tmp = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))  # short: socket paths
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dash = free_port()
        self.address = f"http://127.0.0.1:{self.dash}"

    def _ports(self) -> list[str]:
        return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port())]

    def start_head(self) -> None:
        cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", self.gcs.split(":")[1], "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(self.dash), "--include-dashboard", "true",
               "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.tmp / "ray"),
               "--num-cpus", "1", "--resources", json.dumps({"head_node": 1}),
               "--disable-usage-stats", *self._ports()]
        self._spawn("head", cmd)
        deadline = time.time() + 180
        while subprocess.run([RAY, "job", "list", "--address", self.address], env=self.env,
                             capture_output=True, timeout=60).returncode != 0:
            if self.procs["head"].poll() is not None or time.time() > deadline:
                pytest.fail("Ray head did not come up:\n" + self.log("head")[-3000:])
            time.sleep(2)

    def add_worker(self, name: str, cpus: int, resources: dict[str, float]) -> None:
        cmd = [RAY, "start", "--block", "--address", self.gcs, "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(cpus), "--resources", json.dumps(resources),
               "--disable-usage-stats", *self._ports()]
        self._spawn(name, cmd)
        assert wait_for(lambda: self._alive_with(resources), 120, step=1), \
            f"worker {name} did not join:\n{self.log(name)[-3000:]}"

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def nodes(self) -> list:
        from ray.util.state import list_nodes

        return list_nodes(address=self.address, limit=100, raise_on_missing_output=False)

    def _alive_with(self, resources: dict[str, float]) -> bool:
        return any(n.state == "ALIVE" and all(n.resources_total.get(k, 0) >= v
                                               for k, v in resources.items())
                   for n in self.nodes())

    def kill(self, name: str) -> None:
        """SIGKILL a node: its `ray start`, raylet and workers (one process group)."""
        kill_group(self.procs.pop(name).pid)

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "head"] + ["head"]:
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)   # `ray start --block` stops what it started
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            kill_group(proc.pid)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def submit(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [RAY, "job", "submit", "--address", self.address, "--", PROXYQA, "run", *args]
        return subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture(scope="module")
def moto_s3():
    import boto3

    with moto_s3_server() as endpoint:
        yield endpoint, boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(scope="module")
def cluster(moto_s3):
    env = child_env(RAY_AUTH_MODE="disabled", YOLO_OFFLINE="1", **AWS_ENV,
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    # Find a dead node within seconds, not the default ~30 s.
                    RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
                    RAY_health_check_timeout_ms="1000")
    c = Cluster(env)
    try:
        c.start_head()
        c.add_worker("decode", 1, {"decode_node": 1, "pose_node": 1})
        c.add_worker("pose", 2, {"pose_node": 1})
        yield c
    finally:
        c.stop()


def _runs_prefix(client, bucket: str, prefix: str) -> str:
    latest = client.get_object(Bucket=bucket, Key=f"{prefix}/latest")["Body"].read().decode()
    return posixpath.join(prefix, latest.strip())


def _s3_rows(client, bucket: str, prefix: str) -> tuple[list[dict], dict]:
    get = lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read()  # noqa: E731
    run = _runs_prefix(client, bucket, prefix)
    manifest = json.loads(get(f"{run}/manifest.json"))
    rows = []
    for shard in manifest["shards"]:
        key = posixpath.normpath(posixpath.join(run, shard["path"]))
        rows.extend(read_parquet(io.BytesIO(get(key)), columns=["sample_id", "video_id"]).to_pylist())
    return rows, manifest


def _records(client, bucket: str, prefix: str) -> int:
    objs = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/runs/").get("Contents", [])
    return sum("/_videos/" in o["Key"] for o in objs)


def _staged_actor_nodes(cluster: Cluster) -> dict[str, set[str]]:
    """Stage name -> ids of the nodes its actors ran on (alive or dead), from the state API."""
    from ray.util.state import list_actors

    out: dict[str, set[str]] = {}
    for actor in list_actors(address=cluster.address, limit=10000, detail=True,
                             raise_on_missing_output=False):
        for stage in ("DecodeStage", "PoseStage", "BuildTasksStage", "ShardWriterStage"):
            if f"({stage})" in (actor.repr_name or "") or f"({stage})" in (actor.class_name or ""):
                out.setdefault(stage, set()).add(actor.node_id)
    return out


def test_multinode_placement_node_loss_and_resume(cluster, moto_s3, clips_dir, tmp_path):
    endpoint, s3 = moto_s3
    for bucket in ("videos", "datasets"):
        s3.create_bucket(Bucket=bucket)
    local_in = tmp_path / "clips"
    local_in.mkdir()
    for name in CLIPS:
        shutil.copy(clips_dir / name, local_in / name)
        s3.upload_file(str(local_in / name), "videos", f"clips/{name}")
    config = frozen_config(tmp_path / "config")
    sets = _settings(endpoint)

    # The single-node reference: the same config on this process's local Ray, which has no
    # custom resources (they are not part of the config hash: the rows are the same).
    assert run_cli(config, "--input", str(local_in), "--output", str(tmp_path / "ref"),
                   *_settings(endpoint, custom=False)) == 0
    ref_rows, _, _ = read_run(latest_run(tmp_path / "ref"))
    ref_ids = {r["sample_id"] for r in ref_rows}
    assert ref_ids

    # 0. A local output on a cluster of several nodes: refused with one line (exit 2), unless
    #    ray.shared_paths says every node mounts it.
    args = ["--config", str(config), "--input", "s3://videos/clips", *sets]
    proc = cluster.submit(*args, "--output", str(tmp_path / "node-local"), timeout=300)
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exit code 2" in logs, logs[-3000:]
    # (`ray job submit` prints the job's last lines again when it fails: count distinct lines)
    errors = sorted({ln for ln in logs.splitlines() if ln.startswith("proxyqa: error:")})
    assert len(errors) == 1 and "ray.shared_paths" in errors[0] and "several nodes" in errors[0]
    assert not (tmp_path / "node-local").exists()

    # 1. Placement: every stage's actors only on nodes carrying its resources.
    proc = cluster.submit(*args, "--output", "s3://datasets/a",
                          "--set", "write.commit_on_workers_min_files=1")  # compaction: Ray tasks
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows, manifest = _s3_rows(s3, "datasets", "a")
    assert {r["sample_id"] for r in rows} == ref_ids
    assert_no_duplicates(rows)
    nodes = {n.node_id: n.resources_total for n in cluster.nodes()}
    placed = _staged_actor_nodes(cluster)
    assert {"DecodeStage", "PoseStage"} <= set(placed), placed
    for stage, resource in (("DecodeStage", "decode_node"), ("PoseStage", "pose_node")):
        assert all(nodes[n].get(resource) for n in placed[stage]), (stage, placed[stage])
    assert len(placed["PoseStage"]) >= 1

    # 2. The pose-only node dies mid-run: pose goes on on the other node; nothing lost.
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(
        proc=cluster.submit(*args, "--output", "s3://datasets/b")))
    job.start()
    assert wait_for(lambda: _records(s3, "datasets", "b") >= 1, 300, step=0.5)
    cluster.kill("pose")
    job.join(600)
    proc = result["proc"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows, manifest = _s3_rows(s3, "datasets", "b")
    assert {r["sample_id"] for r in rows} == ref_ids
    assert_no_duplicates(rows)
    assert manifest["counts"]["videos_by_status"] == {"ok": len(CLIPS)}

    # 3. The only decode node dies mid-run: exit 3 and one line after the wait, no hang ...
    cluster.add_worker("pose", 2, {"pose_node": 1})
    job = threading.Thread(target=lambda: result.update(
        proc=cluster.submit(*args, "--output", "s3://datasets/c")))
    job.start()
    assert wait_for(lambda: _records(s3, "datasets", "c") >= 1, 300, step=0.5)
    killed_at = time.time()
    cluster.kill("decode")
    job.join(WAIT_S + 240)
    assert not job.is_alive(), "the run hung after its decode node was lost"
    proc = result["proc"]
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exit code 3" in logs, logs[-4000:]
    errors = sorted({ln for ln in logs.splitlines() if ln.startswith("proxyqa: error:")})
    assert len(errors) == 1 and "DecodeStage" in errors[0] and "run the same command" in errors[0]
    assert time.time() - killed_at >= WAIT_S
    # ... and the same command resumes it once a node with decode_node is back.
    cluster.add_worker("decode2", 1, {"decode_node": 1, "pose_node": 1})
    proc = cluster.submit(*args, "--output", "s3://datasets/c")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "resuming" in proc.stdout + proc.stderr
    rows, manifest = _s3_rows(s3, "datasets", "c")
    assert {r["sample_id"] for r in rows} == ref_ids
    assert_no_duplicates(rows)
    assert manifest["resumed"]
