"""notebooks/explore.ipynb runs top to bottom against a real run and shows images."""
from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from tests.helpers import REPO, read_run

NOTEBOOK = REPO / "notebooks" / "explore.ipynb"


def test_explore_notebook_executes_with_images(small_run, monkeypatch, tmp_path):
    rows, _, _ = read_run(small_run)
    tasks = sorted({r["task"] for r in rows})
    monkeypatch.setenv("PROXYQA_RUN", str(small_run.parent.parent))   # output root -> latest
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored clean
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    nbformat.write(nb, tmp_path / "explore.executed.ipynb")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= len(tasks)                     # at least one figure per task
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert str(small_run) in text                         # it opened the run it was given
    for task in tasks:
        assert f"### {task}" in text
    assert text.count("<image>") >= 1                     # the chat-format preview ran
