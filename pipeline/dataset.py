"""The dataset-level step of a commit: near-duplicate groups and splits, same-video dedup,
answer balancing, per-split shards and the Hugging Face README (docs/dataset.md).

Per-video stages cannot do this: a split must be shared by every near-duplicate copy of a
clip, and balancing counts answers over the whole dataset (an incremental run's carried rows
included). `commit` (pipeline/run.py) calls `finalize_dataset` once, after its own shards are
finalized and the carried ones chosen, and `remove_staged` once `latest` has moved.

What it does, in order:
1. Groups videos (this run's and carried ones) whose sampled frames match (64-bit
   difference hashes within `split.max_hamming` bits for `split.min_matched` of one video's
   frames, or the same content_id). A group's split is the split its carried members already
   have, else a hash of the group id and `split.seed` against the configured fractions.
2. Drops rows of one task and video with the same images and the same question (the first
   sample_id stays).
3. Plans balancing drops (proxyqa.core.balance) among this run's rows; carried rows count.
4. Rewrites each staged shard `data/<task>/part-<digest>.parquet` into
   `data/<task>/<split>-<digest>.parquet`, with `split` and `content_group` set and the
   dropped rows left out. The staged files are removed only after `latest` moved, so a crash
   before that leaves them for the resumed commit to read again (the rewrite is
   deterministic).
5. Writes README.md (configs per task with the splits that have rows).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from proxyqa.core.balance import plan_drops
from proxyqa.core.config import Config
from proxyqa.core.hf import hf_readme
from proxyqa.core.layout import HF_README, SHARD_GLOB, VIDEOS_DIR, run_key, split_of_name, task_dir
from proxyqa.core.schema import SPLITS
from proxyqa.core.storage import fresh, read_parquet, write_bytes_atomic
from proxyqa.stages.write import digest, parquet_bytes

ROW_COLUMNS = ["sample_id", "video_id", "task", "question", "answer", "choices", "frame_indices"]
# Frames this flat (few or almost all bits set) hash mostly noise: they match anything.
MIN_BITS, MAX_BITS = 6, 58


@dataclass
class Finalized:
    own_shards: list[dict]                 # {key, task, rows, bytes, split}, keys relative to OUT
    carried_shards: list[dict]
    rows_of: dict[str, Counter]            # video_id -> rows per task (this run's rows)
    shards_of: dict[str, set]              # video_id -> shard keys (this run's rows)
    counts: dict[str, Any] = field(default_factory=dict)   # merged into the report's counts
    staged: list[str] = field(default_factory=list)        # staged keys, removed after commit


# --- near-duplicate groups and splits -----------------------------------------------------

def _popcount(x: int) -> int:
    return bin(x & 0xFFFFFFFFFFFFFFFF).count("1")


def _usable(hashes: Iterable[int] | None) -> list[int]:
    return [h & 0xFFFFFFFFFFFFFFFF for h in hashes or [] if MIN_BITS <= _popcount(h) <= MAX_BITS]


def _matched_share(a: list[int], b: list[int], max_hamming: int) -> float:
    """Share of a's frames with a frame of b within max_hamming bits."""
    if not a or not b:
        return 0.0
    hits = sum(1 for x in a if any(_popcount(x ^ y) <= max_hamming for y in b))
    return hits / len(a)


def near_duplicate_groups(videos: dict[str, dict], max_hamming: int, min_matched: float
                          ) -> dict[str, str]:
    """video_id -> group id. `videos`: video_id -> {content_id, frame_hashes}.

    Candidate pairs share a 16-bit band of some frame hash (a pair of frames within
    max_hamming <= 10 bits of 64 shares at least one of 4 bands when max_hamming < 4, and
    usually otherwise; to stay exact, small inputs compare every pair)."""
    ids = sorted(videos)
    parent = {v: v for v in ids}

    def find(v: str) -> str:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_content: dict[str, str] = {}
    for v in ids:
        cid = videos[v].get("content_id")
        if cid:
            if cid in by_content:
                union(v, by_content[cid])
            else:
                by_content[cid] = v
    hashes = {v: _usable(videos[v].get("frame_hashes")) for v in ids}
    if len(ids) <= 2000:
        pairs = ((a, b) for i, a in enumerate(ids) for b in ids[i + 1:])
    else:   # banded candidates: frames close in Hamming distance usually share a band
        bands: dict[tuple[int, int], set[str]] = defaultdict(set)
        for v in ids:
            for h in hashes[v]:
                for k in range(4):
                    bands[(k, (h >> (16 * k)) & 0xFFFF)].add(v)
        pairs = {(a, b) for members in bands.values() if len(members) < 500
                 for a in members for b in members if a < b}
    for a, b in pairs:
        if find(a) == find(b):
            continue
        ha, hb = hashes[a], hashes[b]
        if max(_matched_share(ha, hb, max_hamming), _matched_share(hb, ha, max_hamming)) >= min_matched:
            union(a, b)
    # Group id: a digest of the smallest content_id among its members (stable while that
    # member stays, and the same whatever URIs, hence video_ids, the copies were listed at).
    smallest: dict[str, str] = {}
    for v in ids:
        root = find(v)
        name = videos[v].get("content_id") or v
        smallest[root] = min(smallest.get(root, name), name)
    return {v: hashlib.sha256(smallest[find(v)].encode()).hexdigest()[:16] for v in ids}


def split_for_group(group: str, cfg) -> str:
    """Deterministic split of a new group: a hash of (seed, group) against the fractions."""
    u = int(hashlib.sha256(f"split|{cfg.seed}|{group}".encode()).hexdigest()[:15], 16) / 16 ** 15
    edge = 0.0
    for name in SPLITS:
        edge += getattr(cfg, name)
        if u < edge:
            return name
    return SPLITS[0]


# --- reading ------------------------------------------------------------------------------

def _read(fs, root: str, key: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open(posixpath.join(root, key), "rb") as fh:
        return read_parquet(fh, columns=columns)


def _done_run_hashes(fs, root: str, run_ids: Iterable[str], wanted: set[str]) -> dict[str, list]:
    """frame_hashes of `wanted` videos from the video records of the runs that processed them."""
    out: dict[str, list] = {}
    for run_id in sorted(set(run_ids)):
        for path in sorted(fresh(fs).glob(posixpath.join(root, run_key(run_id, VIDEOS_DIR, SHARD_GLOB)))):
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                if "frame_hashes" not in pf.schema_arrow.names:
                    continue
                table = pf.read(columns=["video_id", "frame_hashes"])
            for vid, hashes in zip(table["video_id"].to_pylist(), table["frame_hashes"].to_pylist()):
                if vid in wanted and hashes:
                    out[vid] = hashes
    return out


# --- the step -----------------------------------------------------------------------------

def finalize_dataset(run, cfg: Config, records: dict[str, dict], own_shards: list[dict],
                     carried_shards: list[dict], carried: dict[str, dict]) -> Finalized:
    """See the module doc. `records`: this run's video records by video_id; `carried`: the
    ledger entries of carried videos (after commit dropped re-processed contents)."""
    fs, root = run.fs, run.root
    compression = cfg.write.compression

    # 1. Groups and splits.
    carried_rows = [(s, _read(fs, root, s["key"], ROW_COLUMNS + ["split", "content_group"]))
                    for s in carried_shards]
    carried_split: dict[str, Counter] = defaultdict(Counter)
    carried_group: dict[str, str] = {}
    for _, table in carried_rows:
        for vid, split, group in zip(table["video_id"].to_pylist(), table["split"].to_pylist(),
                                     table["content_group"].to_pylist()):
            if split:
                carried_split[vid][split] += 1
            if group:
                carried_group[vid] = group
    videos: dict[str, dict] = {
        vid: {"content_id": rec.get("content_id"), "frame_hashes": rec.get("frame_hashes")}
        for vid, rec in records.items() if rec.get("status") == "ok"}
    hashes = _done_run_hashes(fs, root, [e["done_run_id"] for e in carried.values()], set(carried))
    for vid, entry in carried.items():
        videos.setdefault(vid, {"content_id": entry.get("content_id"),
                                "frame_hashes": hashes.get(vid)})
    group_of = near_duplicate_groups(videos, cfg.split.max_hamming, cfg.split.min_matched)
    members: dict[str, list[str]] = defaultdict(list)
    for vid, group in group_of.items():
        members[group].append(vid)
    split_of: dict[str, str] = {}
    name_of: dict[str, str] = {}
    conflicts = 0
    for group, vids in members.items():
        fixed = Counter()
        for vid in vids:
            fixed.update(carried_split.get(vid, {}))
        if fixed:   # carried rows keep their split: new near-duplicates join it
            split = max(SPLITS, key=lambda s: (fixed[s], -SPLITS.index(s)))
            conflicts += len([s for s in fixed if fixed[s]]) - 1
        else:
            split = split_for_group(group, cfg.split)
        names = sorted(carried_group[v] for v in vids if v in carried_group)
        for vid in vids:
            split_of[vid] = split
            name_of[vid] = names[0] if names else group

    # 2-3. Same-video duplicates and balancing, over this run's rows and the carried ones.
    own_tables = [(s, _read(fs, root, s["key"], ROW_COLUMNS)) for s in own_shards]
    rows: list[dict] = []
    droppable: list[bool] = []
    for own, tables in ((True, own_tables), (False, carried_rows)):
        for _, table in tables:
            for r in table.select(ROW_COLUMNS).to_pylist():
                rows.append(r)
                droppable.append(own)
    drop: set[str] = set()
    duplicates: Counter = Counter()
    first: dict[tuple, str] = {}
    # Carried rows first: they stay, and a duplicate of one among this run's rows goes.
    for r, own in sorted(zip(rows, droppable), key=lambda x: (x[1], x[0]["sample_id"])):
        key = (r["task"], r["video_id"], tuple(r["frame_indices"] or ()), r["question"])
        if key in first and own:
            drop.add(r["sample_id"])
            duplicates[r["task"]] += 1
        else:
            first.setdefault(key, r["sample_id"])
    balanced: Counter = Counter()
    if cfg.balance.enabled:
        keep = [i for i, r in enumerate(rows) if r["sample_id"] not in drop]
        sub = [rows[i] for i in keep]
        for j in plan_drops(sub, cfg.balance.max_excess, [droppable[i] for i in keep]):
            drop.add(sub[j]["sample_id"])
            balanced[sub[j]["task"]] += 1

    # 4. Per-split shards of this run: the compacted files' kept rows, regrouped by (task,
    # split) into files of write.rows_per_file rows (a video's rows of a task stay in one
    # file), written in parallel.
    buckets: dict[tuple[str, str], list[pa.Table]] = defaultdict(list)
    staged: list[str] = []
    for shard, _ in own_tables:
        table = _read(fs, root, shard["key"])
        table = table.filter(pc.invert(pc.is_in(table["sample_id"], value_set=pa.array(sorted(drop), pa.string()))))
        vids = table["video_id"].to_pylist()
        splits = [split_of.get(v, SPLITS[0]) for v in vids]
        table = (table.set_column(table.schema.get_field_index("split"), "split", pa.array(splits, pa.string()))
                 .set_column(table.schema.get_field_index("content_group"), "content_group",
                             pa.array([name_of.get(v) for v in vids], pa.string())))
        staged.append(shard["key"])
        for split in SPLITS:
            part = table.filter(pc.equal(table["split"], split))
            if part.num_rows:
                buckets[(shard["task"], split)].append(part)
    chunks = [(task, split, chunk) for (task, split), parts in sorted(buckets.items())
              for chunk in _chunks(pa.concat_tables(parts), cfg.write.rows_per_file)]

    def write(item: tuple[str, str, pa.Table]) -> dict:
        task, split, part = item
        key = run_key(run.run_id, task_dir(task), f"{split}-{digest(part['sample_id'].to_pylist())}.parquet")
        data = parquet_bytes(part, compression)
        write_bytes_atomic(fs, posixpath.join(root, key), data)
        return {"key": key, "task": task, "rows": part.num_rows, "bytes": len(data), "split": split,
                "video_ids": part["video_id"].to_pylist()}

    with ThreadPoolExecutor(max_workers=max(1, cfg.write.commit_parallelism)) as pool:
        out_own = list(pool.map(write, chunks))
    rows_of: dict[str, Counter] = defaultdict(Counter)
    shards_of: dict[str, set] = defaultdict(set)
    for shard in out_own:
        for vid in shard.pop("video_ids"):
            rows_of[vid][shard["task"]] += 1
            shards_of[vid].add(shard["key"])
    out_carried = []
    for shard, table in carried_rows:
        present = [s for s in set(table["split"].to_pylist()) if s]
        out_carried.append({**shard, "split": present[0] if len(present) == 1 else
                            (split_of_name(shard["key"]) or SPLITS[0])})

    # 5. README.md. A split without rows is left out of its task's config (the datasets
    # library cannot read a Parquet file with no rows), so load_dataset(split=...) of it fails.
    here = run_key(run.run_id)
    listed = [{"path": posixpath.relpath(s["key"], here), "task": s["task"], "split": s["split"]}
              for s in out_own + out_carried]
    rows_by_split: Counter = Counter()
    for s in out_own + out_carried:
        rows_by_split[s["split"]] += s["rows"]
    counts = {
        "rows_by_split": {s: rows_by_split.get(s, 0) for s in SPLITS},
        "content_groups": len(members),
        "groups_by_split": dict(Counter(split_of[vids[0]] for vids in members.values())),
        "split_conflicts": conflicts,
        "duplicates_dropped": dict(sorted(duplicates.items())),
        "balanced_away": dict(sorted(balanced.items())),
    }
    body = "Counts of this run: `" + json.dumps(counts, sort_keys=True) + "`"
    write_bytes_atomic(fs, posixpath.join(root, here, HF_README),
                       hf_readme(run.run_id, listed, body).encode())
    return Finalized(out_own, out_carried, rows_of, shards_of, counts, staged)


def _chunks(table: pa.Table, rows_per_file: int) -> Iterator[pa.Table]:
    """Slices of about `rows_per_file` rows, cut only between videos: a slice ends at the
    first video boundary once it holds the target (a target reached, not a maximum). A
    remainder under half the target joins the slice before it (files of up to ~1.5x the
    target), so a (task, split) has a file below target only when it has fewer rows than
    the target in all."""
    vids = table["video_id"].to_pylist()
    cuts, start = [], 0
    for i in range(1, len(vids) + 1):
        if i == len(vids) or (i - start >= rows_per_file and vids[i] != vids[i - 1]):
            cuts.append(i)
            start = i
    if len(cuts) > 1 and cuts[-1] - cuts[-2] < rows_per_file / 2:
        del cuts[-2]
    start = 0
    for end in cuts:
        yield table.slice(start, end - start)
        start = end


def remove_staged(run, fin: Finalized) -> None:
    """After `latest` moved: remove the staged shards (rewritten per split) and any file a
    crashed earlier attempt of this commit left under data/, so that a glob over data/ sees
    each row once. A crash before this leaves them; readers go by the manifest."""
    keep = {s["key"] for s in fin.own_shards + fin.carried_shards}
    for path in fresh(run.fs).glob(posixpath.join(run.path, task_dir("*"), "*.parquet")):
        key = posixpath.relpath(path, run.root)
        name = posixpath.basename(key)
        if key in keep or name.startswith("carried-"):
            continue
        run.fs.rm(path)
