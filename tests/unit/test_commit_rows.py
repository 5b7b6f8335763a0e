"""Commit's per-video outputs built column-wise and in chunks (pipeline/run.py, issue 15's
bounded driver): report.parquet and the ledger snapshot must be the very bytes the former
dict-per-video code wrote, across chunk boundaries, with carried, lost, failed and
task-error videos; records chosen as before (ok wins, else the first in path order)."""
from __future__ import annotations

import json
import posixpath
from collections import Counter
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from proxyqa.core.config import load_config
from proxyqa.core.layout import VIDEOS_DIR
from proxyqa.core.schema import VIDEO_RECORD_SCHEMA
from proxyqa.pipeline import run as run_mod
from proxyqa.pipeline.ledger import ENTRY_SCHEMA, LEDGER_SCHEMA, retry_errors, write_snapshot
from proxyqa.pipeline.run import (
    _RECORD_SCHEMA,
    REPORT_SCHEMA,
    _carried_reason,
    _VideoRows,
    open_run,
    read_video_records,
    reason_kind,
)
from proxyqa.pipeline.sources import as_listing
from proxyqa.stages.write import parquet_bytes, parquet_from_chunks

RUN = SimpleNamespace(run_id="20260101T000000000Z-hhhhhhhh", config_hash="h" * 16)
N = 1300   # over two chunks of 512 (patched below) and a remainder


def _inputs() -> tuple[list[dict], list[dict], dict, dict, dict]:
    """listing, records, carried entries, own rows, own shards: every kind of video."""
    listing, records, carried, own_rows, own_shards = [], [], {}, {}, {}
    for i in range(N):
        vid = f"{(i * 7919) % N:05d}x"          # listing order != video_id order
        listing.append({"video_uri": f"s3://in/v{i}.mp4", "video_id": vid, "size_bytes": i,
                        "mtime": "m", "status": None, "reason": None})
        kind = i % 6
        if kind == 0:       # lost: no record
            continue
        if kind == 1:       # carried from an earlier run
            carried[vid] = {"video_id": vid, "content_id": f"c{i}", "video_uri": f"s3://in/v{i}.mp4",
                            "config_hash": RUN.config_hash, "status": "ok", "reason": None,
                            "rows_json": '{"t": 2}' if i % 4 else None, "shards": [f"runs/r0/data/t/x{i}"],
                            "done_run_id": "r0", "retry_errors": [], "snapshot_run_id": "r0"}
            continue
        errors = ([{"task": "t", "kind": "mllm_timeout", "detail": "é"}] if kind == 2 else
                  [{"task": "u", "kind": "no_subject"}] if kind == 3 else [])
        status = {2: "ok", 3: "ok", 4: "skipped", 5: "failed"}[kind]
        records.append({"video_id": vid, "content_id": f"c{i}" if status == "ok" else None,
                        "status": status, "reason": None if status == "ok" else f"decode: k{i % 3}: d{i}",
                        "counts_json": json.dumps({"t": 3}) if status == "ok" else ("{}" if i % 5 else None),
                        "errors_json": json.dumps(errors) if errors or i % 5 else None,
                        "shards": [], "frame_hashes": None})
        if status == "ok":
            own_rows[vid] = Counter({"t": 3, "a": 1})
            own_shards[vid] = {f"runs/{RUN.run_id}/data/t/p{i % 3}", "runs/x/data/a/q"}
    return listing, records, carried, own_rows, own_shards


def _dict_built(listing, records, carried, own_rows, own_shards) -> tuple[bytes, bytes, dict]:
    """The former commit code (a dict per video, then Table.from_pylist) as the reference."""
    recs = {r["video_id"]: r for r in records}
    videos, entries = [], []
    for item in listing:
        vid = item["video_id"]
        if vid in carried:
            entry = carried[vid]
            videos.append({"uri": item["video_uri"], "video_id": vid, "status": "skipped",
                           "reason": _carried_reason(entry), "rows_json": entry["rows_json"] or "{}",
                           "errors_json": "[]", "carried_from": entry["done_run_id"]})
            entries.append(entry)
            continue
        rec = recs.get(vid) or {"status": "failed", "reason": "pipeline: lost: no record was written",
                                "counts_json": "{}", "content_id": None}
        errors = json.loads(rec.get("errors_json") or "[]")
        videos.append({"uri": item["video_uri"], "video_id": vid, "status": rec["status"],
                       "reason": rec.get("reason"), "rows_json": rec.get("counts_json") or "{}",
                       "errors_json": json.dumps(errors), "carried_from": None, "_errors": errors})
        entries.append({"video_id": vid, "content_id": rec.get("content_id"), "video_uri": item["video_uri"],
                        "config_hash": RUN.config_hash, "status": rec["status"], "reason": rec.get("reason"),
                        "rows_json": json.dumps(dict(sorted(own_rows.get(vid, Counter()).items()))),
                        "shards": sorted(own_shards.get(vid, ())), "done_run_id": RUN.run_id,
                        "retry_errors": retry_errors(errors)})
    counts = {"status": Counter(v["status"] for v in videos),
              "failures": Counter(reason_kind(v["reason"]) for v in videos
                                  if v["status"] != "ok" and not v["carried_from"]),
              "task_errors": Counter(f"{e['task']}: {e['kind']}" for v in videos
                                     for e in v.pop("_errors", None) or [])}
    report = parquet_bytes(pa.Table.from_pylist(videos, schema=REPORT_SCHEMA), "zstd")
    rows = sorted(({**e, "snapshot_run_id": RUN.run_id} for e in entries), key=lambda e: e["video_id"])
    ledger = parquet_bytes(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), "zstd")
    return report, ledger, counts


def test_report_and_ledger_are_the_bytes_the_dict_built_code_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "_ROWS_CHUNK", 512)
    listing, records, carried, own_rows, own_shards = _inputs()
    want_report, want_ledger, want_counts = _dict_built(listing, records, carried, own_rows, own_shards)

    table = as_listing(listing).select(["video_uri", "video_id"])
    entries = pa.Table.from_pylist(list(carried.values()), schema=ENTRY_SCHEMA)
    rows = _VideoRows(RUN, table, pa.Table.from_pylist(records, schema=_RECORD_SCHEMA), entries,
                      own_rows, own_shards)
    report, tally = rows.report_parquet()
    key = write_snapshot(LocalFileSystem(), str(tmp_path), RUN.run_id, rows.ledger_chunks())
    ledger = (tmp_path / key).read_bytes()

    assert pq.ParquetFile(pa.BufferReader(report)).metadata.num_rows == N
    assert report == want_report
    assert ledger == want_ledger
    assert (tally.status, tally.failures, tally.task_errors) == (
        want_counts["status"], want_counts["failures"], want_counts["task_errors"])
    assert tally.status["failed"] > 0 and tally.task_errors and want_counts["status"]["skipped"] > 0


@pytest.mark.parametrize("sizes", [[], [0], [256, 256, 3], [512, 100]])
def test_parquet_from_chunks_writes_the_bytes_of_one_table(sizes):
    schema = pa.schema([("a", pa.string()), ("b", pa.list_(pa.string()))])
    chunks, k = [], 0
    for n in sizes:
        chunks.append(pa.Table.from_pylist([{"a": f"x{k + i}", "b": [str(i)] * (i % 3)} for i in range(n)],
                                           schema=schema))
        k += n
    whole = pa.concat_tables(chunks) if chunks else schema.empty_table()
    assert parquet_from_chunks(chunks, schema) == parquet_bytes(whole, "zstd")


def test_read_video_records_keeps_an_ok_record_else_the_first_in_path_order(tmp_path):
    cfg = load_config(None, [])
    cfg.output = str(tmp_path / "out")
    run = open_run(cfg, "h" * 16)

    def put(name: str, recs: list[tuple[str, str, str | None]]) -> None:
        rows = [{"video_id": v, "status": s, "reason": r, "video_uri": f"/in/{v}"} for v, s, r in recs]
        path = posixpath.join(run.path, VIDEOS_DIR, f"part-{name}.parquet")
        run.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=VIDEO_RECORD_SCHEMA), path)

    put("a", [("v1", "failed", "first"), ("v2", "skipped", "first"), ("v3", "ok", None)])
    put("b", [("v1", "ok", None), ("v2", "failed", "second"), ("v3", "failed", "later")])
    put("c", [("v4", "skipped", "only"), ("v5", None, "no status: not ok")])
    put("d", [("v5", "failed", "later")])
    got = read_video_records(run, threads=2)
    assert got.column_names == _RECORD_SCHEMA.names
    assert sorted((r["video_id"], r["status"], r["reason"]) for r in got.to_pylist()) == [
        ("v1", "ok", None), ("v2", "skipped", "first"), ("v3", "ok", None), ("v4", "skipped", "only"),
        ("v5", None, "no status: not ok")]
