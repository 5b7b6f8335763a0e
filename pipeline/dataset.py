"""The dataset-level step of a commit: near-duplicate groups and splits, same-video dedup,
answer balancing and the Hugging Face README (docs/dataset.md).

Per-video stages cannot do this: a split must be shared by every near-duplicate copy of a
clip, and balancing counts answers over the whole dataset (an incremental run's carried rows
included). `commit` (pipeline/run.py) calls `plan_dataset` before it writes any row: the
compaction then writes each (task, split)'s rows straight into its final files with the
split and content group set and the dropped rows left out (one pass over the staged rows,
one staged file in memory at a time, on the workers of a cluster), and `finish_dataset`
writes README.md.

What the plan holds, in order:
1. Groups of videos (this run's and carried ones) whose sampled frames match (64-bit
   difference hashes within `split.max_hamming` bits for `split.min_matched` of one video's
   frames, or the same content_id). A group's split is the split its carried members already
   have, else a hash of the group id and `split.seed` against the configured fractions.
2. Rows of one task and video with the same images and the same question to drop (the first
   sample_id stays).
3. Balancing drops (proxyqa.core.balance) among this run's rows; carried rows count.
Only light columns are read for 2-3 (ids, question, answer, choices, frames: no images).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from proxyqa.core.balance import plan_drops
from proxyqa.core.config import Config
from proxyqa.core.hf import hf_readme
from proxyqa.core.layout import HF_README, run_key, split_of_name, task_dir
from proxyqa.core.schema import SPLITS
from proxyqa.core.storage import fresh, get_fs, read_parquet, write_bytes_atomic

ROW_COLUMNS = ["sample_id", "video_id", "task", "question", "answer", "choices", "frame_indices"]
# Frames this flat (few or almost all bits set) hash mostly noise: they match anything.
MIN_BITS, MAX_BITS = 6, 58
# Up to this many videos every pair is compared (exact); frames per numpy block (a block is
# _BLOCK x all frames of 8-byte XORs: 16 MB at 32,000 frames).
ALL_PAIRS_MAX, _BLOCK = 2000, 64
LARGE_BUCKET = 4096


# --- near-duplicate groups and splits -----------------------------------------------------

def _popcount(x: int) -> int:
    return bin(x & 0xFFFFFFFFFFFFFFFF).count("1")


def _usable(hashes: Iterable[int] | None) -> list[int]:
    return [h & 0xFFFFFFFFFFFFFFFF for h in hashes or [] if MIN_BITS <= _popcount(h) <= MAX_BITS]


def _matched_share(a: list[int], b: list[int], max_hamming: int) -> float:
    """Share of a's frames with a frame of b within max_hamming bits: the rule's definition,
    pair by pair (the searches below compute it in numpy; tests compare them with it)."""
    if not a or not b:
        return 0.0
    hits = sum(1 for x in a if any(_popcount(x ^ y) <= max_hamming for y in b))
    return hits / len(a)


def _matching_pairs(ids: list[str], hashes: dict[str, list[int]], max_hamming: int,
                    min_matched: float) -> list[tuple[str, str]]:
    """Every pair (a, b), a before b in `ids`, with max(share(a, b), share(b, a)) >=
    min_matched (_matched_share), computed for all pairs at once: XOR and popcount over
    blocks of frames against all frames, then per (frame, video) whether any frame of that
    video is close. The same pairs as calling _matched_share on each (2,000 videos: ~4 s on
    2 cores, against a minute in Python)."""
    flat, owner = _flat(ids, hashes)
    if not len(flat):
        return []
    with_frames = np.unique(owner)                      # videos with usable frames, in order
    starts = np.searchsorted(owner, with_frames)        # their first column (owner is sorted)
    hits = np.zeros((len(ids), len(ids)), np.int32)     # a's frames close to some frame of b
    for lo in range(0, len(flat), _BLOCK):
        close = np.bitwise_count(flat[lo:lo + _BLOCK, None] ^ flat[None, :]) <= max_hamming
        per_video = np.logical_or.reduceat(close, starts, axis=1)
        np.add.at(hits, (owner[lo:lo + _BLOCK, None], with_frames[None, :]), per_video)
    need = _least_hits(owner, len(ids), min_matched)
    matched = hits >= need[:, None]
    matched = np.triu(matched | matched.T, k=1)
    return [(ids[a], ids[b]) for a, b in zip(*np.nonzero(matched))]


def _flat(ids: list[str], hashes: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """All usable frame hashes in one uint64 array, and the index in `ids` of each's video."""
    owner = np.array([i for i, v in enumerate(ids) for _ in hashes[v]], dtype=np.int64)
    flat = np.array([h for v in ids for h in hashes[v]], dtype=np.uint64)
    return flat, owner


def _least_hits(owner: np.ndarray, videos: int, min_matched: float) -> np.ndarray:
    """Per video, the least number of its frames matched in another video for share >=
    min_matched: share(a, b) = hits / frames(a) >= m  <=>  hits >= the least k with
    k / frames(a) >= m, found by that same float test (no rounding differs, no matrix of
    fractions). A video without usable frames needs 1 and never gets it."""
    frames = np.bincount(owner, minlength=videos)
    least = {n: next((k for k in range(n + 1) if k / n >= min_matched), n + 1)
             for n in set(frames.tolist()) if n}
    return np.array([least.get(n, 1) for n in frames.tolist()])


def _video_pairs(ids: list[str], owner: np.ndarray, frame_a: np.ndarray, frame_b: np.ndarray,
                 min_matched: float) -> list[tuple[str, str]]:
    """Video pairs (a before b) with max(share(a, b), share(b, a)) >= min_matched, given the
    frame pairs (frame_a[i], frame_b[i]) known to lie within max_hamming bits."""
    if not len(frame_a):
        return []
    # Directed: a frame of video u matched in video v counts once towards share(u, v).
    src = np.concatenate([frame_a, frame_b])
    dst = np.concatenate([owner[frame_b], owner[frame_a]])
    keep = owner[src] != dst
    seen = np.unique(src[keep] * len(ids) + dst[keep])          # (frame, other video), once
    frame, other = seen // len(ids), seen % len(ids)
    pair = owner[frame] * len(ids) + other
    pairs, hits = np.unique(pair, return_counts=True)
    need = _least_hits(owner, len(ids), min_matched)
    u, v = pairs // len(ids), pairs % len(ids)
    ok = hits >= need[u]
    found = {(min(a, b), max(a, b)) for a, b in zip(u[ok].tolist(), v[ok].tolist())}
    return [(ids[a], ids[b]) for a, b in sorted(found)]


def _banded_pairs(ids: list[str], hashes: dict[str, list[int]], max_hamming: int,
                  min_matched: float) -> list[tuple[str, str]]:
    """_matching_pairs for many videos (an approximation that never over-merges): only
    frames that share a band (a run of `bits` bits; `64 // bits` bands) are compared, so
    a frame pair differing in fewer bits than there are bands is always compared, one
    differing in more usually is. share(a, b) counts only the matches found, so it is at most
    the exact share: a pair joined here is joined by the exact rule too. The band width grows
    with the frame count so that a band's bucket holds ~8 frames on average (16 bits up to
    ~500,000 frames; 21 at 16 million): the comparisons stay ~a few per frame and band.
    A bucket of more than LARGE_BUCKET frames (one frame hash shared by thousands of videos,
    e.g. a black or logo frame that passed the flatness filter) is left out of that band."""
    flat, owner = _flat(ids, hashes)
    if not len(flat):
        return []
    bits = max(16, int(np.ceil(np.log2(max(len(flat), 1) / 8))))
    found_a, found_b = [], []
    for k in range(64 // bits):
        key = (flat >> np.uint64(bits * k)) & np.uint64((1 << bits) - 1)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        sizes = np.diff(np.r_[starts, len(flat)])
        sizes_each = np.repeat(sizes, sizes)
        # Members after each one in its bucket; pairs (p, p + t) for t = 1, 2, ... while any.
        after = np.repeat(starts + sizes, sizes) - np.arange(len(flat)) - 1
        after[sizes_each > LARGE_BUCKET] = 0
        t, at = 1, np.flatnonzero(after >= 1)
        while len(at):
            a, b = order[at], order[at + t]
            close = np.bitwise_count(flat[a] ^ flat[b]) <= max_hamming
            found_a.append(a[close])
            found_b.append(b[close])
            t += 1
            at = at[after[at] >= t]
    frame_a, frame_b = np.concatenate(found_a), np.concatenate(found_b)
    return _video_pairs(ids, owner, frame_a, frame_b, min_matched)


def near_duplicate_groups(videos: dict[str, dict], max_hamming: int, min_matched: float,
                          population: int | None = None) -> dict[str, str]:
    """video_id -> group id. `videos`: video_id -> {content_id, frame_hashes}.

    Up to ALL_PAIRS_MAX videos every pair is compared (exact: _matching_pairs); above, only
    frames sharing a band of their hash (_banded_pairs: never over-merges, may miss a copy
    whose frames all differ from the original's in many bits). `population`: the videos
    being grouped, when `videos` leaves out some that can only be alone in their group (no
    content_id, no usable frame): the search is chosen by it, as if they were given."""
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
    search = _matching_pairs if (population or len(ids)) <= ALL_PAIRS_MAX else _banded_pairs
    for a, b in search(ids, hashes, max_hamming, min_matched):
        union(a, b)
    # Group id: a digest of the smallest content_id among its members (stable while that
    # member stays, and the same whatever URIs, hence video_ids, the copies were listed at).
    smallest: dict[str, str] = {}
    for v in ids:
        root = find(v)
        name = videos[v].get("content_id") or v
        smallest[root] = min(smallest.get(root, name), name)
    return {v: group_name(smallest[find(v)]) for v in ids}


def group_name(name: str) -> str:
    """A group's id from the smallest content_id (else video_id) among its members."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


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

def read_rows(output: str, s3: Any, item: tuple[list[tuple[str, list[str] | None]], list[str]]
              ) -> pa.Table:
    """`columns` of the rows of some Parquet files, each filtered to its listed videos (None:
    all). item = ([(path under OUT's filesystem, video_ids)], columns). Plain function: runs in
    a driver thread or as a Ray task; only light columns travel back (no images)."""
    sources, columns = item
    fs, _ = get_fs(output, s3)
    tables = []
    for path, vids in sources:
        with fs.open(path, "rb") as fh:
            table = read_parquet(fh, columns=columns)
        if vids is not None:
            table = table.filter(pc.is_in(table["video_id"], value_set=pa.array(vids, pa.string())))
        tables.append(table.select(columns))
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def _read_all(read, mapper, sources: list[tuple[str, list[str] | None]], columns: list[str],
              per_call: int = 64) -> pa.Table:
    """`read` (read_rows bound to the output) over many files, `per_call` files per call of
    the mapper (a Ray task per file would cost more than the read)."""
    items = [(sources[i:i + per_call], columns) for i in range(0, len(sources), per_call)]
    tables = mapper(read, items) if items else []
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


# --- the step -----------------------------------------------------------------------------

@dataclass
class DatasetPlan:
    """What commit's compaction applies while it writes the per-split files."""

    # video_id -> split / content_group: this run's videos and the carried ones grouped with
    # them (not carried videos alone in their group: compaction looks up only its own).
    split_of: dict[str, str]
    group_of: dict[str, str]
    dropped: dict[tuple[str, str], list[str]]   # (video_id, task) -> sample_ids left out
    counts: dict[str, Any]              # groups, split conflicts, duplicates, balancing
    carried_split: dict[str, str]       # carried shard key -> the split of its rows


def plan_dataset(run, cfg: Config, records: dict[str, dict],
                 own_sources: dict[str, list[tuple[str, list[str]]]], carried_shards: list[dict],
                 carried: pa.Table, mapper, on_threads) -> DatasetPlan:
    """Steps 1-3 of the module doc, before any row is written. `records`: this run's video
    records by video_id; `own_sources`: task -> (staged path, video_ids whose rows are kept);
    `carried`: the ledger entries of carried videos (after commit dropped re-processed
    contents; an Arrow table of ledger.BASE_COLUMNS). Reads only light columns (no images): of the staged files through `mapper`
    (Ray tasks on a cluster), of the carried shards through `on_threads` (the driver's)."""
    root = run.root

    # 1. Groups and splits. Carried shards one file per call: each file's split is read off
    # its rows.
    read = partial(read_rows, run.output, cfg.s3)
    carried_tables = on_threads(read, [
        ([(posixpath.join(root, s["key"]), None)], ["video_id", "split", "content_group"])
        for s in carried_shards])
    carried_split: dict[str, Counter] = defaultdict(Counter)
    carried_group: dict[str, str] = {}
    shard_split: dict[str, str] = {}
    for shard, table in zip(carried_shards, carried_tables):
        for vid, split, group in zip(table["video_id"].to_pylist(), table["split"].to_pylist(),
                                     table["content_group"].to_pylist()):
            if split:
                carried_split[vid][split] += 1
            if group:
                carried_group[vid] = group
        present = [s for s in set(table["split"].to_pylist()) if s]
        shard_split[shard["key"]] = (present[0] if len(present) == 1 else
                                     split_of_name(shard["key"]) or SPLITS[0])
    del carried_tables
    videos: dict[str, dict] = {
        vid: {"content_id": rec.get("content_id"), "frame_hashes": rec.get("frame_hashes")}
        for vid, rec in records.items() if rec.get("status") == "ok"}
    # Carried videos that can only be a group of their own (no content_id, no usable frame
    # hash, no carried rows: e.g. skipped ones) are counted, not held: a nightly carries
    # nearly every video, and a dict per video is what bounded its driver memory.
    alone = _alone(carried, set(videos) | set(carried_split) | set(carried_group))
    for vid, entry in zip(carried["video_id"].filter(pa.array(~alone)).to_pylist(),
                          carried.select(["content_id", "frame_hashes"]).filter(pa.array(~alone)).to_pylist()):
        videos.setdefault(vid, entry)   # hashes from the ledger (None in older snapshots)
    group_of = near_duplicate_groups(videos, cfg.split.max_hamming, cfg.split.min_matched,
                                     population=len(videos) + int(alone.sum()))
    members: dict[str, list[str]] = defaultdict(list)
    for vid, group in group_of.items():
        members[group].append(vid)
    split_of: dict[str, str] = {}
    name_of: dict[str, str] = {}
    # Groups per split, each split keyed by the smallest video_id of a group in it (the
    # order in which the counts met the splits when every video was grouped here).
    groups_by_split: Counter = Counter()
    first_of_split: dict[str, str] = {}
    for split, first, n in _alone_splits(carried["video_id"].filter(pa.array(alone)), cfg):
        groups_by_split[split] += n
        first_of_split[split] = min(first_of_split.get(split, first), first)
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
        groups_by_split[split] += 1
        first_of_split[split] = min(first_of_split.get(split, vids[0]), vids[0])

    # 2-3. Same-video duplicates and balancing, over this run's rows and the carried ones,
    # one task at a time: a task's drops depend on its rows alone, so the driver holds one
    # task's light rows, not the run's.
    dropped: dict[tuple[str, str], list[str]] = defaultdict(list)
    duplicates: Counter = Counter()
    balanced: Counter = Counter()
    for task in sorted(set(own_sources) | {s["task"] for s in carried_shards}):
        own = _read_all(read, mapper, own_sources.get(task, []), ROW_COLUMNS)
        carried_rows = _read_all(read, on_threads, [(posixpath.join(root, s["key"]), None)
                                                       for s in carried_shards if s["task"] == task],
                                 ROW_COLUMNS, per_call=1)
        drop, n_duplicates, n_balanced = _task_drops(own, carried_rows, cfg)
        duplicates[task] += n_duplicates
        balanced[task] += n_balanced
        for vid, sid in zip(own["video_id"].to_pylist(), own["sample_id"].to_pylist()):
            if sid in drop:
                dropped[(vid, task)].append(sid)
        del own, carried_rows
    counts = {
        "content_groups": sum(groups_by_split.values()),
        "groups_by_split": {s: groups_by_split[s] for s in sorted(first_of_split, key=first_of_split.get)},
        "split_conflicts": conflicts,
        "duplicates_dropped": {t: n for t, n in sorted(duplicates.items()) if n},
        "balanced_away": {t: n for t, n in sorted(balanced.items()) if n},
    }
    return DatasetPlan(split_of, name_of, dict(dropped), counts, shard_split)


def _alone(carried: pa.Table, grouped: set[str]) -> np.ndarray:
    """Which carried entries can only be alone in their near-duplicate group: no content_id,
    no usable frame hash (_usable) and not among `grouped` (videos with records or carried
    rows)."""
    n = carried.num_rows
    no_content = pc.fill_null(pc.equal(carried["content_id"], ""), True).to_numpy(zero_copy_only=False)
    hashes = carried["frame_hashes"].combine_chunks() if n else pa.array([], pa.list_(pa.int64()))
    flat = pc.list_flatten(hashes).to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
    bits = np.bitwise_count(flat)
    usable = (bits >= MIN_BITS) & (bits <= MAX_BITS)
    parent = pc.list_parent_indices(hashes).to_numpy(zero_copy_only=False).astype(np.int64)
    has_usable = np.bincount(parent[usable], minlength=n)[:n] > 0
    known = pc.is_in(carried["video_id"], value_set=pa.array(sorted(grouped), pa.string()))
    return no_content.astype(bool) & ~has_usable & ~pc.fill_null(known, False).to_numpy(zero_copy_only=False)


def _alone_splits(ids: pa.ChunkedArray | pa.Array, cfg: Config, chunk: int = 65536,
                  ) -> Iterable[tuple[str, str, int]]:
    """(split, smallest video_id, videos) of the one-video groups of `ids`, per split, a
    chunk of ids at a time: each is its own group, named after its video_id."""
    first: dict[str, str] = {}
    count: Counter = Counter()
    for batch in (ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]):
        for start in range(0, len(batch), chunk):
            for vid in batch.slice(start, chunk).to_pylist():
                split = split_for_group(group_name(vid), cfg.split)
                count[split] += 1
                if split not in first or vid < first[split]:
                    first[split] = vid
    return [(s, first[s], count[s]) for s in count]


def _task_drops(own: pa.Table, carried: pa.Table, cfg: Config) -> tuple[set[str], int, int]:
    """One task's sample_ids to leave out of this run's rows: same-video duplicates, then
    balancing drops (carried rows count but stay). -> (drops, duplicates, balanced away)."""
    rows: list[dict] = []
    droppable: list[bool] = []
    for is_own, table in ((True, own), (False, carried)):
        for r in table.select(ROW_COLUMNS).to_pylist():
            rows.append(r)
            droppable.append(is_own)
    drop: set[str] = set()
    first: dict[tuple, str] = {}
    # Carried rows first: they stay, and a duplicate of one among this run's rows goes.
    for r, is_own in sorted(zip(rows, droppable), key=lambda x: (x[1], x[0]["sample_id"])):
        key = (r["task"], r["video_id"], tuple(r["frame_indices"] or ()), r["question"])
        if key in first and is_own:
            drop.add(r["sample_id"])
        else:
            first.setdefault(key, r["sample_id"])
    duplicates = len(drop)
    if cfg.balance.enabled:
        keep = [i for i, r in enumerate(rows) if r["sample_id"] not in drop]
        sub = [rows[i] for i in keep]
        drop |= {sub[j]["sample_id"] for j in plan_drops(sub, cfg.balance.max_excess,
                                                          [droppable[i] for i in keep])}
    return drop, duplicates, len(drop) - duplicates


def finish_dataset(run, plan: DatasetPlan, own_shards: list[dict], carried_shards: list[dict]
                   ) -> tuple[list[dict], dict[str, Any]]:
    """Step 5: the carried shards with their split, the run's counts, README.md.
    `own_shards`: this run's per-split files as compaction wrote them ({key, task, split, ...})."""
    out_carried = [{**s, "split": plan.carried_split.get(s["key"]) or SPLITS[0]} for s in carried_shards]
    # A split without rows is left out of its task's config (the datasets library cannot
    # read a Parquet file with no rows), so load_dataset(split=...) of it fails.
    here = run_key(run.run_id)
    listed = [{"path": posixpath.relpath(s["key"], here), "task": s["task"], "split": s["split"]}
              for s in own_shards + out_carried]
    rows_by_split: Counter = Counter()
    for s in own_shards + out_carried:
        rows_by_split[s["split"]] += s["rows"]
    counts = {"rows_by_split": {s: rows_by_split.get(s, 0) for s in SPLITS}, **plan.counts}
    body = "Counts of this run: `" + json.dumps(counts, sort_keys=True) + "`"
    write_bytes_atomic(run.fs, posixpath.join(run.root, here, HF_README),
                       hf_readme(run.run_id, listed, body).encode())
    return out_carried, counts


def remove_stale_shards(run, shard_keys: Iterable[str]) -> None:
    """After `latest` moved: remove any file under data/ that the manifest does not list (a
    crashed earlier attempt of this commit, planned differently), so that a glob over data/
    sees each row once. A crash before this leaves them; readers go by the manifest."""
    keep = set(shard_keys)
    for path in fresh(run.fs).glob(posixpath.join(run.path, task_dir("*"), "*.parquet")):
        key = posixpath.relpath(path, run.root)
        if key not in keep and not posixpath.basename(key).startswith("carried-"):
            run.fs.rm(path)
