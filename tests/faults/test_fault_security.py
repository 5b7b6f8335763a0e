"""Security: planted secrets never reach logs or outputs; YAML is loaded safely; output
paths come from ids, never from input names or a crafted run id."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from proxyqa.core.config import ConfigError, load_config
from proxyqa.pipeline.cli import main
from tests.helpers import REPO, read_videos
from tests.helpers.faults import FAST, scan_for
from tests.helpers.ops import PROXYQA, child_env, frozen_config, kill_group

# Distinct, greppable values: one per place a credential can come from.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAULTTEST7Q2W9E4R",
    "AWS_SECRET_ACCESS_KEY": "fault-aws-secret-9f3c2b7d1e",
    "OPENAI_API_KEY": "sk-fault-env-key-4c8a0f",
    "mllm.endpoint.api_key": "sk-fault-config-key-77d1e3",
    "s3.key": "AKIAFAULTCONFIG5T6Y7U",
    "s3.secret": "fault-s3-config-secret-5e8b21",
}


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.ray
@pytest.mark.s3
def test_planted_secrets_never_reach_logs_or_outputs(tmp_path, clips_dir):
    """A real run with every credential planted: output to S3 (moto, which takes any keys)
    with keys from the config, the MLLM enabled with an API key (its endpoint down, so its
    error path runs too). Stdout, stderr, every object written and the Ray session logs
    are scanned byte by byte."""
    import boto3
    from moto.server import ThreadedMotoServer

    ray_logs = Path(tempfile.mkdtemp(prefix="rq", dir="/tmp"))  # short: Ray's socket paths
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket="out")
        config = frozen_config(tmp_path / "config")
        tree = yaml.safe_load(config.read_text())
        tree.setdefault("mllm", {})["enabled"] = True
        tree["mllm"]["endpoint"] = {"api_key": SECRETS["mllm.endpoint.api_key"], "max_retries": 0,
                                    "base_url": "http://127.0.0.1:9/v1"}   # discard port: refused
        tree["s3"] = {"endpoint_url": endpoint, "key": SECRETS["s3.key"], "secret": SECRETS["s3.secret"]}
        tree.setdefault("tasks", {})["enabled"] = ["spatial_grounding", "pose_description"]
        config.write_text(yaml.safe_dump(tree))
        folder = tmp_path / "in"
        folder.mkdir()
        shutil.copy(clips_dir / "kinetics_ta_chi.mp4", folder / "clip.mp4")
        env = child_env(**{k: v for k, v in SECRETS.items() if k.isupper()},
                        AWS_DEFAULT_REGION="us-east-1", RAY_TMPDIR=str(ray_logs))
        proc = subprocess.Popen([PROXYQA, "run", "--config", str(config), "--input", str(folder),
                                 "--output", "s3://out/qa", *FAST], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=400)
        finally:
            kill_group(proc.pid)
        assert proc.returncode == 0, (stdout + stderr)[-3000:].decode(errors="replace")
        objects = tmp_path / "objects"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
        for obj in s3.list_objects_v2(Bucket="out").get("Contents", []):
            dest = objects / obj["Key"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(s3.get_object(Bucket="out", Key=obj["Key"])["Body"].read())
    finally:
        server.stop()
    names = {str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file()}
    assert any(n.endswith("manifest.json") for n in names) and any("/data/" in n for n in names)
    assert any(n.endswith("report.json") for n in names) and any(n.startswith("qa/ledger/") for n in names)
    report = next(objects.glob("qa/runs/*/report.json")).read_text()
    assert "mllm_unreachable" in report      # the API key was really used (and failed)
    try:
        assert any(ray_logs.rglob("*.log")), "the run's Ray session logs were not found"
        for name, secret in SECRETS.items():
            token = secret.encode()
            assert token not in stdout and token not in stderr, f"{name} in the CLI output"
            assert not scan_for(token, objects), f"{name} in {scan_for(token, objects)}"
            assert not scan_for(token, ray_logs), f"{name} in {scan_for(token, ray_logs)[:3]}"
    finally:
        shutil.rmtree(ray_logs, ignore_errors=True)


def test_yaml_is_loaded_safely(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"input: {tmp_path}\nrun_id: {payload}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    assert main(["run", "--config", str(bad), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().startswith("proxyqa: error: config")
    # A --set value is YAML too: the same loader, the same one-line error.
    for value in (payload, "!!python/name:os.system", "!!python/object/new:os.system [x]"):
        with pytest.raises(ConfigError, match="--set run_id: value is not valid YAML"):
            load_config(None, [f"run_id={value}"])
    good = tmp_path / "good.yaml"
    good.write_text(f"input: {tmp_path}\n")
    assert main(["run", "--config", str(good), "--set", f"run_id={payload}"]) == 2
    assert capsys.readouterr().err.strip().startswith("proxyqa: error: --set run_id:")
    assert not marker.exists()


def test_secrets_stay_out_of_config_errors(tmp_path):
    """A config error names the key, never the value given for it."""
    secret = SECRETS["mllm.endpoint.api_key"]
    proc = subprocess.run([sys.executable, "-m", "proxyqa.pipeline.cli", "run", "--config",
                           str(REPO / "configs" / "local.yaml"), "--input", str(tmp_path),
                           "--set", f"mllm.endpoint.api_key=[{secret}]"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert "mllm.endpoint.api_key" in proc.stderr and secret not in proc.stderr + proc.stdout


HOSTILE_NAMES = ["..\\..\\evil one.mp4", "%2e%2e%2fevil.mp4", "-rf evil.mp4", "$(touch evil).mp4",
                 "evil\nnewline.mp4", ".hidden evil.mp4"]
OUTPUT_FILES = re.compile(
    r"latest|ledger/[\w.-]+\.parquet|runs/[\w.-]+/(manifest\.json|report\.json|report\.parquet|"
    r"_run\.json|README\.md|_videos/part-[0-9a-f]{20}\.parquet|"
    r"data/[a-z_]+/(train|validation|test)-[0-9a-f]{20}\.parquet)")


@pytest.mark.ray
def test_output_paths_come_from_ids_not_input_names(tmp_path, clips_dir):
    from tests.helpers import run_cli

    folder = tmp_path / "in"
    folder.mkdir()
    for name in HOSTILE_NAMES:
        shutil.copy(clips_dir / "kinetics_ta_chi.mp4", folder / name)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(clips_dir / "decord_flipping_a_pancake.mkv", tmp_path / "elsewhere" / "evil.mkv")
    # A manifest may name files anywhere, '..' included (JSON lines: any name can be written).
    listed = [str(folder / n) for n in HOSTILE_NAMES] + [f"{folder}/../elsewhere/evil.mkv"]
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps({"uri": uri}) + "\n" for uri in listed))
    before = _tree(tmp_path)
    config = frozen_config(tmp_path.parent / f"{tmp_path.name}_config")
    out = tmp_path / "out"
    no_pose = ("--set", "pose.backend=none")   # paths are the point here, not people
    assert run_cli(config, "--input", str(manifest), "--output", str(out), *FAST, *no_pose) == 0
    report = {"videos": read_videos(next(out.glob("runs/*/report.json")).parent)}
    assert sorted(os.path.normpath(v["uri"]) for v in report["videos"]) == \
        sorted(os.path.normpath(u) for u in listed)
    assert {v["status"] for v in report["videos"]} == {"ok"}
    written = _tree(tmp_path) - before
    assert all(p == "out" or p.startswith("out" + os.sep) for p in written), written
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    assert files and all(OUTPUT_FILES.fullmatch(f) for f in files), \
        [f for f in files if not OUTPUT_FILES.fullmatch(f)]
    assert not [f for f in files if "evil" in f]
    assert not (folder / "evil").exists() and not (Path.cwd() / "evil").exists()
    # A crafted run id cannot point outside OUT/runs either: refused before anything is written.
    for bad in ("../../escaped", "a/b", ".."):
        assert run_cli(config, "--input", str(manifest), "--output", str(out), "--run-id", bad) == 2
        assert run_cli(config, "--input", str(manifest), "--output", str(out),
                       "--set", f"run_id={bad}") == 2
    assert _tree(tmp_path) - before == written
