"""What tests share: where the repo and the shared data are, running `proxyqa run`
in-process, and reading a finished run (the one helper that does)."""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("PROXYQA_SHARED", REPO.parent / "shared")).resolve()
CLIPS = SHARED / "data" / "clips"
COCO = SHARED / "data" / "coco_pose"
LOCAL_CONFIG = REPO / "configs" / "local.yaml"


def run_cli(config: str | Path, *args: str) -> int:
    """Runs `proxyqa run` in-process (one Ray instance serves the whole test session)."""
    from proxyqa.pipeline.cli import main

    return main(["run", "--config", str(config), *args])


def read_run(run_dir: Path) -> tuple[list[dict], dict, dict]:
    """(rows, manifest, report) of a finished run, read with plain pyarrow."""
    import pyarrow.parquet as pq

    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    report["videos"] = read_videos(run_dir)
    rows = []
    for shard in manifest["shards"]:
        rows.extend(pq.read_table(run_dir / shard["path"]).to_pylist())
    return rows, manifest, report


def read_videos(run_dir: Path | str, s3=None) -> list[dict]:
    """The per-video report (report.parquet) as dicts: uri, video_id, status, reason, rows,
    errors and, for carried videos, carried_from."""
    from proxyqa.trainer.reader import read_report

    return read_report(str(run_dir), s3)


def latest_run(output: Path) -> Path:
    return output / (output / "latest").read_text().strip()
