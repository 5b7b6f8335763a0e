"""One vLLM OpenAI-compatible server (`vllm.entrypoints.openai.api_server`) as a subprocess.

Engine mode (mllm.mode=engine) starts `mllm.engine.concurrency` of these inside the job,
one per replica, and every MLLM pass of every MLLM worker talks to them: the model is
loaded once per replica, not once per pass (pipeline/graph.py `served_engine` places them
as Ray actors on GPU nodes; a plain process can use this class directly). Plain Python, no
Ray: the Ray actor is a thin wrapper.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Optional

from proxyqa.core.config import EngineConfig

# vLLM's own telemetry off; the Hub is reached only when model_source is a Hub id and
# HF_HUB_OFFLINE is not set by the node (clusters/ pre-stage the weights and set it).
QUIET_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cli_args(kwargs: Mapping[str, Any]) -> list[str]:
    """engine_kwargs -> vLLM server flags: {max_num_seqs: 4} -> --max-num-seqs 4; True ->
    a bare flag; False/None -> left out; dicts and lists -> JSON (vLLM parses those)."""
    args: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (dict, list)):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


class ModelServer:
    """A vLLM server serving `cfg.model_source` under that name, on `host`.

    start() returns the base URL once the server answers /v1/models (loading a 7B model
    takes minutes: `cfg.startup_timeout_s`); stop() ends its whole process group."""

    def __init__(self, cfg: EngineConfig, host: str):
        self.cfg, self.host = cfg, host
        self.port = free_port(host)
        self.base_url = f"http://{host}:{self.port}/v1"
        self.log_path = ""
        self.proc: Optional[subprocess.Popen] = None

    def command(self) -> list[str]:
        cfg = self.cfg
        return [cfg.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", cfg.model_source, "--served-model-name", cfg.model_source,
                "--host", self.host, "--port", str(self.port),
                "--max-model-len", str(cfg.max_model_len),
                "--tensor-parallel-size", str(cfg.tensor_parallel_size),
                "--limit-mm-per-prompt", json.dumps({"image": 4}),
                *cli_args(cfg.engine_kwargs)]

    def start(self) -> str:
        env = {**os.environ, **QUIET_ENV, **self.cfg.env}
        fd, self.log_path = tempfile.mkstemp(prefix=f"proxyqa-vllm-{self.port}-", suffix=".log")
        os.close(fd)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                # Its own process group, so stop() reaches vLLM's engine processes too; and
                # a SIGTERM if this process dies first (a killed Ray actor), so no server
                # outlives the job holding a GPU.
                start_new_session=True, preexec_fn=_term_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        assert self.proc is not None
        wait_until_serving(self.proc, self.base_url, self.cfg.startup_timeout_s,
                           f"the vLLM server for {self.cfg.model_source}", self._last_words)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return "\n".join(fh.read().splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def _last_words(self) -> str:
        """The log's last line (usually the error) and where the whole log is."""
        tail = [ln.strip() for ln in self.log_tail(200).splitlines() if ln.strip()]
        return f"{tail[-1][:300] if tail else 'no output'}; log: {self.log_path}"

    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after `timeout_s`."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=timeout_s)
                if sig == signal.SIGTERM:
                    # the api_server has exited; its engine processes may linger a moment
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                continue


def wait_until_serving(proc: subprocess.Popen, base_url: str, timeout_s: float, what: str,
                       last_words: Callable[[], str]) -> None:
    """Returns once `base_url`/models answers 200; RuntimeError (one line, with
    `last_words()`) if the process exits first, TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting "
                               f"({last_words()})")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{what} did not answer within {timeout_s:.0f}s ({last_words()})")


def _term_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
