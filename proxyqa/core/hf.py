"""The run folder's README.md: a Hugging Face dataset card whose `configs:` front matter
lists, per task, the Parquet files of each split, so that

    datasets.load_dataset(RUN_DIR, "spatial_grounding", split="train")

works offline. Paths are relative to the run folder; an incremental run's carried shards
are '../<run_id>/data/...' (the datasets library resolves them). manifest.json stays the
source of truth; this file is derived from it at commit.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import yaml

from proxyqa.core.schema import SPLITS


def hf_readme(run_id: str, shards: Iterable[dict], body: str = "") -> str:
    """README.md text. `shards`: dicts with `path` (relative to the run), `task`, `split`."""
    files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for s in shards:
        if s.get("split") in SPLITS:
            files[s["task"]][s["split"]].append(s["path"])
    configs = []
    for task in sorted(files):
        configs.append({
            "config_name": task,
            "data_files": [{"split": split, "path": sorted(files[task][split])}
                           for split in SPLITS if files[task].get(split)],
        })
    front = yaml.safe_dump({"configs": configs, "tags": ["proxyqa", "video", "pose"]},
                           sort_keys=False, width=1000)
    tasks = ", ".join(f"`{t}`" for t in sorted(files)) or "none"
    text = [
        "---", front.rstrip(), "---",
        f"# proxyqa run `{run_id}`", "",
        "Proxy QA rows for video MLLMs (schema: docs/schema.md of the proxyqa repository).",
        f"One config per task ({tasks}); splits train / validation / test are assigned per "
        "group of near-duplicate videos, so no clip (or re-encoded, resized or trimmed copy of "
        "it) is on two sides.", "",
        "```python",
        "import datasets",
        f'ds = datasets.load_dataset("path/to/runs/{run_id}", "<task>", split="train")',
        "```", "",
        "`manifest.json` lists every file of the dataset; `report.json` says what happened to "
        "each input video.", "",
    ]
    if body:
        text += [body, ""]
    return "\n".join(text)
