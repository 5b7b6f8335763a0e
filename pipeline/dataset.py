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
   Computed in columns (`_groups_and_splits`): a nightly carries nearly every video, and an
   object per carried video is what bounded the driver's memory (docs/performance.md).
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

from proxyqa.core.balance import plan_drops_table
from proxyqa.core.config import Config
from proxyqa.core.hf import hf_readme
from proxyqa.core.layout import HF_README, run_key, split_of_name, task_dir
from proxyqa.core.schema import SPLITS
from proxyqa.core.storage import fresh, get_fs, read_parquet, write_bytes_atomic

ROW_COLUMNS = ["sample_id", "video_id", "task", "question", "answer", "choices", "frame_indices"]
BALANCE_COLUMNS = ["sample_id", "video_id", "task", "question", "answer", "choices"]
# Frames this flat (few or almost all bits set) hash mostly noise: they match anything.
MIN_BITS, MAX_BITS = 6, 58
# Up to this many videos every pair is compared (exact); frames per numpy block (a block is
# _BLOCK x all frames of 8-byte XORs: 16 MB at 32,000 frames).
ALL_PAIRS_MAX, _BLOCK = 2000, 64
LARGE_BUCKET = 4096
_SLICE = 1 << 20   # frames per numpy temporary in the band search


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


def _matching_pairs(flat: np.ndarray, owner: np.ndarray, videos: int, max_hamming: int,
                    min_matched: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of video indices (a < b) with max(share(a, b), share(b, a)) >= min_matched
    (_matched_share), computed for all pairs at once: XOR and popcount over blocks of frames
    against all frames, then per (frame, video) whether any frame of that video is close.
    `flat`: the usable frame hashes (uint64), `owner`: each one's video index, ascending (a
    video's frames together). The same pairs as calling _matched_share on each (2,000
    videos: ~4 s on 2 cores, against a minute in Python)."""
    if not len(flat):
        return _NO_PAIRS
    with_frames = np.unique(owner)                      # videos with usable frames, in order
    starts = np.searchsorted(owner, with_frames)        # their first column (owner is sorted)
    hits = np.zeros((videos, videos), np.int32)         # a's frames close to some frame of b
    for lo in range(0, len(flat), _BLOCK):
        close = np.bitwise_count(flat[lo:lo + _BLOCK, None] ^ flat[None, :]) <= max_hamming
        per_video = np.logical_or.reduceat(close, starts, axis=1)
        np.add.at(hits, (owner[lo:lo + _BLOCK, None], with_frames[None, :]), per_video)
    need = _least_hits(owner, videos, min_matched)
    matched = hits >= need[:, None]
    del hits
    a, b = np.nonzero(np.triu(matched | matched.T, k=1))
    return a.astype(np.int64), b.astype(np.int64)


_NO_PAIRS = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _flat(ids: list[str], hashes: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """All usable frame hashes of a dict (video_id -> usable hashes) in one uint64 array, and
    the index in `ids` of each's video (ascending)."""
    owner = np.array([i for i, v in enumerate(ids) for _ in hashes[v]], dtype=np.int64)
    flat = np.array([h for v in ids for h in hashes[v]], dtype=np.uint64)
    return flat, owner


def _least_hits(owner: np.ndarray, videos: int, min_matched: float) -> np.ndarray:
    """Per video, the least number of its frames matched in another video for share >=
    min_matched: share(a, b) = hits / frames(a) >= m  <=>  hits >= the least k with
    k / frames(a) >= m, found by that same float test (no rounding differs, no matrix of
    fractions). A video without usable frames needs 1 and never gets it."""
    frames = np.bincount(owner, minlength=videos)
    sizes = np.unique(frames)
    least = np.array([next((k for k in range(n + 1) if k / n >= min_matched), n + 1) if n else 1
                      for n in sizes.tolist()], dtype=np.int64)
    return least[np.searchsorted(sizes, frames)]


def _video_pairs(owner: np.ndarray, videos: int, frame_a: np.ndarray, frame_b: np.ndarray,
                 min_matched: float) -> tuple[np.ndarray, np.ndarray]:
    """Video index pairs (a < b, each once) with max(share(a, b), share(b, a)) >=
    min_matched, given the frame pairs (frame_a[i], frame_b[i]) known to lie within
    max_hamming bits."""
    if not len(frame_a):
        return _NO_PAIRS
    # Directed: a frame of video u matched in video v counts once towards share(u, v).
    # (int64 throughout: frame x video and video x video products pass 2**31.)
    src = np.concatenate([frame_a, frame_b]).astype(np.int64)
    dst = np.concatenate([owner[frame_b], owner[frame_a]]).astype(np.int64)
    keep = owner[src] != dst
    seen = np.unique(src[keep] * videos + dst[keep])            # (frame, other video), once
    del src, dst, keep
    frame, other = seen // videos, seen % videos
    pairs, hits = np.unique(owner[frame].astype(np.int64) * videos + other, return_counts=True)
    need = _least_hits(owner, videos, min_matched)
    u, v = pairs // videos, pairs % videos
    ok = hits >= need[u]
    found = np.unique(np.minimum(u[ok], v[ok]) * videos + np.maximum(u[ok], v[ok]))
    return found // videos, found % videos


def _banded_pairs(flat: np.ndarray, owner: np.ndarray, videos: int, max_hamming: int,
                  min_matched: float) -> tuple[np.ndarray, np.ndarray]:
    """_matching_pairs for many videos (an approximation that never over-merges): only
    frames that share a band (a run of `bits` bits; `64 // bits` bands) are compared, so
    a frame pair differing in fewer bits than there are bands is always compared, one
    differing in more usually is. share(a, b) counts only the matches found, so it is at most
    the exact share: a pair joined here is joined by the exact rule too. The band width grows
    with the frame count so that a band's bucket holds ~8 frames on average (16 bits up to
    ~500,000 frames; 21 at 16 million): the comparisons stay ~a few per frame and band.
    A bucket of more than LARGE_BUCKET frames (one frame hash shared by thousands of videos,
    e.g. a black or logo frame that passed the flatness filter) is left out of that band.
    `owner` need not be sorted here."""
    if not len(flat):
        return _NO_PAIRS
    frames = len(flat)
    bits = max(16, int(np.ceil(np.log2(max(frames, 1) / 8))))
    # Frame indices as int32 where they fit, keys as uint32, computed a slice at a time, and
    # each band's buckets searched a part at a time (a bucket's frames share the key's top
    # bits, so a part holds whole buckets): the arrays per frame are what this costs at a
    # million videos (16 frames each), and a part's temporaries are ~_SLICE frames'.
    index = np.int32 if frames < 2**31 else np.int64
    part_bits = min(bits, max(0, int(np.ceil(np.log2(frames / _SLICE)))))
    found_a, found_b = [], []
    for k in range(64 // bits):
        key = np.empty(frames, np.uint32 if bits <= 32 else np.uint64)
        for lo in range(0, frames, _SLICE):
            key[lo:lo + _SLICE] = (flat[lo:lo + _SLICE] >> np.uint64(bits * k)) & np.uint64((1 << bits) - 1)
        for part in range(1 << part_bits):
            members = (np.flatnonzero(key >> (bits - part_bits) == part).astype(index) if part_bits
                       else np.arange(frames, dtype=index))
            _bucket_pairs(flat, members, key[members], max_hamming, found_a, found_b)
        del key
    frame_a, frame_b = np.concatenate(found_a), np.concatenate(found_b)
    return _video_pairs(owner, videos, frame_a, frame_b, min_matched)


def _bucket_pairs(flat: np.ndarray, members: np.ndarray, key: np.ndarray, max_hamming: int,
                  found_a: list[np.ndarray], found_b: list[np.ndarray]) -> None:
    """Appends the frame pairs within max_hamming bits among `members` (frame indices) that
    share a bucket (an equal `key`), buckets of more than LARGE_BUCKET frames left out."""
    count = len(members)
    index = members.dtype.type
    by_key = np.argsort(key, kind="stable")
    order = members[by_key]
    key = key[by_key]                                       # sorted
    del by_key
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]).astype(index)
    del key
    sizes = np.diff(np.r_[starts, index(count)]).astype(index)
    # Members after each one in its bucket; pairs (p, p + t) for t = 1, 2, ... while any.
    after = np.repeat(starts + sizes, sizes)
    after -= np.arange(1, count + 1, dtype=index)
    after[np.repeat(sizes > LARGE_BUCKET, sizes)] = 0
    del starts, sizes
    t, at = 1, np.flatnonzero(after >= 1).astype(index)
    while len(at):
        a, b = order[at], order[at + t]
        close = np.bitwise_count(flat[a] ^ flat[b]) <= max_hamming
        found_a.append(a[close])
        found_b.append(b[close])
        t += 1
        at = at[after[at] >= t]


def _components(videos: int, content: np.ndarray, flat: np.ndarray, owner: np.ndarray,
                max_hamming: int, min_matched: float, population: int | None = None) -> np.ndarray:
    """The near-duplicate group (a component number) of each of `videos` video indices.
    `content`: each video's content_id as a code (-1: none); `flat`/`owner`: the usable
    frame hashes and their video indices, ascending. Two videos are joined when their codes
    are equal or their frames match (the pair rule, module doc); groups are the connected
    components of those pairs (scipy's csgraph: integer arrays, no per-video objects)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # Same bytes: each video to the first of its content code.
    has = np.flatnonzero(content >= 0)
    codes, first = np.unique(content[has], return_index=True)
    same_a, same_b = has, has[first[np.searchsorted(codes, content[has])]]
    search = _matching_pairs if (population or videos) <= ALL_PAIRS_MAX else _banded_pairs
    near_a, near_b = search(flat, owner, videos, max_hamming, min_matched)
    rows, cols = np.concatenate([same_a, near_a]), np.concatenate([same_b, near_b])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(videos, videos)).tocsr()
    return connected_components(graph, directed=False)[1]


def near_duplicate_groups(videos: dict[str, dict], max_hamming: int, min_matched: float,
                          population: int | None = None) -> dict[str, str]:
    """video_id -> group id. `videos`: video_id -> {content_id, frame_hashes}.

    Up to ALL_PAIRS_MAX videos every pair is compared (exact: _matching_pairs); above, only
    frames sharing a band of their hash (_banded_pairs: never over-merges, may miss a copy
    whose frames all differ from the original's in many bits). `population`: the videos
    being grouped, when `videos` leaves out some that can only be alone in their group (no
    content_id, no usable frame): the search is chosen by it, as if they were given.
    The dict form of what commit does in columns (plan_dataset): tests and benches."""
    ids = sorted(videos)
    code_of: dict[str, int] = {}
    content = np.array([code_of.setdefault(videos[v]["content_id"], len(code_of))
                        if videos[v].get("content_id") else -1 for v in ids], dtype=np.int64)
    flat, owner = _flat(ids, {v: _usable(videos[v].get("frame_hashes")) for v in ids})
    labels = _components(len(ids), content, flat, owner, max_hamming, min_matched, population)
    # Group id: a digest of the smallest content_id among its members (stable while that
    # member stays, and the same whatever URIs, hence video_ids, the copies were listed at).
    smallest: dict[int, str] = {}
    for v, label in zip(ids, labels.tolist()):
        name = videos[v].get("content_id") or v
        smallest[label] = min(smallest.get(label, name), name)
    return {v: group_name(smallest[label]) for v, label in zip(ids, labels.tolist())}


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

    # video_id -> split / content_group: this run's videos and the carried ones in a group
    # with one of them (not carried-only groups: compaction looks up only its own).
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

    # 1. Groups and splits. Carried shards one file per call, each reduced where it is read
    # to one row per (video, split, content group): each file's split is read off its rows.
    read = partial(read_rows, run.output, cfg.s3)
    carried_light = on_threads(partial(read_light, run.output, cfg.s3), [
        ([(posixpath.join(root, s["key"]), None)], LIGHT_COLUMNS) for s in carried_shards])
    shard_split: dict[str, str] = {}
    for shard, table in zip(carried_shards, carried_light):
        present = [s for s in pc.unique(table["split"]).to_pylist() if s]
        shard_split[shard["key"]] = (present[0] if len(present) == 1 else
                                     split_of_name(shard["key"]) or SPLITS[0])
    split_of, name_of, group_counts = _groups_and_splits(records, carried, carried_light, cfg)
    del carried_light

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
        **group_counts,
        "duplicates_dropped": {t: n for t, n in sorted(duplicates.items()) if n},
        "balanced_away": {t: n for t, n in sorted(balanced.items()) if n},
    }
    return DatasetPlan(split_of, name_of, dict(dropped), counts, shard_split)


LIGHT_COLUMNS = ["video_id", "split", "content_group"]


def read_light(output: str, s3: Any, item: tuple[list[tuple[str, list[str] | None]], list[str]]
               ) -> pa.Table:
    """read_rows of carried shards' LIGHT_COLUMNS, reduced where they are read to one row per
    (video_id, split, content_group), with `rows` (how many) and `last` (the position of its
    last row): a video's rows of a task are a few rows of one value, so the driver holds a
    row per video and shard instead of one per carried row."""
    return reduce_light(read_rows(output, s3, item))


def reduce_light(table: pa.Table) -> pa.Table:
    """One row per (video_id, split, content_group) of `table`: `rows`, `last` (read_light)."""
    table = table.select(LIGHT_COLUMNS)
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    table = table.group_by(LIGHT_COLUMNS, use_threads=False).aggregate([("_row", "count"),
                                                                        ("_row", "max")])
    return table.rename_columns({"_row_count": "rows", "_row_max": "last"})


def _truthy(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Where a string column is neither null nor empty (Python's `if value:`)."""
    return pc.fill_null(pc.not_equal(array, ""), False).to_numpy(zero_copy_only=False).astype(bool)


def _groups_and_splits(records: dict[str, dict], carried: pa.Table, light: list[pa.Table], cfg: Config
                       ) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """Step 1 in columns: near-duplicate groups of this run's ok videos and the carried ones
    that can be grouped, and each group's split (its carried rows' most common split, else
    split_for_group). `light`: read_light's tables of the carried shards, in shard order.
    -> (split_of, group_of, counts): dicts only for this run's videos and the carried videos
    grouped with one of them (a carried-only group keeps the split and content group its rows
    have); counts content_groups, groups_by_split, split_conflicts, as the dict-per-video
    rule counted them.

    Per carried video the driver holds a few integers and its ids in Arrow: its content_id
    as a code, its frame hashes as the ledger's flattened list values, its carried row counts
    per split; candidate pairs are index arrays and groups scipy's connected components."""
    # Carried rows per (video, split, content group), over all shards; `at` orders them as
    # they were met (shard, then row), for a video's last content group.
    light = [t.append_column("_at", pa.array(np.int64(i) << 32 | t["last"].to_numpy(), pa.int64()))
             for i, t in enumerate(light) if t.num_rows]
    rows = (pa.concat_tables(light).group_by(LIGHT_COLUMNS, use_threads=False)
            .aggregate([("rows", "sum"), ("_at", "max")])
            .rename_columns({"rows_sum": "rows", "_at_max": "at"}) if light else
            pa.table({"video_id": pa.array([], pa.string()), "split": pa.array([], pa.string()),
                      "content_group": pa.array([], pa.string()), "rows": pa.array([], pa.int64()),
                      "at": pa.array([], pa.int64())}))
    del light
    with_split, with_group = _truthy(rows["split"]), _truthy(rows["content_group"])

    own = sorted(v for v, rec in records.items() if rec.get("status") == "ok")
    own_ids = pa.array(own, pa.string())
    # Carried videos that can only be a group of their own (no content_id, no usable frame
    # hash, no carried rows: e.g. skipped ones) are counted, not grouped.
    known = pa.concat_arrays([own_ids, rows["video_id"].filter(pa.array(with_split | with_group))
                              .combine_chunks()]) if rows.num_rows else own_ids
    alone = _alone(carried, known)
    keep = ~alone
    if len(own) and carried.num_rows:   # this run's record wins over a carried entry of it
        keep &= ~pc.fill_null(pc.is_in(carried["video_id"], value_set=own_ids), False).to_numpy(
            zero_copy_only=False).astype(bool)
    population = len(own) + int(keep.sum()) + int(alone.sum())

    # Videos: this run's (index 0..), then the carried grouped ones in ledger order. Their
    # usable frame hashes: this run's from its records, the carried ones from the ledger's list
    # column a batch at a time (flattened values and each value's entry), never a list per
    # video; `owner` (a frame's video) is ascending.
    # (np.fromiter: no Python list or tuple per frame, which a full run of ok videos has.)
    own_hashes = [records[v].get("frame_hashes") or () for v in own]
    lengths = [len(h) for h in own_hashes]
    own_flat = np.fromiter((h & 0xFFFFFFFFFFFFFFFF for hs in own_hashes for h in hs), np.uint64,
                           count=sum(lengths))
    own_owner = np.repeat(np.arange(len(own), dtype=np.int64), lengths)
    usable = _usable_bits(own_flat)
    own_flat, own_owner = own_flat[usable], own_owner[usable]
    del own_hashes, lengths, usable
    columns = carried.select(["video_id", "content_id", "frame_hashes"])

    def grouped_batches(keep: np.ndarray):   # (grouped entries, usable hashes, each one's entry)
        start = 0
        for batch in columns.to_batches():
            mask = keep[start:start + batch.num_rows]
            start += batch.num_rows
            if mask.any():
                part = batch.filter(pa.array(mask))
                values, entry = _flat_hashes(part["frame_hashes"])
                usable = _usable_bits(values)
                yield part, values[usable], entry[usable]

    # Two passes over the ledger's hashes: the arrays are filled where they lie (concatenated
    # parts would hold them twice at the peak).
    frames = len(own_flat) + sum(len(values) for _, values, _ in grouped_batches(keep))
    n = len(own) + int(keep.sum())
    flat = np.empty(frames, np.uint64)
    owner = np.empty(frames, np.int32 if n < 2**31 else np.int64)
    flat[:len(own_flat)] = own_flat
    owner[:len(own_flat)] = own_owner
    id_parts = [own_ids]
    content_parts = [pa.array([records[v].get("content_id") for v in own], pa.string())]
    filled, video = len(own_flat), len(own)
    del own_flat, own_owner
    for part, values, entry in grouped_batches(keep):
        id_parts.append(part["video_id"].cast(pa.string()))
        content_parts.append(part["content_id"].cast(pa.string()))
        flat[filled:filled + len(values)] = values
        owner[filled:filled + len(values)] = entry + video
        filled, video = filled + len(values), video + part.num_rows
    del keep, columns
    ids, content = pa.concat_arrays(id_parts), pa.concat_arrays(content_parts)
    del id_parts, content_parts
    has_content = _truthy(content)
    codes = np.full(n, -1, np.int64)
    codes[has_content] = pc.dictionary_encode(content.filter(pa.array(has_content))).indices.to_numpy()
    labels = (_components(n, codes, flat, owner, cfg.split.max_hamming, cfg.split.min_matched,
                          population) if n else np.zeros(0, np.int64))
    del flat, owner, codes
    groups = int(labels.max()) + 1 if n else 0
    # Each group's smallest video_id (the order the counts met the splits in).
    order = pc.sort_indices(ids).to_numpy()
    first_member = order[np.unique(labels[order], return_index=True)[1]]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    del order
    is_own = np.arange(len(own))

    # Carried rows per group and split (SPLITS first; any other value counts as a conflict).
    at = pc.fill_null(pc.index_in(rows["video_id"], value_set=ids), -1).to_numpy().astype(np.int64)
    mine = with_split & (at >= 0)
    split_names = pc.unique(rows["split"].filter(pa.array(mine))).to_pylist() if mine.any() else []
    columns = [*SPLITS, *sorted(set(split_names) - set(SPLITS))]
    fixed = np.zeros((groups, len(columns)), np.int64)
    if mine.any():
        col = np.array([columns.index(s) for s in split_names])[
            pc.index_in(rows["split"].filter(pa.array(mine)), value_set=pa.array(split_names)).to_numpy()]
        np.add.at(fixed, (labels[at[mine]], col),
                  rows["rows"].filter(pa.array(mine)).to_numpy())
    has_fixed = fixed.any(axis=1)
    # Carried rows keep their split (the most common; ties to the first of SPLITS); new
    # near-duplicates join it.
    split_code = np.argmax(fixed[:, :len(SPLITS)], axis=1)
    conflicts = int(((fixed > 0).sum(axis=1) - 1)[has_fixed].sum())
    # Group ids (a digest of the smallest content_id, else video_id, of the group) only where
    # needed: a group without carried rows gets its split from it, and this run's videos
    # their content group.
    names = pc.if_else(pa.array(has_content), content, ids)
    by_name = pc.sort_indices(names).to_numpy()
    smallest = by_name[np.unique(labels[by_name], return_index=True)[1]]   # per group
    del by_name
    own_groups = np.unique(labels[is_own])
    own_group_set = set(own_groups.tolist())
    need = np.union1d(np.flatnonzero(~has_fixed), own_groups)
    group_id: dict[int, str] = {}
    for lo in range(0, len(need), 65536):
        part = need[lo:lo + 65536]
        for g, name in zip(part.tolist(), names.take(pa.array(smallest[part])).to_pylist()):
            group_id[g] = group_name(name)
            if not has_fixed[g]:
                split_code[g] = SPLITS.index(split_for_group(group_id[g], cfg.split))
            elif g not in own_group_set:
                del group_id[g]
    del names, smallest

    groups_by_split: Counter = Counter()
    first_of_split: dict[str, str] = {}
    for split, first, count in _alone_splits(carried["video_id"].filter(pa.array(alone)), cfg):
        groups_by_split[split] += count
        first_of_split[split] = min(first_of_split.get(split, first), first)
    for s, split in enumerate(SPLITS):
        in_split = split_code == s
        if in_split.any():
            groups_by_split[split] += int(in_split.sum())
            firsts = first_member[in_split]
            first = ids[int(firsts[np.argmin(rank[firsts])])].as_py()
            first_of_split[split] = min(first_of_split.get(split, first), first)

    # Dicts for this run's groups only: their members' split and content group (the
    # smallest content group their carried rows have, else the group id).
    members = np.flatnonzero(np.isin(labels, own_groups))
    member_ids = ids.take(pa.array(members)).to_pylist()
    member_groups = labels[members].tolist()
    carried_name: dict[int, str] = {}
    if rows.num_rows and len(members):
        named = with_group & np.isin(at, members)
        last: dict[str, tuple[int, str]] = {}   # a video's content group: its last one met
        sub = rows.filter(pa.array(named))
        for vid, group, when in zip(sub["video_id"].to_pylist(), sub["content_group"].to_pylist(),
                                    sub["at"].to_pylist()):
            if vid not in last or when > last[vid][0]:
                last[vid] = (when, group)
        index_of = dict(zip(member_ids, member_groups))
        for vid, (_, group) in last.items():
            g = index_of[vid]
            carried_name[g] = min(carried_name.get(g, group), group)
    split_of = {v: SPLITS[split_code[g]] for v, g in zip(member_ids, member_groups)}
    group_of = {v: carried_name.get(g, group_id[g]) for v, g in zip(member_ids, member_groups)}
    counts = {"content_groups": sum(groups_by_split.values()),
              "groups_by_split": {s: groups_by_split[s]
                                  for s in sorted(first_of_split, key=first_of_split.get)},
              "split_conflicts": conflicts}
    return split_of, group_of, counts


def _alone(carried: pa.Table, grouped: pa.Array) -> np.ndarray:
    """Which carried entries can only be alone in their near-duplicate group: no content_id,
    no usable frame hash (_usable) and not among `grouped` (video_ids of this run's ok
    records and of carried rows with a split or content group)."""
    n = carried.num_rows
    has_usable = np.zeros(n, bool)
    start = 0
    for chunk in carried["frame_hashes"].chunks:   # a batch at a time: no combined copy
        values, entry = _flat_hashes(chunk)
        has_usable[start:start + len(chunk)] = np.bincount(entry[_usable_bits(values)],
                                                           minlength=len(chunk))[:len(chunk)] > 0
        start += len(chunk)
    known = pc.fill_null(pc.is_in(carried["video_id"], value_set=grouped), False)
    return ~_truthy(carried["content_id"]) & ~has_usable & ~known.to_numpy(zero_copy_only=False).astype(bool)


def _flat_hashes(hashes: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list<int64> column's values as uint64 (the ledger stores them signed) and each
    value's entry (its position in `hashes`): views of Arrow's buffers where it can."""
    values = pc.list_flatten(hashes).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    entry = pc.list_parent_indices(hashes).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return values.view(np.uint64), entry


def _usable_bits(values: np.ndarray) -> np.ndarray:
    """Which uint64 frame hashes are usable (_usable: not too flat)."""
    bits = np.bitwise_count(values)
    return (bits >= MIN_BITS) & (bits <= MAX_BITS)


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


def same_video_duplicates(rows: list[dict], droppable: list[bool]) -> set[str]:
    """sample_ids of droppable rows that ask what another row of the same video already asks
    (task, video, frames, question). Carried rows (not droppable) come first: they stay, and
    a duplicate of one among this run's rows goes."""
    drop: set[str] = set()
    first: dict[tuple, str] = {}
    for r, is_own in sorted(zip(rows, droppable), key=lambda x: (x[1], x[0]["sample_id"])):
        key = (r["task"], r["video_id"], tuple(r["frame_indices"] or ()), r["question"])
        if key in first and is_own:
            drop.add(r["sample_id"])
        else:
            first.setdefault(key, r["sample_id"])
    return drop


def _task_drops(own: pa.Table, carried: pa.Table, cfg: Config) -> tuple[set[str], int, int]:
    """One task's sample_ids to leave out of this run's rows: same-video duplicates, then
    balancing drops (carried rows count but stay). -> (drops, duplicates, balanced away).

    Carried rows stay Arrow columns: a duplicate's key holds its video_id, so only carried
    rows of this run's videos (usually none) become dicts for it, and balancing takes them
    as columns (balance.plan_drops_table: the same drops as plan_drops over row dicts)."""
    if own.num_rows and carried.num_rows:
        near = carried.filter(pc.fill_null(pc.is_in(carried["video_id"], value_set=pc.unique(
            own["video_id"].combine_chunks())), False))
    else:
        near = carried.slice(0, 0)
    rows: list[dict] = []
    droppable: list[bool] = []
    for is_own, table in ((True, own), (False, near)):
        for r in table.select(ROW_COLUMNS).to_pylist():
            rows.append(r)
            droppable.append(is_own)
    drop = same_video_duplicates(rows, droppable)
    del rows, droppable, near
    duplicates = len(drop)
    if cfg.balance.enabled:
        table = pa.concat_tables([own.select(BALANCE_COLUMNS), carried.select(BALANCE_COLUMNS)],
                                 promote_options="permissive")
        mine = np.r_[np.ones(own.num_rows, bool), np.zeros(carried.num_rows, bool)]
        if drop:   # (as the row dicts did: any row whose sample_id is dropped leaves the plan)
            keep = pc.invert(pc.is_in(table["sample_id"], value_set=pa.array(sorted(drop), pa.string())))
            keep = pc.fill_null(keep, True)
            mine = mine[keep.to_numpy(zero_copy_only=False).astype(bool)]
            table = table.filter(keep)
        picked = plan_drops_table(table, cfg.balance.max_excess, mine)
        if picked:
            drop |= set(table["sample_id"].take(pa.array(sorted(picked), pa.int64())).to_pylist())
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
