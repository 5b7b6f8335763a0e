"""Commit's near-duplicate grouping (pipeline/dataset.py) at many videos: time, memory, recall.

    python bench/near_duplicates.py [--videos 2000 20000 100000] [--copies 100]

N videos of 16 random 64-bit frame hashes (distinct clips: the worst case for the band
buckets, which only hold chance collisions) plus `--copies` planted near-duplicates of the
first videos: 0-3 bits flipped per frame (a re-encode), every other one trimmed to 8 frames.
Reported per N: wall time and peak traced memory of `near_duplicate_groups` (numpy and
Python allocations), how many copies joined their original, how many groups the strangers
made (all apart is right), and which search ran (exact all pairs up to ALL_PAIRS_MAX
videos, bands above). At the smallest N above ALL_PAIRS_MAX the banded pairs are also
checked against the exact ones (a subset: bands never over-merge).

Writes bench/results/near_duplicates.json. Not a test: timings on a shared machine vary.
"""
from __future__ import annotations

import argparse
import random
import time
import tracemalloc

import common  # noqa: F401  (first: environment)
from common import machine, table, write_json

from proxyqa.pipeline import dataset as ds


def videos_with_copies(n: int, copies: int, seed: int = 0) -> dict[str, dict]:
    rng = random.Random(seed)
    videos = {f"v{i:07d}": {"content_id": None, "frame_hashes": [rng.getrandbits(64) for _ in range(16)]}
              for i in range(n)}
    for c in range(copies):
        frames = videos[f"v{c:07d}"]["frame_hashes"][: 16 if c % 2 else 8]
        videos[f"copy{c:05d}"] = {"content_id": None, "frame_hashes": [
            h ^ sum(1 << b for b in rng.sample(range(64), rng.randint(0, 3))) for h in frames]}
    return videos


def measure(n: int, copies: int) -> dict:
    videos = videos_with_copies(n, copies)
    tracemalloc.start()
    start = time.perf_counter()
    groups = ds.near_duplicate_groups(videos, max_hamming=10, min_matched=0.5)
    wall = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    found = sum(groups[f"copy{c:05d}"] == groups[f"v{c:07d}"] for c in range(copies))
    out = {"videos": n + copies, "search": "all pairs" if n + copies <= ds.ALL_PAIRS_MAX else "bands",
           "wall_s": round(wall, 2), "peak_traced_mib": round(peak / 2**20, 1),
           "copies_found": f"{found}/{copies}",
           "groups_of_strangers_ok": len(set(groups.values())) == n}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--copies", type=int, default=100)
    args = parser.parse_args()
    rows = [measure(n - args.copies, args.copies) for n in args.videos]
    above = [n for n in args.videos if n > ds.ALL_PAIRS_MAX]
    check = {}
    if above:   # bands never over-merge: their pairs are a subset of the exact ones
        videos = videos_with_copies(min(above) - args.copies, args.copies)
        ids = sorted(videos)
        usable = {v: ds._usable(videos[v]["frame_hashes"]) for v in ids}
        flat, owner = ds._flat(ids, usable)

        def pairs(search) -> set[tuple[int, int]]:
            a, b = search(flat, owner, len(ids), 10, 0.5)
            return set(zip(a.tolist(), b.tolist()))
        banded = pairs(ds._banded_pairs)
        exact = pairs(ds._matching_pairs) if len(ids) <= 25000 else None
        check = {"videos": len(ids), "banded_pairs": len(banded),
                 "exact_pairs": None if exact is None else len(exact),
                 "banded_subset_of_exact": None if exact is None else banded <= exact}
    print(table(rows, ["videos", "search", "wall_s", "peak_traced_mib", "copies_found",
                       "groups_of_strangers_ok"]))
    if check:
        print(f"bands vs all pairs at {check['videos']} videos: {check}")
    print(f"-> {write_json('near_duplicates', {'machine': machine(), 'rows': rows, 'check': check})}")


if __name__ == "__main__":
    main()
