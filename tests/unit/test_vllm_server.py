"""Engine mode's server replica (proxyqa/models/vllm_server.py) without Ray or a GPU: the
command it runs, and the one-line error of a server that cannot start (a real process:
the main venv's python has no vLLM, so `-m vllm...` exits at once). Real replicas serving a
real run: tests/integration/test_mllm.py."""
from __future__ import annotations

import json
import sys
import time

import pytest

from proxyqa.core.config import load_config
from proxyqa.models.vllm_server import ModelServer, cli_args


def _engine(*sets: str):
    return load_config(None, ["mllm.engine.model_source=/weights/qwen", *sets]).mllm.engine


def test_engine_kwargs_become_server_flags():
    assert cli_args({"max_num_seqs": 32, "enforce_eager": True, "trust_remote_code": False,
                     "quantization": None, "limit_mm_per_prompt": {"image": 2}}) == [
        "--max-num-seqs", "32", "--enforce-eager", "--limit-mm-per-prompt", '{"image": 2}']


def test_command_serves_the_weights_under_their_path():
    server = ModelServer(_engine("mllm.engine.tensor_parallel_size=2",
                                 "mllm.engine.engine_kwargs={gpu_memory_utilization: 0.85}"),
                         "127.0.0.1")
    cmd = server.command()
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert flags["--model"] == flags["--served-model-name"] == "/weights/qwen"
    assert flags["--host"] == "127.0.0.1" and int(flags["--port"]) == server.port
    assert flags["--tensor-parallel-size"] == "2" and flags["--gpu-memory-utilization"] == "0.85"
    assert json.loads(flags["--limit-mm-per-prompt"]) == {"image": 4}
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"


def test_a_server_that_cannot_start_fails_fast_in_one_line():
    server = ModelServer(_engine("mllm.engine.startup_timeout_s=120"), "127.0.0.1")
    started = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        server.start()
    assert time.monotonic() - started < 60          # not the whole startup timeout
    message = str(err.value)
    assert "\n" not in message and "exited with 1 while starting" in message
    assert "No module named 'vllm'" in message and server.log_path in message
    assert server.proc is not None and server.proc.poll() == 1
