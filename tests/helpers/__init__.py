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


def read_run(run: Path | str, columns: list[str] | None = None,
             endpoint_url: str | None = None) -> tuple[list[dict], dict, dict]:
    """(rows, manifest, report) of a finished run, read with plain pyarrow and fsspec (not
    with the reader under test). `run` is a run folder, local or `s3://bucket/...` (then
    `endpoint_url` names the S3 server); `columns` limits what is read."""
    import posixpath

    import fsspec

    from proxyqa.core.storage import read_parquet

    uri = str(run)
    fs = (fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint_url}, skip_instance_cache=True)
          if uri.startswith("s3://") else fsspec.filesystem("file"))
    root = uri[len("s3://"):] if uri.startswith("s3://") else uri
    manifest = json.loads(fs.cat_file(posixpath.join(root, "manifest.json")))
    report = json.loads(fs.cat_file(posixpath.join(root, "report.json")))
    report["videos"] = _videos(fs, root, report)
    rows = []
    for shard in manifest["shards"]:
        with fs.open(posixpath.normpath(posixpath.join(root, shard["path"])), "rb") as f:
            rows.extend(read_parquet(f, columns).to_pylist())
    return rows, manifest, report


def _videos(fs, root: str, report: dict) -> list[dict]:
    """The per-video report: report.parquet (one row per listed video) or, for runs made
    before it existed, report.json's own list. JSON columns decoded as `rows` / `errors`."""
    import posixpath

    from proxyqa.core.storage import read_parquet

    if "videos_file" not in report:
        return report.get("videos", [])
    with fs.open(posixpath.join(root, report["videos_file"]), "rb") as f:
        videos = read_parquet(f).to_pylist()
    for video in videos:
        video["rows"] = json.loads(video.pop("rows_json") or "{}")
        video["errors"] = json.loads(video.pop("errors_json") or "[]")
        if video.get("carried_from") is None:
            video.pop("carried_from", None)
    return videos


def read_videos(run_dir: Path | str, endpoint_url: str | None = None) -> list[dict]:
    """The per-video report of a finished run (see read_run)."""
    return read_run(run_dir, columns=["sample_id"], endpoint_url=endpoint_url)[2]["videos"]


def latest_run(output: Path) -> Path:
    return output / (output / "latest").read_text().strip()


# The default temporal_order threshold (0.5 torso lengths per step, docs/label_quality.md)
# leaves no temporal rows on the short shared clips. Tests of the plumbing (reading,
# splitting, chat formats) need some, so their runs lower it to 0.3, where tai chi gives two.
PLUMBING_TEMPORAL = ("--set", "tasks.temporal_order.min_pose_motion=0.3")
