"""S3 in and out against a real S3 endpoint: moto's server on 127.0.0.1, started here.

Credentials come from the standard AWS chain (environment variables here). `proxyqa run`
runs as a subprocess so that its local Ray workers inherit that environment, exactly as a
cluster's workers inherit theirs.
"""
from __future__ import annotations

import pytest

from tests.helpers import latest_run, read_run
from tests.helpers.ops import AWS_ENV, QUIET, assert_no_duplicates, child_env, frozen_config, moto_s3_server, run_proxyqa

pytestmark = pytest.mark.s3



@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for bucket in ("videos", "datasets"):
        client.create_bucket(Bucket=bucket)
    return client


def _cfg(endpoint):
    from proxyqa.core.config import load_config

    return load_config(None, [f"s3.endpoint_url={endpoint}"])


def _upload(s3, folder, prefix: str) -> list[str]:
    keys = []
    for path in sorted(folder.iterdir()):
        key = f"{prefix}/{path.name}"
        s3.upload_file(str(path), "videos", key)
        keys.append(key)
    return keys


def test_listing_an_s3_prefix(s3, s3_endpoint, small_input):
    from proxyqa.pipeline.sources import list_videos

    keys = _upload(s3, small_input, "listing")
    s3.put_object(Bucket="videos", Key="listing/notes.txt", Body=b"not a video")
    cfg = _cfg(s3_endpoint)
    recs = list_videos(cfg, "s3://videos/listing")
    assert [r["video_uri"] for r in recs] == [f"s3://videos/{k}" for k in keys]
    sizes = {p.name: p.stat().st_size for p in small_input.iterdir()}
    for rec in recs:
        assert rec["status"] is None and rec["size_bytes"] == sizes[rec["video_uri"].rsplit("/", 1)[1]]
        assert rec["mtime"]  # the ETag
    # Stable across listings; a rewritten object with other bytes gets a new video_id.
    assert [r["video_id"] for r in list_videos(cfg, "s3://videos/listing")] == [r["video_id"] for r in recs]
    s3.put_object(Bucket="videos", Key=keys[0], Body=(small_input / keys[1].rsplit("/", 1)[1]).read_bytes())
    again = {r["video_uri"]: r["video_id"] for r in list_videos(cfg, "s3://videos/listing")}
    assert again[f"s3://videos/{keys[0]}"] != recs[0]["video_id"]
    assert again[f"s3://videos/{keys[1]}"] == recs[1]["video_id"]


@pytest.mark.ray
def test_s3_to_s3_run_matches_local_run(s3, s3_endpoint, small_input, tmp_path):
    """Same clips, same config: the S3 run yields the local run's sample_ids exactly."""
    _upload(s3, small_input, "clips")
    config = frozen_config(tmp_path)
    local_out = tmp_path / "local"
    env = child_env(**AWS_ENV)
    # Both runs in their own process with the same environment (thread counts, Ray's own
    # local cluster): what differs is only where the videos and the output are.
    local = run_proxyqa("--config", str(config), "--input", str(small_input), "--output",
                        str(local_out), *QUIET, env=env)
    assert local.returncode == 0, local.stdout[-3000:]
    local_rows, local_manifest, _ = read_run(latest_run(local_out))
    args = ["--config", str(config), "--input", "s3://videos/clips", "--output", "s3://datasets/qa",
            "--set", f"s3.endpoint_url={s3_endpoint}", *QUIET]
    proc = run_proxyqa(*args, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    run_prefix = s3.get_object(Bucket="datasets", Key="qa/latest")["Body"].read().decode().strip()
    rows, manifest, report = read_run(f"s3://datasets/qa/{run_prefix}", ["sample_id", "video_id", "video_uri"], s3_endpoint)

    assert manifest["config_hash"] == local_manifest["config_hash"]
    assert sorted(v["uri"].rsplit("/", 1)[1] for v in report["videos"]) == sorted(p.name for p in small_input.iterdir())
    assert {r["sample_id"] for r in rows} == {r["sample_id"] for r in local_rows}
    assert_no_duplicates(rows)
    assert all(r["video_uri"].startswith("s3://videos/clips/") for r in rows)
    assert all(v["status"] == "ok" and v["uri"].startswith("s3://") for v in report["videos"])
    ledger_key = f"qa/{manifest['ledger']}"
    assert s3.head_object(Bucket="datasets", Key=ledger_key)["ContentLength"] > 0

    # Nightly on S3: nothing new -> nothing processed; the dataset is the same rows. This
    # time with explicit keys in the config (moto takes any): they never reach the outputs.
    secret = "Sup3rSecretValue"
    proc = run_proxyqa(*args, "--incremental", "--set", "s3.key=AKIDEXAMPLE",
                       "--set", f"s3.secret={secret}", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 to process" in proc.stdout and secret not in proc.stdout
    run2 = s3.get_object(Bucket="datasets", Key="qa/latest")["Body"].read().decode().strip()
    assert run2 != run_prefix
    rows2, manifest2, report2 = read_run(f"s3://datasets/qa/{run2}", ["sample_id", "video_id", "video_uri"], s3_endpoint)
    assert report2["counts"]["videos_processed"] == 0
    assert {v["status"] for v in report2["videos"]} == {"skipped"}
    assert {r["sample_id"] for r in rows2} == {r["sample_id"] for r in rows}
    for name in ("manifest.json", "report.json", "_run.json"):
        body = s3.get_object(Bucket="datasets", Key=f"qa/{run2}/{name}")["Body"].read().decode()
        assert secret not in body and "AKIDEXAMPLE" not in body

    # A video removed from the bucket leaves the dataset (its rows shared shard files with
    # the others': those are copied, filtered, on S3). Nothing needs processing.
    gone = "s3://videos/clips/kinetics_ta_chi.mp4"
    s3.delete_object(Bucket="videos", Key="clips/kinetics_ta_chi.mp4")
    proc = run_proxyqa(*args, "--incremental", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    run3 = s3.get_object(Bucket="datasets", Key="qa/latest")["Body"].read().decode().strip()
    rows3, manifest3, report3 = read_run(f"s3://datasets/qa/{run3}", ["sample_id", "video_id", "video_uri"], s3_endpoint)
    assert report3["counts"]["videos"] == 2 and report3["counts"]["videos_processed"] == 0
    assert {r["sample_id"] for r in rows3} == {r["sample_id"] for r in rows if r["video_uri"] != gone}
    assert_no_duplicates(rows3)


def test_missing_output_bucket_is_a_one_line_error(s3, s3_endpoint, small_input, tmp_path):
    config = frozen_config(tmp_path)
    proc = run_proxyqa("--config", str(config), "--input", str(small_input),
                       "--output", "s3://no-such-bucket/qa", "--set", f"s3.endpoint_url={s3_endpoint}",
                       env=child_env(**AWS_ENV), timeout=120)
    assert proc.returncode == 2
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("proxyqa: error: output s3://no-such-bucket/qa is not usable")
    assert "no-such-bucket does not exist" in last
