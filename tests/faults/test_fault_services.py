"""Services failing under a run, and the rerun that completes the missing work.

- S3 (a real moto server on 127.0.0.1, input and output on it) stopped mid-run: the run
  stops after bounded retries with a one-line reason and exit code 3, nothing visible as
  complete; once S3 is back the same command resumes it and the dataset equals an
  undisturbed run's, without duplicates.
- The MLLM endpoint down for a whole run (the faults within a run are tests/test_mllm.py's):
  its videos keep their other rows and carry `retry_errors` in the ledger, so an
  `--incremental` rerun processes them again instead of carrying them; with the real vLLM
  server up, that rerun writes their MLLM rows.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from proxyqa.core.storage import read_parquet
from tests.helpers import latest_run, read_run, run_cli
from tests.helpers.faults import FAST, GOOD_CLIPS, baseline, comparable
from tests.helpers.ops import (
    ID_COLUMNS,
    PROXYQA,
    assert_no_duplicates,
    child_env,
    copy_clips,
    free_port,
    frozen_config,
    kill_group,
    run_proxyqa,
    wait_for,
)

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


class Moto:
    """A moto S3 server on a fixed port that can be stopped and started again; its buckets
    live in this process, so they survive the outage."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def moto(monkeypatch):
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    server = Moto()
    server.start()
    yield server
    server.stop()


@pytest.mark.s3
@pytest.mark.ray
@pytest.mark.slow
def test_s3_stopped_mid_run_then_rerun(moto, tmp_path, tmp_path_factory, clips_dir):
    import boto3

    config, base_rows = baseline(tmp_path_factory, clips_dir)
    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    for bucket in ("videos", "datasets"):
        client.create_bucket(Bucket=bucket)
    for name in GOOD_CLIPS:
        client.upload_file(str(clips_dir / name), "videos", f"in/{name}")
    args = ["--config", str(config), "--input", "s3://videos/in", "--output", "s3://datasets/qa",
            "--set", f"s3.endpoint_url={moto.endpoint}", *FAST, "--set", "write.resources.batch_size=1"]

    def records() -> list[dict]:
        return client.list_objects_v2(Bucket="datasets", Prefix="qa/runs/").get("Contents", [])

    proc = subprocess.Popen([PROXYQA, "run", *args], env=child_env(**AWS_ENV), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        first = lambda: any("/_videos/" in o["Key"] for o in records())  # noqa: E731
        assert wait_for(lambda: first() or proc.poll() is not None, timeout=300, step=0.2)
        assert proc.poll() is None, "the run ended before S3 could be stopped"
        moto.stop()
        stopped = time.time()
        proc.wait(timeout=400)
        outage_s = time.time() - stopped
    finally:
        kill_group(proc.pid)
        reader.join(timeout=10)
    output = "".join(log)
    assert proc.returncode == 3, output[-3000:]
    # Ray's workers may still print after it; the reason is one line of its own.
    [last] = [ln for ln in output.splitlines() if ln.startswith("proxyqa: error:")]
    assert last.startswith("proxyqa: error: run ") and "did not complete" in last, last
    assert "Could not connect to the endpoint URL" in last and "resume" in last, last
    assert outage_s < 240, f"retries must be bounded: still running {outage_s:.0f}s after the outage"
    print(f"ended {outage_s:.0f}s after S3 went down: {last}")

    moto.start()
    keys = [o["Key"] for o in records()]
    assert not any(k.endswith("manifest.json") for k in keys), "nothing may look complete"
    assert "Contents" not in client.list_objects_v2(Bucket="datasets", Prefix="qa/latest")
    rerun = run_proxyqa(*args, env=child_env(**AWS_ENV), timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "(resuming, " in rerun.stdout
    latest = client.get_object(Bucket="datasets", Key="qa/latest")["Body"].read().decode().strip()
    rows, manifest, report = read_run(f"s3://datasets/qa/{latest}", endpoint_url=moto.endpoint)
    assert manifest["resumed"] is True
    assert [v["status"] for v in report["videos"]] == ["ok"] * len(GOOD_CLIPS)
    assert_no_duplicates(rows)
    assert {comparable(r) for r in rows} == {comparable(r) for r in base_rows}


# ---- the MLLM endpoint down for a whole run, then an incremental rerun ----------------------

MLLM_ROW_TASKS = ("pose_description", "pose_difference", "synthesized_qa")
MLLM_TASKS = ("--set", f"tasks.enabled=[spatial_grounding,{','.join(MLLM_ROW_TASKS)}]")
TWO_CLIPS = ["kinetics_clean_and_jerk.mp4", "decord_flipping_a_pancake.mkv"]


def _mllm_run(config, folder, out, base_url: str, *extra: str) -> tuple[list[dict], dict, dict]:
    from tests.mllm_server.server import MODEL_NAME  # the real server's model name

    endpoint = [f"mllm.endpoint.base_url={base_url}", f"mllm.endpoint.model={MODEL_NAME}",
                "mllm.endpoint.max_retries=1", "mllm.endpoint.backoff_s=0.1", "mllm.enabled=true"]
    sets = [arg for item in endpoint for arg in ("--set", item)]
    assert run_cli(config, "--input", str(folder), "--output", str(out), *FAST, *MLLM_TASKS,
                   *sets, *extra) == 0
    return read_run(latest_run(out), ID_COLUMNS)


def _mllm_errors(report: dict) -> dict[str, set[str]]:
    return {v["video_id"]: {e["kind"] for e in v["errors"] if e.get("kind", "").startswith("mllm_")}
            for v in report["videos"]}


@pytest.fixture(scope="module")
def mllm_outage(tmp_path_factory, clips_dir):
    """A complete run whose MLLM endpoint was down throughout (nothing listens on the port)."""
    tmp = tmp_path_factory.mktemp("mllm_outage")
    config = frozen_config(tmp / "config")
    folder = copy_clips(clips_dir, tmp / "in", TWO_CLIPS)
    out = tmp / "out"
    rows, manifest, report = _mllm_run(config, folder, out, f"http://127.0.0.1:{free_port()}/v1")
    return config, folder, out, rows, manifest, report


@pytest.mark.ray
def test_videos_hit_by_an_mllm_outage_are_processed_again(mllm_outage, tmp_path):
    config, folder, first_out, rows, manifest, report = mllm_outage
    assert manifest["complete"] and {v["status"] for v in report["videos"]} == {"ok"}
    assert all(kinds == {"mllm_unreachable"} for kinds in _mllm_errors(report).values())
    assert [r for r in rows if r["task"] == "spatial_grounding"]       # the rest of each video
    ledger = read_parquet(str(first_out / manifest["ledger"])).to_pylist()
    assert {tuple(e["retry_errors"]) for e in ledger} == {("mllm_unreachable",)}

    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    rows2, manifest2, report2 = _mllm_run(config, folder, out, f"http://127.0.0.1:{free_port()}/v1",
                                          "--incremental")
    assert manifest2["mode"] == "incremental" and manifest2["base_run_id"] == manifest["run_id"]
    assert report2["counts"]["videos_processed"] == len(TWO_CLIPS)
    assert report2["counts"]["videos_carried"] == 0
    assert {r["sample_id"] for r in rows2} == {r["sample_id"] for r in rows}
    assert_no_duplicates(rows2)


@pytest.mark.ray
@pytest.mark.vllm
def test_incremental_rerun_with_the_server_back_completes_the_mllm_rows(mllm_outage, tmp_path,
                                                                        vllm_server):
    config, folder, first_out, rows, manifest, _ = mllm_outage
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    rows2, manifest2, report2 = _mllm_run(config, folder, out, vllm_server.base_url, "--incremental")
    assert manifest2["config_hash"] == manifest["config_hash"]
    assert report2["counts"]["videos_processed"] == len(TWO_CLIPS)
    outage = {"mllm_unreachable", "mllm_timeout"}
    assert not any(kinds & outage for kinds in _mllm_errors(report2).values())
    assert [r for r in rows2 if r["task"] in MLLM_ROW_TASKS]
    # The rows the outage did not touch are the same rows; nothing is listed twice.
    assert {r["sample_id"] for r in rows} <= {r["sample_id"] for r in rows2}
    assert_no_duplicates(rows2)
    # Complete now: the next nightly carries both videos.
    _, _, report3 = _mllm_run(config, folder, out, vllm_server.base_url, "--incremental")
    assert report3["counts"]["videos_processed"] == 0
    assert report3["counts"]["videos_carried"] == len(TWO_CLIPS)
