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

On the driver the base snapshot and the carried entries stay Arrow tables (a nightly
carries nearly every video: a dict per entry was ~3 KB a video, ~3 GB at a million):
repeated strings (config_hash, status, done_run_id, shard keys) are dictionary-encoded,
eligibility and content groups are Arrow filters, which videos a shard holds comes from
numpy over the (entry, shard) pairs, and the carried entries reach the new snapshot as
Arrow columns.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from proxyqa.core.layout import LATEST, LEDGER_DIR, MANIFEST, run_key, task_dir, task_of_key
from proxyqa.core.storage import AtomicWriter, fresh, fs_is_s3, read_parquet, write_bytes_atomic
from proxyqa.stages.write import digest, parquet_bytes, write_chunks

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
# What an incremental run keeps of a ledger entry (snapshot_run_id is rewritten by each run).
BASE_COLUMNS = [f.name for f in LEDGER_SCHEMA if f.name != "snapshot_run_id"]
# Strings repeated across many videos, held dictionary-encoded (4 bytes a video; shards too).
_REPEATED = ("config_hash", "status", "done_run_id")
_READ_BATCH = 16384   # snapshot rows decoded at a time (bounds the plain-string transient)
# Ledger entries as plain columns (what report and snapshot rows are made of).
ENTRY_SCHEMA = pa.schema([LEDGER_SCHEMA.field(c) for c in BASE_COLUMNS])


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


def empty_entries() -> pa.Table:
    return ENTRY_SCHEMA.empty_table()


def plain_entries(table: pa.Table) -> pa.Table:
    """Ledger entries (BASE_COLUMNS, dictionary-encoded or not) as plain ENTRY_SCHEMA columns."""
    return pa.Table.from_arrays([table[f.name].cast(f.type) for f in ENTRY_SCHEMA], schema=ENTRY_SCHEMA)


def as_ledger(table: pa.Table, run_id: str) -> pa.Table:
    """Ledger entries (BASE_COLUMNS, dictionary-encoded or not) as snapshot rows of `run_id`."""
    plain = plain_entries(table)
    column = pa.array(np.full(plain.num_rows, run_id, dtype=object), pa.string())
    return plain.append_column(LEDGER_SCHEMA.field("snapshot_run_id"), column)


def write_snapshot(fs, root: str, run_id: str, chunks: Iterable[pa.Table]) -> str:
    """The snapshot of `run_id` from its entries in video_id order (tables of BASE_COLUMNS),
    a chunk at a time (each chunk but the last a multiple of ROW_GROUP_ROWS entries: see
    parquet_from_chunks)."""
    tables = (as_ledger(chunk, run_id) for chunk in chunks)
    key = snapshot_key(run_id)
    with AtomicWriter(fs, posixpath.join(root, key)) as fh:   # streamed: not held whole
        write_chunks(fh, tables, LEDGER_SCHEMA)
    return key


def read_snapshot(fs, root: str, run_id: str) -> list[dict]:
    """A snapshot's rows as dicts (small outputs and tests; incremental runs use load_base)."""
    with fs.open(posixpath.join(root, snapshot_key(run_id)), "rb") as fh:
        return read_parquet(fh, schema=LEDGER_SCHEMA).to_pylist()


class _Keys:
    """One dictionary for a string column across the batches it is read in (a batch's own
    dictionary would make the batches' arrays incompatible)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def encode(self, values: pa.Array) -> pa.Array:
        """int32 positions in this dictionary (null stays null)."""
        uniq = pc.unique(values).drop_null()
        ids = pa.array([self.index.setdefault(v, len(self.index)) for v in uniq.to_pylist()], pa.int32())
        return pc.take(ids, pc.index_in(values, value_set=uniq))

    def dictionary(self) -> pa.Array:
        return pa.array(list(self.index), pa.string())


def read_base_table(fs, root: str, run_id: str) -> pa.Table:
    """Run `run_id`'s snapshot as an Arrow table of BASE_COLUMNS, read a batch at a time
    and kept in those chunks (no concatenated copy), with the strings repeated across
    videos dictionary-encoded, one dictionary per column for all chunks: config_hash,
    status, done_run_id and the shard keys (a shard holds the rows of hundreds of videos; a
    video names one shard per task). A column an older snapshot lacks is null."""
    path = posixpath.join(root, snapshot_key(run_id))
    if fs_is_s3(fs):   # bytes Arrow owns (see read_parquet); a local file Arrow reads itself
        with fs.open(path, "rb") as fh:
            data = fh.read()
        owned = pa.allocate_buffer(len(data))
        memoryview(owned).cast("B")[:] = data
        del data
        source: Any = pa.BufferReader(owned)
    else:
        source = path
    pf = pq.ParquetFile(source)
    have = [c for c in BASE_COLUMNS if c in pf.schema_arrow.names]
    keys = {c: _Keys() for c in (*_REPEATED, "shards")}
    parts: dict[str, list[Any]] = {c: [] for c in BASE_COLUMNS}
    for batch in pf.iter_batches(batch_size=_READ_BATCH, columns=have, use_threads=False):
        n = batch.num_rows
        for f in ENTRY_SCHEMA:
            col = batch.column(f.name).cast(f.type) if f.name in have else pa.nulls(n, f.type)
            if f.name in _REPEATED:
                col = keys[f.name].encode(col)
            elif f.name == "shards":    # (lengths, encoded keys): made lists once all are known
                size = pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False)
                col = (size.astype(np.int32), keys[f.name].encode(pc.list_flatten(col)))
            parts[f.name].append(col)
    columns = []
    for f in ENTRY_SCHEMA:
        if f.name in _REPEATED:   # the indices stay valid: a dictionary only grows
            dictionary = keys[f.name].dictionary()
            chunks = [pa.DictionaryArray.from_arrays(ix, dictionary) for ix in parts[f.name]]
            columns.append(pa.chunked_array(chunks, pa.dictionary(pa.int32(), pa.string())))
        elif f.name == "shards":
            dictionary = keys[f.name].dictionary()
            chunks = [_relist(size, pa.DictionaryArray.from_arrays(ix, dictionary))
                      for size, ix in parts[f.name]]
            columns.append(pa.chunked_array(chunks, pa.list_(pa.dictionary(pa.int32(), pa.string()))))
        else:
            columns.append(pa.chunked_array(parts[f.name], f.type))
        parts[f.name] = []
    return pa.Table.from_arrays(columns, names=BASE_COLUMNS)


def _relist(lengths: np.ndarray, values: pa.Array) -> pa.Array:
    """Lists of `lengths` (-1: a null list) over `values`, in order."""
    nulls = lengths < 0
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(np.where(nulls, 0, lengths), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values,
                                    mask=pa.array(nulls) if nulls.any() else None)


@dataclass
class Base:
    """The dataset of the last complete run: what an incremental run builds on.

    `entries`: its ledger snapshot as one Arrow table (read_base_table: BASE_COLUMNS, repeated
    strings dictionary-encoded), in video_id order. Once plan_run has taken the carried
    entries out of it, only video_id and shards are kept (which videos a shard holds)."""

    run_id: str
    entries: pa.Table
    shard_stats: dict[str, dict] = field(default_factory=dict)  # key -> manifest shard entry

    def shard_keys(self) -> list[str]:
        """Every shard key the snapshot names."""
        return _flat_shards(self.entries)[2].to_pylist()


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
    return Base(run_id, read_base_table(fs, root, run_id), stats)


def existing_shards(fs, root: str, keys: Iterable[str]) -> set[str]:
    """Which of `keys` exist: one listing per run folder, not one request per file."""
    found: set[str] = set()
    for run_id in sorted({shard_run_id(k) for k in keys}):
        pattern = posixpath.join(root, run_key(run_id, task_dir("*"), "*.parquet"))
        found.update(posixpath.relpath(path, root) for path in fresh(fs).glob(pattern))
    return found


def _flat_shards(table: pa.Table) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """The (entry, shard key) pairs of `table`'s shards column: (row of each pair, the key's
    position in the keys array, the keys array), chunk by chunk (no combined copy).
    Dictionary-encoded lists (one dictionary for all chunks, as read_base_table makes them)
    or plain ones."""
    parents, positions, row = [], [], 0
    dictionary = None
    for chunk in table["shards"].chunks:
        parents.append(pc.list_parent_indices(chunk).to_numpy(zero_copy_only=False).astype(np.int64) + row)
        positions.append(pc.list_flatten(chunk))
        row += len(chunk)
    parent = np.concatenate(parents) if parents else np.zeros(0, np.int64)
    if positions and pa.types.is_dictionary(positions[0].type):
        dictionary = positions[0].dictionary
        if any(not (p.dictionary is dictionary or p.dictionary.equals(dictionary)) for p in positions):
            raise ValueError("shards: chunks with different dictionaries")
        index = np.concatenate([p.indices.to_numpy(zero_copy_only=False).astype(np.int64) for p in positions])
        return parent, index, dictionary
    flat = pa.chunked_array(positions, pa.string()) if positions else pa.chunked_array([], pa.string())
    keys = pc.unique(flat)
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    index = pc.index_in(flat, value_set=keys).to_numpy()
    return parent, np.asarray(index, np.int64), keys


def _per_row(n: int, rows: np.ndarray) -> np.ndarray:
    """Whether each of n rows is among `rows` (row numbers, repeats allowed)."""
    return np.bincount(rows, minlength=n)[:n] > 0


def _mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False).astype(bool)


def carry_mask(base: Base, listed_ids: pa.Array, config_hash: str, present: set[str]) -> np.ndarray:
    """Which base entries are listed videos that need no processing (see module doc): one
    bool per row of base.entries. `listed_ids`: the video_ids listed without a listing error.
    Arrow filters and numpy over the (entry, shard) pairs: no Python object per video."""
    e = base.entries
    n = e.num_rows
    eligible = (_mask(pc.is_in(e["video_id"], value_set=listed_ids))
                & _mask(pc.equal(e["config_hash"].cast(pa.string()), config_hash))
                & _mask(pc.is_in(e["status"].cast(pa.string()), value_set=pa.array(CARRIED_STATUSES)))
                & (pc.fill_null(pc.list_value_length(e["retry_errors"]), 0).to_numpy() == 0))
    parent, key, keys = _flat_shards(e)
    missing_key = ~np.array([k in present for k in keys.to_pylist()], bool)
    eligible &= ~_per_row(n, parent[missing_key[key]])
    # Identical clips share sample_ids: a content is carried only if every ok entry of it is.
    has_content = _mask(pc.not_equal(e["content_id"], ""))
    blocking = has_content & _mask(pc.equal(e["status"].cast(pa.string()), "ok")) & ~eligible
    blocked = pc.unique(e["content_id"].filter(pa.array(blocking)))
    eligible &= ~(has_content & _mask(pc.is_in(e["content_id"], value_set=blocked)))
    return eligible


def take_carried(base: Base, mask: np.ndarray) -> pa.Table:
    """The rows of base.entries where `mask`, taken out of `base` a column at a time: once
    taken, base.entries keeps only what carry_shards needs of every entry (video_id and
    shards), so the carried entries are never held twice in full."""
    keep = pa.array(mask)
    whole = bool(mask.all())   # (the nightly with nothing new: the columns as they are)
    columns, slim = [], {}
    for name in BASE_COLUMNS:
        columns.append(base.entries[name] if whole else base.entries[name].filter(keep))
        if name in ("video_id", "shards"):
            slim[name] = base.entries[name]
        base.entries = base.entries.drop_columns([name])
    base.entries = pa.table(slim)
    return pa.Table.from_arrays(columns, names=BASE_COLUMNS)


def carry_shards(fs, root: str, run_id: str, base: Base, carried: pa.Table, drop: pa.Array,
                 compression: str = "zstd") -> tuple[list[dict], pa.Table]:
    """Shards holding the carried videos' rows, minus the rows of `drop` (video_ids whose
    content was processed again by this run) -> (shard entries keyed relative to OUT, the
    carried entries updated: shards moved to the copies, none and no rows for `drop`).

    A shard is referenced where it lies when every video whose rows it holds is carried;
    otherwise the carried rows are copied into this run's folder. Which videos a shard holds
    comes from the base entries' (video_id, shard) pairs, in numpy.
    """
    dropped = _mask(pc.is_in(carried["video_id"], value_set=drop))
    keep_ids = carried["video_id"].filter(pa.array(~dropped)).combine_chunks()
    parent, key, keys = _flat_shards(base.entries)
    base_ids = base.entries["video_id"].combine_chunks()
    kept_entry = _mask(pc.is_in(base_ids, value_set=keep_ids))
    kept_pair = kept_entry[parent]
    with_kept = np.bincount(key[kept_pair], minlength=len(keys))
    with_other = np.bincount(key[~kept_pair], minlength=len(keys))
    # The kept videos of each shard: pairs grouped by key (stable: base order within one).
    order = np.flatnonzero(kept_pair)
    order = order[np.argsort(key[order], kind="stable")]
    starts = np.searchsorted(key[order], np.arange(len(keys) + 1))
    key_names = keys.to_pylist()
    shards, moved = [], {}
    for k in sorted(np.flatnonzero(with_kept).tolist(), key=key_names.__getitem__):
        name = key_names[k]
        if not with_other[k]:
            stats = base.shard_stats.get(name) or _stats(fs, root, name)
            shards.append({"key": name, **stats, "task": shard_task(name)})
            continue
        keep = base_ids.take(pa.array(parent[order[starts[k]:starts[k + 1]]]))
        with fs.open(posixpath.join(root, name), "rb") as fh:
            table = read_parquet(fh)
        table = table.filter(pc.is_in(table["video_id"], value_set=keep))
        ids = table.column("sample_id").to_pylist()
        new_key = run_key(run_id, task_dir(shard_task(name)), f"carried-{digest(ids)}.parquet")
        data = parquet_bytes(table, compression)
        write_bytes_atomic(fs, posixpath.join(root, new_key), data)
        moved[name] = new_key
        shards.append({"key": new_key, "task": shard_task(name), "rows": len(ids), "bytes": len(data)})
    # Copies of one source shard for different keep-sets cannot collide: digests differ.
    uniq = {s["key"]: s for s in shards}
    return [uniq[k] for k in sorted(uniq)], _moved(carried, dropped, moved)


def _moved(carried: pa.Table, dropped: np.ndarray, moved: dict[str, str]) -> pa.Table:
    """`carried` with each entry's shards renamed by `moved`, as a sorted list of distinct
    keys (what `sorted({moved.get(k, k) for k in shards or []})` gives), and no shards and
    no rows for the dropped entries."""
    n = carried.num_rows
    parent, key, keys = _flat_shards(carried)
    names = keys.to_pylist()
    if not moved and not dropped.any() and carried["shards"].null_count == 0 and _sorted_sets(parent, key, names):
        return carried   # (the nightly with nothing new: every list already as it would be)
    new_names = list(dict.fromkeys([moved.get(k, k) for k in names]))
    where = {k: i for i, k in enumerate(new_names)}
    remap = np.array([where[moved.get(k, k)] for k in names], np.int64)
    rank = np.empty(len(new_names), np.int64)
    rank[np.argsort(np.array(new_names, dtype=object), kind="stable")] = np.arange(len(new_names))
    keep = ~dropped[parent]
    parent, key = parent[keep], remap[key[keep]]
    order = np.lexsort((rank[key], parent))
    parent, key = parent[order], key[order]
    first = np.ones(len(parent), bool)
    first[1:] = (parent[1:] != parent[:-1]) | (key[1:] != key[:-1])
    parent, key = parent[first], key[first]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(parent, minlength=n)[:n], out=offsets[1:])
    values = pa.DictionaryArray.from_arrays(pa.array(key.astype(np.int32)), pa.array(new_names, pa.string()))
    shards = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    rows_json = pc.if_else(pa.array(dropped), pa.scalar("{}"), carried["rows_json"])
    out = carried.set_column(carried.schema.get_field_index("shards"), "shards", shards)
    return out.set_column(out.schema.get_field_index("rows_json"), "rows_json", rows_json)


def _sorted_sets(parent: np.ndarray, key: np.ndarray, names: list[str]) -> bool:
    """Whether every entry's keys are in ascending order without repeats."""
    rank = np.empty(len(names), np.int64)
    rank[np.argsort(np.array(names, dtype=object), kind="stable")] = np.arange(len(names))
    same_entry = parent[1:] == parent[:-1]
    return bool(np.all(~same_entry | (rank[key[1:]] > rank[key[:-1]])))


def _stats(fs, root: str, key: str) -> dict[str, Any]:
    path = posixpath.join(root, key)
    with fs.open(path, "rb") as fh:
        rows = pq.ParquetFile(fh).metadata.num_rows
    return {"rows": rows, "bytes": fs.size(path)}
