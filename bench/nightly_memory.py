"""Driver memory of a nightly (`--incremental`) with nothing new, per carried video, without Ray.

    python bench/nightly_memory.py [--sizes 20000,100000] [--kind skipped|ok|balance]

Each size runs in a fresh process: a synthetic base run (its ledger snapshot, manifest and
`latest`) of N videos, then `plan_run` and `commit` of an incremental run over the same N
videos in that process (every video carried, so no Ray starts, as in a real nightly with
nothing new), the process RSS sampled every 20 ms. Uses only `open_run`, `plan_run`,
`commit` and `LEDGER_SCHEMA`, so the same script measures another checkout's code: run it
with the Python of a venv where that checkout is installed (the measured child process
imports `proxyqa` from its venv), e.g. `/work/main/.venv/bin/python bench/nightly_memory.py`.

- `skipped`: entries like `scale_orchestration.py --nightly`'s (status skipped, no rows).
- `ok`: entries with rows: a content_id, 16 frame hashes, rows per task, 8 shard keys (one
  per task, 250 videos a shard; the files exist but are empty). The dataset step's reading
  of the carried shards' light columns (split, content group, balancing) is stubbed out:
  that part grows with the dataset's rows, not with the ledger; `balance` measures it.
- `balance`: the commit step's balancing of one task for real (`pipeline.dataset._task_drops`
  over Arrow tables, as commit calls it): N carried rows (2 per video, 20 templated masked
  questions with numbers, 8 answers skewed per question, 3 or 4 choices) and 1% of N new
  rows. Reported: RSS and tracemalloc peaks over the tables' own memory, per carried row.
  Then, once, the greedy's time over `--greedy-rows` rows (default 50,000), all droppable (a
  full run), at skews where ~5% and ~30% of them must go (0: skip). `--sizes` count rows.

Reported: RSS before planning, the peak through plan + commit, the difference per carried
video, and the line a + b x N through the two largest sizes at N = 1,000,000. Writes
bench/results/nightly_memory.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# The measured child imports only proxyqa (not bench/common.py, whose torch import alone is
# ~450 MiB of RSS), so the line's a is the pipeline's own; the parent prints the results.
REPO = Path(__file__).resolve().parents[1]
BASE_RUN = "20260101T000000000Z-aaaaaaaa"
VIDEOS_PER_SHARD, TASKS, FRAMES = 250, 8, 16



class RssPeak:
    """This process's RSS before, and its peak since (sampled every 10 ms on a thread)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.proc = psutil.Process()
        self.before = self.value = self.proc.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import time

        while not self.done.is_set():
            self.value = max(self.value, self.proc.memory_info().rss)
            time.sleep(0.01)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

def one(n: int, kind: str) -> dict:
    """One nightly over n carried videos in this process (see the module doc)."""
    import gc
    import hashlib
    import os
    import shutil
    import tempfile
    import time

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from proxyqa.core.config import load_config
    from proxyqa.pipeline import dataset
    from proxyqa.pipeline.fingerprint import config_hash
    from proxyqa.pipeline.ledger import LEDGER_SCHEMA
    from proxyqa.pipeline.memory import release_freed_memory
    from proxyqa.pipeline.run import commit, open_run, plan_run
    from proxyqa.pipeline.sources import LISTING_SCHEMA

    out = tempfile.mkdtemp(prefix="proxyqa-nightly-mem-")
    cfg = load_config(str(REPO / "configs" / "local.yaml"), [])
    cfg.output = out
    chash = config_hash(cfg)
    ok = kind == "ok"
    rng = np.random.default_rng(0)
    uris = [f"/data/videos/v{i:07d}.mp4" for i in range(n)]
    vids = [hashlib.sha256(u.encode()).hexdigest()[:20] for u in uris]
    os.makedirs(f"{out}/runs/{BASE_RUN}", exist_ok=True)
    os.makedirs(f"{out}/ledger", exist_ok=True)
    shards = []
    if ok:
        for t in range(TASKS):
            os.makedirs(f"{out}/runs/{BASE_RUN}/data/task{t}", exist_ok=True)
            for f in range(max(1, n // VIDEOS_PER_SHARD)):
                name = f"data/task{t}/train-{f:016x}.parquet"
                open(f"{out}/runs/{BASE_RUN}/{name}", "wb").close()
                shards.append({"path": name, "task": f"task{t}", "rows": 2 * VIDEOS_PER_SHARD,
                               "bytes": 1, "run_id": BASE_RUN, "split": "train"})
        dataset.read_rows = lambda output, s3, item: pa.table(
            {c: pa.array([], pa.list_(pa.int64()) if c in ("choices", "frame_indices") else pa.string())
             for c in item[1]})
    cols: dict[str, list] = {f.name: [] for f in LEDGER_SCHEMA}
    for i in sorted(range(n), key=vids.__getitem__):
        cols["video_id"].append(vids[i])
        cols["video_uri"].append(uris[i])
        cols["content_id"].append(hashlib.sha256(vids[i].encode()).hexdigest()[:32] if ok else None)
        cols["config_hash"].append(chash)
        cols["status"].append("ok" if ok else "skipped")
        cols["reason"].append(None if ok else "decode: over_limit: 136988 bytes > limits.max_bytes=1")
        cols["rows_json"].append(json.dumps({f"task{t}": 2 for t in range(TASKS)}) if ok else "{}")
        cols["shards"].append([f"runs/{BASE_RUN}/data/task{t}/train-{i // VIDEOS_PER_SHARD:016x}.parquet"
                               for t in range(TASKS)] if ok else [])
        cols["done_run_id"].append(BASE_RUN)
        cols["retry_errors"].append([])
        cols["frame_hashes"].append(rng.integers(0, 2**62, FRAMES).tolist() if ok else None)
        cols["snapshot_run_id"].append(BASE_RUN)
    pq.write_table(pa.table(cols, schema=LEDGER_SCHEMA), f"{out}/ledger/{BASE_RUN}.parquet",
                   compression="zstd", row_group_size=256)
    with open(f"{out}/runs/{BASE_RUN}/manifest.json", "w") as fh:
        json.dump({"run_id": BASE_RUN, "complete": True, "shards": shards}, fh)
    with open(f"{out}/latest", "w") as fh:
        fh.write(f"runs/{BASE_RUN}\n")
    listing = pa.table({"video_uri": uris, "video_id": vids, "size_bytes": [136988] * n,
                        "mtime": ["1767225600.0"] * n, "status": pa.nulls(n, pa.string()),
                        "reason": pa.nulls(n, pa.string())}, schema=LISTING_SCHEMA)
    del cols, uris, vids, shards
    gc.collect()
    release_freed_memory()

    peak = RssPeak()
    before = peak.before
    start = time.time()
    run = open_run(cfg, chash, "nightly")
    plan = plan_run(run, listing, incremental=True)
    plan_peak = peak.value
    manifest = commit(run, cfg, listing, plan, start, "/data/videos")
    wall = time.time() - start
    peak.stop()
    shutil.rmtree(out)
    assert manifest["counts"]["videos_carried"] == n, manifest["counts"]
    return {"videos": n, "kind": kind, "rss_before_mib": round(before / 2**20, 1),
            "plan_peak_mib": round(plan_peak / 2**20, 1), "peak_mib": round(peak.value / 2**20, 1),
            "delta_mib": round((peak.value - before) / 2**20, 1),
            "delta_bytes_per_video": round((peak.value - before) / n), "wall_s": round(wall, 2)}


def synthetic_task(n: int, skew: float, seed: int = 0):
    """One task's light rows as commit reads them (`balance` in the module doc)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    states = np.array(["straight", "bent at the knee", "bent at the elbow", "raised above the head",
                       "hanging down by the side", "leaning", "upright", "stretched out"])
    parts = ["left leg", "right leg", "left arm", "right arm", "torso"]
    templates = ["Which option best describes the {p} in frame {f}?", "In image {f}, how is the {p} held?",
                 "What state is the {p} in at frame {f} of 16?", "Frame {f}: the {p} is ...?"]
    q_of = rng.integers(0, len(parts) * len(templates), n)
    frame = rng.integers(1, 17, n)
    question = [templates[q % 4].format(p=parts[q // 4], f=f) for q, f in zip(q_of.tolist(), frame.tolist())]
    # Each masked question has its own over-asked answer.
    top = q_of % len(states)
    answer = np.where(rng.random(n) < skew, top, rng.integers(0, len(states), n))
    four = rng.random(n) < 0.5
    choices = []
    for a, f4 in zip(answer.tolist(), four.tolist()):
        wrong = [s for s in range(len(states)) if s != a][:3 if f4 else 2]
        choices.append([states[a]] + [states[w] for w in wrong])
    video = np.arange(n) // 2
    return pa.table({
        "sample_id": pa.array([f"{x:016x}" for x in rng.integers(0, 2**62, n).tolist()]),
        "video_id": pa.array([f"vid{v:09d}" for v in video.tolist()]),
        "task": pa.array(["body_part_state"] * n),
        "question": pa.array(question), "answer": pa.array(states[answer].tolist()),
        "choices": pa.array(choices, pa.list_(pa.string())),
        "frame_indices": pa.array([[int(f)] for f in frame.tolist()], pa.list_(pa.int64()))})


def balance_one(n: int, greedy_rows: int) -> dict:
    """Balancing one task of n carried rows in this process (`balance` in the module doc)."""
    import gc
    import time
    import tracemalloc

    import pyarrow as pa

    from proxyqa.core.balance import plan_drops_table
    from proxyqa.core.config import load_config
    from proxyqa.pipeline import dataset
    from proxyqa.pipeline.memory import release_freed_memory

    cfg = load_config(str(REPO / "configs" / "local.yaml"), [])
    rows = synthetic_task(n + n // 100, skew=0.5)
    carried, own = rows.slice(0, n), rows.slice(n)
    carried = pa.Table.from_batches(carried.to_batches())   # own buffers, as read from shards
    own = pa.Table.from_batches(own.to_batches())
    del rows
    gc.collect()
    release_freed_memory()
    peak = RssPeak()
    before = peak.before
    start = time.time()
    drop, dup, bal = dataset._task_drops(own, carried, cfg)
    wall = time.time() - start
    peak.stop()
    tracemalloc.start()
    dataset._task_drops(own, carried, cfg)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = {"carried_rows": n, "own_rows": own.num_rows, "balanced_away": bal,
           "rss_delta_mib": round((peak.value - before) / 2**20, 1),
           "rss_bytes_per_carried_row": round((peak.value - before) / n),
           "traced_bytes_per_carried_row": round(traced / n), "wall_s": round(wall, 2)}
    for skew in (0.27, 0.5) if greedy_rows else ():
        table = synthetic_task(greedy_rows, skew, seed=1)
        start = time.time()
        picked = plan_drops_table(table.select(dataset.BALANCE_COLUMNS), cfg.balance.max_excess)
        out[f"greedy_{greedy_rows}_skew{skew}_dropped"] = round(len(picked) / greedy_rows, 3)
        out[f"greedy_{greedy_rows}_skew{skew}_s"] = round(time.time() - start, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--kind", choices=["skipped", "ok", "balance"], default="skipped")
    parser.add_argument("--greedy-rows", type=int, default=50000, help="balance: greedy timing rows (0: skip)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)   # a child process
    args = parser.parse_args()
    if args.one:
        if args.kind == "balance":
            print(json.dumps(balance_one(args.one, args.greedy_rows)))
        else:
            print(json.dumps(one(args.one, args.kind)))
        return
    if args.kind == "balance":
        import common  # noqa: F401  (environment)
        from common import table, write_json
        rows = []
        for i, n in enumerate(int(s) for s in args.sizes.split(",")):
            done = subprocess.run([sys.executable, __file__, "--one", str(n), "--kind", "balance",
                                   "--greedy-rows", str(args.greedy_rows if i == 0 else 0)],
                                  check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        for r in rows:
            print(table([r], list(r)))
        write_json("nightly_memory_balance", {"runs": rows})
        return
    import common  # noqa: F401  (environment)
    from common import table, write_json
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--kind", args.kind],
                              check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(table(rows, ["videos", "kind", "rss_before_mib", "plan_peak_mib", "peak_mib", "delta_mib",
                       "delta_bytes_per_video", "wall_s"]))
    result = {"runs": rows}
    if len(rows) >= 2:
        (n0, m0), (n1, m1) = sorted((r["videos"], r["peak_mib"]) for r in rows)[-2:]
        b = (m1 - m0) / (n1 - n0)
        result["extrapolation"] = {"a_mib": round(m1 - b * n1, 1), "b_bytes_per_video": round(b * 2**20),
                                   "peak_mib_at_1m": round(m1 + b * (1_000_000 - n1), 1)}
        print(f"peak = {result['extrapolation']['a_mib']} MiB + {result['extrapolation']['b_bytes_per_video']} B"
              f" x N: {result['extrapolation']['peak_mib_at_1m']} MiB at 1,000,000 carried videos")
    write_json(f"nightly_memory_{args.kind}", result)


if __name__ == "__main__":
    main()
