"""The trainer side installs without the pipeline: a fresh venv with only `pip install .`
(pyarrow, pydantic, pyyaml, fsspec, numpy) reads a real run with RunDataset and turns its
rows into chat messages, and none of Ray, decord, OpenCV, mediapipe or torch is there."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO

HEAVY = ("ray", "decord", "cv2", "mediapipe", "ultralytics", "torch", "openai", "vllm", "scipy")

READ = textwrap.dedent("""
    import importlib.util, json, sys
    from proxyqa.trainer.reader import RunDataset
    from proxyqa.trainer.messages import to_messages
    from proxyqa.trainer.card import run_stats

    heavy = [m for m in {heavy!r} if importlib.util.find_spec(m) is not None]
    rows = list(RunDataset(sys.argv[1], shuffle=False))
    chats = [to_messages(r, style) for r in rows for style in ("qwen2_5_vl", "llava", "openai")]
    stats = run_stats(sys.argv[1])
    print(json.dumps({{"heavy": heavy, "rows": len(rows), "chats": len(chats),
                      "tasks": sorted({{r["task"] for r in rows}}), "stats": sorted(stats["rows_by_task"]),
                      "first": chats[0]}}))
""")


@pytest.mark.slow
def test_reader_only_venv_reads_a_real_run(tmp_path, small_run):
    venv = tmp_path / "trainer-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # A wheel of the checkout (not editable): what `pip install proxyqa` gives a trainer.
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(REPO)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    script = READ.format(heavy=HEAVY)
    proc = subprocess.run([str(py), "-c", script, str(small_run)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [], f"the trainer install pulled in {out['heavy']}"
    assert out["rows"] > 0 and out["chats"] == 3 * out["rows"]
    assert {"temporal_order", "spatial_grounding"} <= set(out["tasks"]) == set(out["stats"])
    first = out["first"]
    assert [m["role"] for m in first] == ["user", "assistant"]
