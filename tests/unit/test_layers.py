"""The layer contract holds on the tree and fails on a deliberate back-import, and the
installed namespace has no top-level `pipeline` or `stages` module."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

CHECK = REPO / "scripts" / "check_layers.py"


def _copy_tree(dest):
    for name in ("proxyqa", "pipeline", "stages"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / name, dest / name)
    return dest


def _check(src) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), "--src", str(src)], capture_output=True,
                          text=True, timeout=300)


def test_the_tree_keeps_every_layer_contract():
    proc = _check(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("proxyqa/core/schema.py", "from proxyqa.pipeline import plan", "layers"),
    ("stages/decode.py", "import proxyqa.pipeline.run", "layers"),
    ("proxyqa/models/yolo_pose.py", "from proxyqa.stages import posecodes", "layers"),
    ("proxyqa/trainer/reader.py", "from proxyqa.stages import sampling", "the trainer side imports only the core"),
    ("proxyqa/trainer/messages.py", "import cv2", "heavy dependencies"),
    ("stages/pose.py", "import ray", "only the Ray executor"),
])
def test_a_back_import_breaks_the_contract(tmp_path, module, line, contract):
    src = _copy_tree(tmp_path)
    path = src / module
    path.write_text(path.read_text() + f"\n{line}  # deliberate back-import\n")
    proc = _check(src)
    assert proc.returncode != 0, f"{module}: `{line}` was not caught"
    broken = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), proc.stdout[-3000:]


def test_no_top_level_pipeline_or_stages_module(tmp_path):
    code = ("import importlib, sys\n"
            "import proxyqa.pipeline.plan, proxyqa.stages.pose, proxyqa.trainer.reader\n"
            "for name in ('pipeline', 'stages'):\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        continue\n"
            "    sys.exit(f'{name} is importable')\n")
    # From outside the repo (what a trainer's process sees) and from its root (where the
    # folders are on sys.path: their __init__ refuses the top-level name).
    for cwd in (tmp_path, REPO):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
        assert proc.returncode == 0, (cwd, proc.stdout + proc.stderr)
