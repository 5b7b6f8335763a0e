"""Commit's near-duplicate groups and splits in columns (pipeline/dataset.py
`_groups_and_splits`) against the rule as it is defined: pairs compared one by one
(`_matched_share`), groups closed transitively, a dict per video (the code before issue 15's
columnar grouping). Random nightlies: this run's videos, carried ones with and without rows,
near-duplicate copies across the two, identical bytes, carried groups whose rows disagree on
their split, carried videos that can only be alone."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import pyarrow as pa
import pytest

from proxyqa.core.config import SplitConfig
from proxyqa.core.schema import SPLITS
from proxyqa.pipeline import dataset as ds


class _Cfg:
    def __init__(self, max_hamming: int, min_matched: float):
        self.split = SplitConfig(max_hamming=max_hamming, min_matched=min_matched)


def reference(records: dict[str, dict], carried: list[dict], shards: list[list[tuple]], cfg: _Cfg):
    """Step 1 as the dict-per-video code computed it, its grouping pair by pair."""
    carried_split: dict[str, Counter] = defaultdict(Counter)
    carried_group: dict[str, str] = {}
    for rows in shards:
        for vid, split, group in rows:
            if split:
                carried_split[vid][split] += 1
            if group:
                carried_group[vid] = group
    videos = {v: {"content_id": r.get("content_id"), "frame_hashes": r.get("frame_hashes")}
              for v, r in records.items() if r.get("status") == "ok"}
    grouped = set(videos) | set(carried_split) | set(carried_group)
    alone = []
    for e in carried:
        if not e["content_id"] and not ds._usable(e["frame_hashes"]) and e["video_id"] not in grouped:
            alone.append(e["video_id"])
        else:
            videos.setdefault(e["video_id"], {"content_id": e["content_id"],
                                              "frame_hashes": e["frame_hashes"]})
    ids = sorted(videos)
    parent = {v: v for v in ids}

    def find(v: str) -> str:
        while parent[v] != v:
            v = parent[v]
        return v

    usable = {v: ds._usable(videos[v]["frame_hashes"]) for v in ids}
    mh, mm = cfg.split.max_hamming, cfg.split.min_matched
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            same = videos[a]["content_id"] and videos[a]["content_id"] == videos[b]["content_id"]
            if same or max(ds._matched_share(usable[a], usable[b], mh),
                           ds._matched_share(usable[b], usable[a], mh)) >= mm:
                ra, rb = find(a), find(b)
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[str]] = defaultdict(list)
    for v in ids:
        members[find(v)].append(v)
    split_of, name_of = {}, {}
    groups_by_split: Counter = Counter()
    first_of_split: dict[str, str] = {}
    for vid in alone:
        split = ds.split_for_group(ds.group_name(vid), cfg.split)
        groups_by_split[split] += 1
        first_of_split[split] = min(first_of_split.get(split, vid), vid)
    conflicts = 0
    for vids in members.values():
        group = ds.group_name(min(videos[v]["content_id"] or v for v in vids))
        fixed = Counter()
        for vid in vids:
            fixed.update(carried_split.get(vid, {}))
        if fixed:
            split = max(SPLITS, key=lambda s: (fixed[s], -SPLITS.index(s)))
            conflicts += len([s for s in fixed if fixed[s]]) - 1
        else:
            split = ds.split_for_group(group, cfg.split)
        names = sorted(carried_group[v] for v in vids if v in carried_group)
        for vid in vids:
            split_of[vid] = split
            name_of[vid] = names[0] if names else group
        groups_by_split[split] += 1
        first_of_split[split] = min(first_of_split.get(split, vids[0]), vids[0])
    counts = {"content_groups": sum(groups_by_split.values()),
              "groups_by_split": {s: groups_by_split[s] for s in sorted(first_of_split, key=first_of_split.get)},
              "split_conflicts": conflicts}
    own_groups = {find(v) for v in records if v in parent and records[v].get("status") == "ok"}
    with_own = {v for v in ids if find(v) in own_groups}
    return split_of, name_of, counts, with_own, {find(v) for v in ids}


def nightly(seed: int) -> tuple[dict, list[dict], list[list[tuple]]]:
    """This run's records, the carried ledger entries, the carried shards' rows."""
    rng = random.Random(seed)
    records: dict[str, dict] = {}
    carried: list[dict] = []
    shards: list[list[tuple]] = [[] for _ in range(6)]

    def noisy(frames: list[int], most: int) -> list[int]:
        return [h ^ sum(1 << b for b in rng.sample(range(64), rng.randint(0, most))) for h in frames]

    def signed(h: int) -> int:   # the ledger stores int64
        return h - (1 << 64) if h >= 1 << 63 else h

    n = 0
    for k in range(70):   # source clips, each with copies here and there
        base = [rng.getrandbits(64) for _ in range(rng.choice([0, 1, 4, 8, 16]))]
        if rng.random() < 0.1:
            base[:2] = [0, (1 << 64) - 1][:len(base[:2])]   # flat frames: never matched
        content = f"c{k:03d}" if rng.random() < 0.7 else None
        group = f"g{k:03d}"
        for _ in range(rng.randint(1, 4)):
            n += 1
            vid = f"v{rng.getrandbits(40):010x}"
            frames = noisy(base, 8)[rng.randint(0, 4):]
            cid = (content if rng.random() < 0.3 else f"u{n:04d}") if content else None
            if rng.random() < 0.3:   # this run's video
                status = "ok" if rng.random() < 0.85 else rng.choice(["failed", "skipped"])
                records[vid] = {"status": status, "content_id": cid,
                                "frame_hashes": frames if rng.random() < 0.9 else None}
                continue
            hashes = [signed(h) for h in frames] if rng.random() < 0.85 else None
            carried.append({"video_id": vid, "content_id": cid if rng.random() < 0.9 else "",
                            "frame_hashes": hashes})
            if rng.random() < 0.75:   # rows in some shards, mostly of one split
                split = rng.choice(SPLITS) if rng.random() < 0.6 else SPLITS[k % 3]
                for shard in rng.sample(shards, rng.randint(1, 3)):
                    for _ in range(rng.randint(1, 3)):
                        shard.append((vid, split if rng.random() < 0.9 else rng.choice(SPLITS),
                                      group if rng.random() < 0.8 else rng.choice([None, f"h{k:03d}"])))
    for i in range(25):   # carried videos that can only be alone (skipped: nothing to match)
        carried.append({"video_id": f"s{i:03d}", "content_id": None, "frame_hashes": None})
    for shard in shards:
        rng.shuffle(shard)
    return records, carried, shards


@pytest.mark.parametrize("seed,max_hamming,min_matched",
                         [(1, 10, 0.5), (2, 10, 0.5), (3, 6, 0.75), (4, 8, 0.7), (5, 0, 0.5)])
def test_columnar_groups_and_splits_match_the_pair_by_pair_rule(seed, max_hamming, min_matched):
    records, carried, shards = nightly(seed)
    cfg = _Cfg(max_hamming, min_matched)
    table = pa.table({"video_id": pa.array([e["video_id"] for e in carried], pa.string()),
                      "content_id": pa.array([e["content_id"] for e in carried], pa.string()),
                      "frame_hashes": pa.array([e["frame_hashes"] for e in carried], pa.list_(pa.int64()))})
    light = [ds.reduce_light(pa.table({c: pa.array([r[i] for r in rows], pa.string())
                                       for i, c in enumerate(ds.LIGHT_COLUMNS)})) for rows in shards]
    split_of, group_of, counts = ds._groups_and_splits(records, table, light, cfg)
    ref_split, ref_name, ref_counts, with_own, groups = reference(records, carried, shards, cfg)

    assert counts == ref_counts
    # Dicts only for this run's groups, and there the same splits and content groups.
    assert set(split_of) == set(group_of) == with_own
    assert split_of == {v: ref_split[v] for v in with_own}
    assert group_of == {v: ref_name[v] for v in with_own}
    # The scenario is worth checking: copies joined across this run and the carried ones,
    # carried rows that disagree, groups named by their carried rows.
    assert len(groups) < len({*records, *(e["video_id"] for e in carried)})
    assert any(v not in records for v in with_own)
    if max_hamming:
        assert counts["split_conflicts"] > 0


def test_columnar_groups_without_carried_videos_or_with_nothing_to_group():
    cfg = _Cfg(10, 0.5)
    empty = pa.table({"video_id": pa.array([], pa.string()), "content_id": pa.array([], pa.string()),
                      "frame_hashes": pa.array([], pa.list_(pa.int64()))})
    assert ds._groups_and_splits({}, empty, [], cfg) == ({}, {}, {"content_groups": 0, "groups_by_split": {},
                                                                   "split_conflicts": 0})
    records = {"a": {"status": "ok", "content_id": "x", "frame_hashes": None},
               "b": {"status": "ok", "content_id": "x", "frame_hashes": None}}
    split_of, group_of, counts = ds._groups_and_splits(records, empty, [], cfg)
    assert group_of == {"a": ds.group_name("x"), "b": ds.group_name("x")}
    assert split_of["a"] == split_of["b"] == ds.split_for_group(ds.group_name("x"), cfg.split)
    assert counts["content_groups"] == 1
