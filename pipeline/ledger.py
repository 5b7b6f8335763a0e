"""The ledger: which videos are done under which config, and which shard files hold their rows.

OUT/ledger/<run_id>.parquet is a snapshot that run <run_id> writes at commit, just before
its manifest.json: one row per video the run listed, with the config_hash it was processed
under, its status, and the shard files (relative to OUT) holding its rows in that run's
dataset. A snapshot counts only once its run is complete (has manifest.json); the next
incremental run reads the snapshot of the run OUT/latest points at.

Incremental semantics (`proxyqa run --incremental`):
- A listed video is *carried* (not processed again) when the base snapshot has it under
  the same video_id (same URI, size, mtime/ETag) and the same config_hash, its status was
  ok or skipped (failed videos are retried), it had no transient task error (`retry_errors`:
  the MLLM endpoint was down, slow or overloaded, so some of its rows are missing), and its
  shard files still exist. Identical
  clips at several URIs (same content_id) share sample_ids, so their rows may sit under one
  of them: such a group is carried only if every member is. When this run processes a
  clip identical to a carried one, this run's rows are kept and the carried copy dropped.
- Everything else is processed: new videos, changed files (a new video_id; the old id is
  no longer listed, so its rows leave the dataset), videos done under another config.
- The run's manifest lists the full current dataset: its own shards plus the carried
  videos' shards of earlier runs (paths `../<run_id>/data/<task>/<split>-*.parquet`, relative to
  the run folder). A carried shard that also holds rows of videos that are not carried is
  not listed; a filtered copy with only the carried rows is written into this run instead
  (`data/<t>/carried-<digest>.parquet`), so every listed file is read whole.
- Carried rows are not rewritten: their `run_id` column names the run that generated them.
  The manifest's `depends_on_runs` lists the earlier runs whose folders it reads; keep
  those when deleting old runs.
- One run at a time per output (the nightly CronJob forbids overlap).
"""
from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from proxyqa.core.layout import LATEST, LEDGER_DIR, MANIFEST, run_key, task_dir, task_of_key
from proxyqa.core.storage import fresh, read_parquet, write_bytes_atomic
from proxyqa.stages.write import digest, parquet_bytes, parquet_from_chunks

CARRIED_STATUSES = ("ok", "skipped")
# Task error kinds that a later run may not meet again: the video is processed again.
TRANSIENT_ERROR_KINDS = ("mllm_unreachable", "mllm_timeout", "mllm_http_429", "mllm_http_5")

LEDGER_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("content_id", pa.string()),
    ("video_uri", pa.string()),
    ("config_hash", pa.string()),
    ("status", pa.string()),                 # ok | failed | skipped (as when processed)
    ("reason", pa.string()),
    ("rows_json", pa.string()),              # rows per task present in the dataset
    ("shards", pa.list_(pa.string())),       # files holding its rows, relative to OUT
    ("done_run_id", pa.string()),            # the run that processed it
    ("retry_errors", pa.list_(pa.string())),  # transient task error kinds (not carried)
    # The sampled frames' difference hashes: a near-duplicate arriving in a later run is
    # matched against them (the run's _videos/ records are deleted at its commit).
    ("frame_hashes", pa.list_(pa.int64())),
    ("snapshot_run_id", pa.string()),        # the run whose dataset this row describes
])


def retry_errors(errors: list[dict]) -> list[str]:
    """The transient kinds among a video's task errors (report `errors`)."""
    return sorted({str(e.get("kind")) for e in errors
                   if str(e.get("kind", "")).startswith(TRANSIENT_ERROR_KINDS)})


def snapshot_key(run_id: str) -> str:
    """Where run `run_id`'s snapshot lives, relative to OUT."""
    return posixpath.join(LEDGER_DIR, f"{run_id}.parquet")


def shard_run_id(key: str) -> str:
    """'runs/<run_id>/data/x/part-1.parquet' -> '<run_id>'."""
    return key.split("/")[1]


def shard_task(key: str) -> str:
    return task_of_key(key)


def write_snapshot(fs, root: str, run_id: str, chunks: Iterable[list[dict]]) -> str:
    """The snapshot of `run_id` from its entries in video_id order, a chunk at a time (each
    chunk but the last a multiple of ROW_GROUP_ROWS entries: see parquet_from_chunks)."""
    tables = (pa.Table.from_pylist([{**e, "snapshot_run_id": run_id} for e in chunk], schema=LEDGER_SCHEMA)
              for chunk in chunks)
    key = snapshot_key(run_id)
    write_bytes_atomic(fs, posixpath.join(root, key), parquet_from_chunks(tables, LEDGER_SCHEMA))
    return key


def read_snapshot(fs, root: str, run_id: str) -> list[dict]:
    with fs.open(posixpath.join(root, snapshot_key(run_id)), "rb") as fh:
        return read_parquet(fh, schema=LEDGER_SCHEMA).to_pylist()


@dataclass
class Base:
    """The dataset of the last complete run: what an incremental run builds on."""

    run_id: str
    entries: dict[str, dict]                                  # video_id -> ledger row
    shard_stats: dict[str, dict] = field(default_factory=dict)  # key -> manifest shard entry


def load_base(fs, root: str) -> Base | None:
    """The snapshot of the run OUT/latest points at; None when there is none yet."""
    latest = posixpath.join(root, LATEST)
    if not fresh(fs).exists(latest):
        return None
    run_rel = fs.cat_file(latest).decode().strip()
    run_id = posixpath.basename(run_rel.rstrip("/"))
    manifest_path = posixpath.join(root, run_key(run_id, MANIFEST))
    if not fs.exists(manifest_path) or not fs.exists(posixpath.join(root, snapshot_key(run_id))):
        return None  # a run from before the ledger existed: process everything
    manifest = json.loads(fs.cat_file(manifest_path))
    stats = {}
    for shard in manifest.get("shards", []):
        key = posixpath.normpath(run_key(run_id, shard["path"]))
        stats[key] = {k: shard[k] for k in ("task", "rows", "bytes") if k in shard}
    entries = {e["video_id"]: e for e in read_snapshot(fs, root, run_id)}
    return Base(run_id, entries, stats)


def existing_shards(fs, root: str, keys: Iterable[str]) -> set[str]:
    """Which of `keys` exist: one listing per run folder, not one request per file."""
    found: set[str] = set()
    for run_id in sorted({shard_run_id(k) for k in keys}):
        pattern = posixpath.join(root, run_key(run_id, task_dir("*"), "*.parquet"))
        found.update(posixpath.relpath(path, root) for path in fresh(fs).glob(pattern))
    return found


def plan_carry(base: Base, listed_ids: set[str], config_hash: str, present: set[str]) -> dict[str, dict]:
    """The base entries of listed videos that need no processing (see module doc).
    `listed_ids`: the video_ids listed without a listing error."""
    eligible = {
        vid: e for vid, e in base.entries.items()
        if vid in listed_ids and e["config_hash"] == config_hash
        and e["status"] in CARRIED_STATUSES and not e.get("retry_errors")
        and all(k in present for k in e["shards"] or [])
    }
    groups: dict[str, set[str]] = defaultdict(set)
    for vid, e in base.entries.items():
        if e["content_id"] and e["status"] == "ok":
            groups[e["content_id"]].add(vid)
    return {vid: e for vid, e in eligible.items()
            if not e["content_id"] or groups.get(e["content_id"], set()) <= eligible.keys()}


def carry_shards(fs, root: str, run_id: str, base: Base, carried: dict[str, dict],
                 drop: set[str], compression: str = "zstd") -> tuple[list[dict], dict[str, dict]]:
    """Shards holding the carried videos' rows, minus the rows of `drop` (their content was
    processed again by this run) -> (shard entries keyed relative to OUT, updated entries).

    A shard is referenced where it lies when every video whose rows it holds is carried;
    otherwise the carried rows are copied into this run's folder.
    """
    keep_ids = set(carried) - drop
    members: dict[str, set[str]] = defaultdict(set)
    for vid, e in base.entries.items():
        for key in e["shards"] or []:
            members[key].add(vid)
    needed = sorted({k for e in carried.values() for k in e["shards"] or []})
    shards, moved = [], {}
    for key in needed:
        keep = members[key] & keep_ids
        if not keep:
            continue
        if keep == members[key]:
            stats = base.shard_stats.get(key) or _stats(fs, root, key)
            shards.append({"key": key, **stats, "task": shard_task(key)})
            continue
        with fs.open(posixpath.join(root, key), "rb") as fh:
            table = read_parquet(fh)
        table = table.filter(pc.is_in(table["video_id"], value_set=pa.array(sorted(keep))))
        ids = table.column("sample_id").to_pylist()
        new_key = run_key(run_id, task_dir(shard_task(key)), f"carried-{digest(ids)}.parquet")
        data = parquet_bytes(table, compression)
        write_bytes_atomic(fs, posixpath.join(root, new_key), data)
        moved[key] = new_key
        shards.append({"key": new_key, "task": shard_task(key), "rows": len(ids), "bytes": len(data)})
    entries = {}
    for vid, e in carried.items():
        if vid in drop:
            entries[vid] = {**e, "shards": [], "rows_json": "{}"}
        else:
            entries[vid] = {**e, "shards": sorted({moved.get(k, k) for k in e["shards"] or []})}
    # Copies of one source shard for different keep-sets cannot collide: digests differ.
    uniq = {s["key"]: s for s in shards}
    return [uniq[k] for k in sorted(uniq)], entries


def _stats(fs, root: str, key: str) -> dict[str, Any]:
    path = posixpath.join(root, key)
    with fs.open(path, "rb") as fh:
        rows = pq.ParquetFile(fh).metadata.num_rows
    return {"rows": rows, "bytes": fs.size(path)}
