"""Shard writer: each batch of videos -> one staged Parquet file per task + video records.

Staged files (`_staged/task=<t>/`) are small (one writer batch); the commit compacts them
into files of `write.rows_per_file` rows (pipeline/run.py). A video's rows of one task are
in exactly one staged file, and its record lists those files: the commit keeps a video's
rows only from the files its chosen record names, so a retried batch that landed twice is
read once. File names are digests of their content's ids, so a retried or resumed batch
rewrites the same file instead of adding a copy.
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from proxyqa.core.config import S3Config
from proxyqa.core.layout import STAGED_DIR, VIDEOS_DIR, task_dir
from proxyqa.core.schema import SAMPLE_SCHEMA, VIDEO_RECORD_SCHEMA
from proxyqa.core.storage import get_fs, write_bytes_atomic
from proxyqa.stages.base import Batch, to_rows


def digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:20]


# Row groups are the reader's unit of work split across ranks and dataloader workers.
ROW_GROUP_ROWS = 256


def parquet_bytes(table: pa.Table, compression: str) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression, row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


def parquet_from_chunks(chunks: Iterable[pa.Table], schema: pa.Schema,
                        compression: str = "zstd") -> bytes:
    """One Parquet file from tables written one after another: the same bytes as
    parquet_bytes(the tables concatenated) when every table but the last has a multiple of
    ROW_GROUP_ROWS rows (the row groups fall alike), without holding every row at once
    (the commit's report and ledger at a million videos)."""
    sink = io.BytesIO()
    write_chunks(sink, chunks, schema, compression)
    return sink.getvalue()


def write_chunks(sink: Any, chunks: Iterable[pa.Table], schema: pa.Schema,
                 compression: str = "zstd") -> None:
    """parquet_from_chunks into an open file object (e.g. an AtomicWriter's): the same
    bytes, without holding the whole file in memory."""
    with pq.ParquetWriter(sink, schema, compression=compression) as writer:
        wrote = False
        for table in chunks:
            if table.num_rows or not wrote:
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                wrote = True
        if not wrote:
            writer.write_table(schema.empty_table(), row_group_size=ROW_GROUP_ROWS)


class ShardWriterStage:
    """Writes `samples` of each video row; returns one small record per video."""

    name = "write"

    def __init__(self, run_uri: str, run_id: str, config_hash: str,
                 compression: str = "zstd", s3: S3Config | None = None):
        self.run_uri, self.run_id, self.config_hash = run_uri, run_id, config_hash
        self.compression = compression
        self.fs, self.root = get_fs(run_uri, s3)

    def _put(self, rel: str, table: pa.Table) -> str:
        write_bytes_atomic(self.fs, posixpath.join(self.root, rel),
                           parquet_bytes(table, self.compression))
        return rel

    def __call__(self, batch: Batch) -> Batch:
        rows = to_rows(batch)
        by_task: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            for sample in row.get("samples") or []:
                by_task[sample["task"]].append(sample)
        shards_of: dict[str, set[str]] = defaultdict(set)
        for task, samples in sorted(by_task.items()):
            samples.sort(key=lambda s: s["sample_id"])
            table = pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA)
            # Named by (video, sample) pairs: identical clips share sample_ids, and their
            # batches must not overwrite each other's staged files.
            name = digest([f"{s['video_id']}/{s['sample_id']}" for s in samples])
            rel = self._put(f"{STAGED_DIR}/{task_dir(task)}/part-{name}.parquet", table)
            for s in samples:
                shards_of[s["video_id"]].add(rel)
        records = [self._record(row, sorted(shards_of.get(row["video_id"], ()))) for row in rows]
        # The records are written after the shards: a record on disk means its rows are too.
        table = pa.Table.from_pylist(records, schema=VIDEO_RECORD_SCHEMA)
        self._put(f"{VIDEOS_DIR}/part-{digest([r['video_id'] for r in records])}.parquet", table)
        return {name: [r[name] for r in records] for name in VIDEO_RECORD_SCHEMA.names}

    def _record(self, row: dict[str, Any], shards: list[str]) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for sample in row.get("samples") or []:
            counts[sample["task"]] += 1
        status = row.get("status") or "ok"
        return {
            "video_uri": row["video_uri"],
            "video_id": row["video_id"],
            "content_id": row.get("content_id"),
            "status": status,
            "reason": row.get("reason"),
            "size_bytes": row.get("size_bytes"),
            "counts_json": json.dumps(dict(sorted(counts.items()))),
            "errors_json": row.get("errors_json"),
            "shards": shards,
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            "frame_hashes": row.get("frame_hashes"),   # near-duplicate grouping at commit
        }
