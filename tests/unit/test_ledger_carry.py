"""The nightly's carry plan in Arrow (pipeline/ledger.py, issue 15's bounded driver): which
base entries are carried (config hash, status, transient errors, missing shards, identical
clips carried only whole), which shards are referenced or copied, and the carried entries
written back, all without a dict per video. Each rule has an entry that only it excludes."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from proxyqa.core.storage import read_parquet
from proxyqa.pipeline import ledger
from proxyqa.pipeline.ledger import (
    ENTRY_SCHEMA,
    Base,
    carry_mask,
    carry_shards,
    plain_entries,
    read_base_table,
    read_snapshot,
    write_snapshot,
)

H = "h" * 16
RUN0 = "r0"


def _entry(vid: str, status: str | None = "ok", content: str | None = None, shards=(),
           config_hash: str | None = H, retry=(), rows: str | None = '{"t": 1}') -> dict:
    return {"video_id": vid, "content_id": content, "video_uri": f"/in/{vid}.mp4",
            "config_hash": config_hash, "status": status,
            "reason": None if status == "ok" else f"decode: x: {vid}", "rows_json": rows,
            "shards": list(shards), "done_run_id": RUN0, "retry_errors": list(retry),
            "frame_hashes": [1, 2] if status == "ok" else None}


S1, S_GONE = "runs/r0/data/t/train-1.parquet", "runs/r0/data/t/train-gone.parquet"

# video_id -> (entry, carried?). Each excluded entry is excluded by one rule only.
CASES = {
    "a_ok": (_entry("a_ok", content="c_a", shards=[S1]), True),
    "b_skipped": (_entry("b_skipped", status="skipped", rows="{}"), True),
    "c_failed": (_entry("c_failed", status="failed", rows="{}"), False),          # status
    "d_no_status": (_entry("d_no_status", status=None), False),                    # status
    "e_other_config": (_entry("e_other_config", config_hash="x" * 16), False),    # config hash
    "f_no_config": (_entry("f_no_config", config_hash=None), False),              # config hash
    "g_retry": (_entry("g_retry", retry=["mllm_timeout"]), False),                # retry_errors
    "h_missing_shard": (_entry("h_missing_shard", shards=[S1, S_GONE]), False),   # shard gone
    "i_unlisted": (_entry("i_unlisted"), False),                                  # not listed
    # Identical clips: carried only whole.
    "j1": (_entry("j1", content="c_j", shards=[S1]), False),       # its twin is reprocessed
    "j2": (_entry("j2", content="c_j", config_hash="x" * 16), False),
    "k1": (_entry("k1", content="c_k"), True),                      # twin failed: not ok,
    "k2": (_entry("k2", status="failed", content="c_k"), False),    # so it does not hold k1
    "l1": (_entry("l1", content="c_l"), True),                      # both carried
    "l2": (_entry("l2", content="c_l"), True),
    "m1": (_entry("m1", content="c_m"), False),                     # twin no longer listed
    "m2": (_entry("m2", content="c_m"), False),
    "n1": (_entry("n1", content=""), True),                          # empty content: no group
    "n2": (_entry("n2", content="", config_hash="x" * 16), False),
    "o_null_shards": ({**_entry("o_null_shards"), "shards": None}, True),
}
UNLISTED = {"i_unlisted", "m2"}


def _base(tmp_path, monkeypatch, entries: list[dict], batch: int = 3) -> Base:
    """entries -> a snapshot file -> the Arrow base, read a few rows a batch (the
    dictionaries must span batches)."""
    monkeypatch.setattr(ledger, "_READ_BATCH", batch)
    fs, root = LocalFileSystem(), str(tmp_path)
    rows = sorted(entries, key=lambda e: e["video_id"])
    write_snapshot(fs, root, RUN0, [pa.Table.from_pylist(rows, schema=ENTRY_SCHEMA)])
    table = read_base_table(fs, root, RUN0)
    assert pa.types.is_dictionary(table.schema.field("status").type)
    assert pa.types.is_dictionary(table.schema.field("shards").type.value_type)
    assert plain_entries(table).to_pylist() == pa.Table.from_pylist(rows, schema=ENTRY_SCHEMA).to_pylist()
    return Base(RUN0, table, {})


def test_carry_mask_applies_every_rule(tmp_path, monkeypatch):
    base = _base(tmp_path, monkeypatch, [e for e, _ in CASES.values()])
    listed = pa.array(sorted(set(CASES) - UNLISTED))
    carried = plan_carry(base, listed, H, present={S1})
    got = carried["video_id"].to_pylist()
    assert got == sorted(v for v, (_, want) in CASES.items() if want)   # base order kept
    assert plain_entries(carried).to_pylist() == [
        pa.Table.from_pylist([CASES[v][0]], schema=ENTRY_SCHEMA).to_pylist()[0] for v in got]
    # With the shard back, the entry naming it is carried (and j1 still is not: its twin).
    again = plan_carry(base, listed, H, present={S1, S_GONE})["video_id"].to_pylist()
    assert set(again) - set(got) == {"h_missing_shard"}


def _shard(tmp_path, key: str, vids: list[str]) -> None:
    path = tmp_path / key
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"sample_id": f"{v}-{i}", "video_id": v} for v in vids for i in range(2)]
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("batch", [2, 1000])
def test_carry_shards_references_whole_shards_copies_shared_ones(tmp_path, monkeypatch, batch):
    whole, shared, with_dropped, other = (f"runs/r0/data/{t}/train-{t}.parquet"
                                         for t in ("t", "u", "v", "w"))
    for key, vids in ((whole, ["v1", "v2"]), (shared, ["v2", "v3", "v4"]), (with_dropped, ["v5", "v6"]),
                      (other, ["v4"])):
        _shard(tmp_path, key, vids)
    entries = [_entry("v1", shards=[whole]), _entry("v2", shards=[whole, shared]),
               _entry("v3", shards=[shared]), _entry("v4", shards=[shared, other]),
               _entry("v5", content="c5", shards=[with_dropped]), _entry("v6", shards=[with_dropped])]
    base = _base(tmp_path, monkeypatch, entries, batch)
    base.shard_stats = {whole: {"task": "t", "rows": 4, "bytes": 1}}
    carried = plan_carry(base, pa.array(["v1", "v2", "v3", "v5", "v6"]), H,
                         present={whole, shared, with_dropped, other})
    new_run = "r9"   # sorts after r0: a moved key changes the order of a video's keys
    shards, out = carry_shards(LocalFileSystem(), str(tmp_path), new_run, base, carried,
                               drop=pa.array(["v5"]))
    by_task = {s["task"]: s for s in shards}
    assert by_task["t"] == {"key": whole, "task": "t", "rows": 4, "bytes": 1}   # all carried
    assert "w" not in by_task                                                   # none carried
    for task, vids in (("u", ["v2", "v3"]), ("v", ["v6"])):   # v4 not carried; v5 dropped
        key = by_task[task]["key"]
        assert key.startswith(f"runs/{new_run}/data/{task}/carried-")
        rows = read_parquet(str(tmp_path / key)).to_pylist()
        assert sorted({r["video_id"] for r in rows}) == vids and by_task[task]["rows"] == len(rows)
    got = {e["video_id"]: e for e in plain_entries(out).to_pylist()}
    assert got["v1"]["shards"] == [whole]
    assert got["v2"]["shards"] == [whole, by_task["u"]["key"]]     # sorted after the move
    assert got["v3"]["shards"] == [by_task["u"]["key"]]
    assert got["v5"]["shards"] == [] and got["v5"]["rows_json"] == "{}"
    assert got["v6"]["shards"] == [by_task["v"]["key"]] and got["v6"]["rows_json"] == '{"t": 1}'
    # Written back, the entries are the ledger rows the dict-built code wrote.
    write_snapshot(LocalFileSystem(), str(tmp_path), new_run, [out])
    snap = read_snapshot(LocalFileSystem(), str(tmp_path), new_run)
    assert [e["video_id"] for e in snap] == ["v1", "v2", "v3", "v5", "v6"]
    assert {e["snapshot_run_id"] for e in snap} == {new_run}
    assert snap[1] == {**entries[1], "shards": [whole, by_task["u"]["key"]], "snapshot_run_id": new_run}


def plan_carry(base, listed, config_hash, present):
    """The carried entries, as plan_run takes them (carry_mask over base.entries)."""
    return base.entries.filter(pa.array(carry_mask(base, listed, config_hash, present)))
