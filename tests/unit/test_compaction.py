"""Commit compaction (pipeline/run.py): staged writer files -> shards of write.rows_per_file
rows, a retried batch read once, identical clips kept once, staging removed, report.parquet
with a row per listed video. Real writer stage and real commit on a local folder; no Ray."""
from __future__ import annotations

import json
import time
from collections import Counter

from proxyqa.core.config import load_config
from proxyqa.core.schema import empty_sample
from proxyqa.core.storage import read_parquet
from proxyqa.pipeline.ledger import empty_entries
from proxyqa.pipeline.run import Plan, commit, open_run
from proxyqa.stages.write import ShardWriterStage
from proxyqa.trainer.reader import read_report

TASKS = ("temporal_order", "body_part_state")


def _video(i: int, content: str | None = None) -> dict:
    vid = f"v{i:04d}"
    content = content or f"c{i:04d}"
    samples = []
    for task in TASKS:
        for k in range(3):
            samples.append({**empty_sample(), "sample_id": f"{content}-{task}-{k}",
                            "video_id": vid, "task": task, "question": f"q{k}"})
    return {"video_uri": f"/in/{vid}.mp4", "video_id": vid, "content_id": content,
            "status": "ok", "reason": None, "size_bytes": 1, "samples": samples,
            "errors_json": "[]"}


def _listed(videos: list[dict]) -> list[dict]:
    return [{"video_uri": v["video_uri"], "video_id": v["video_id"], "size_bytes": 1,
             "mtime": None, "status": None, "reason": None} for v in videos]


def _write(stage: ShardWriterStage, rows: list[dict]) -> None:
    stage({k: [r[k] for r in rows] for k in rows[0]})


def test_staged_batches_become_target_sized_shards_without_duplicates(tmp_path):
    cfg = load_config(None, ["write.rows_per_file=20", "write.commit_parallelism=4",
                             "balance.enabled=false"])   # compaction alone
    cfg.output = str(tmp_path / "out")
    run = open_run(cfg, "h" * 16)
    stage = ShardWriterStage(run.uri, run.run_id, run.config_hash)
    videos = [_video(i) for i in range(40)] + [_video(40, content="c0003")]  # a copy of v0003
    batches = [[v] if v["video_id"] == "v0007" else [] for v in videos]   # v0007 alone
    rest = [v for v in videos if v["video_id"] != "v0007"]
    batches = [b for b in batches if b] + [rest[i:i + 2] for i in range(0, len(rest), 2)]
    for batch in batches:                                   # writer batches of 2 videos
        _write(stage, batch)
    _write(stage, [videos[5], videos[8]])                    # a retried batch, regrouped
    copy = _video(41, content="c0007")                      # v0007's bytes at another URI,
    _write(stage, [copy])                                   # alone too: the same sample_ids
    videos.append(copy)
    staged = list((tmp_path / "out").rglob("_staged/**/*.parquet"))
    assert len(staged) == 2 * 23                            # 23 batches x 2 tasks

    manifest = commit(run, cfg, _listed(videos), Plan(videos and _listed(videos), set(), empty_entries(),
                                                      None, False), time.time(), "/in")
    run_dir = tmp_path / "out" / "runs" / run.run_id
    rows = []
    per_task = Counter()
    for shard in manifest["shards"]:
        table = read_parquet(str(run_dir / shard["path"]))
        assert table.num_rows == shard["rows"]
        rows += table.to_pylist()
        per_task[shard["task"]] += 1
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 40 * 6              # the copy's rows once, retry once
    assert not {r["video_id"] for r in rows} & {"v0040", "v0041"}  # copies listed later: dropped
    for task in TASKS:
        for split in ("train", "validation", "test"):   # only the last file below target
            sizes = sorted(s["rows"] for s in manifest["shards"]
                           if s["task"] == task and s["split"] == split)
            assert all(n >= 20 for n in sizes[1:]), (task, split, sizes)
        assert per_task[task] <= 120 // 20 + 2
    assert not (run_dir / "_staged").exists() and not (run_dir / "_videos").exists()

    report = read_report(str(run_dir))
    assert [v["video_id"] for v in report] == [v["video_id"] for v in videos]
    assert {v["status"] for v in report} == {"ok"}
    assert report[0]["rows"] == {"body_part_state": 3, "temporal_order": 3}
    from proxyqa.pipeline.ledger import read_snapshot

    ledger = {e["video_id"]: e for e in read_snapshot(run.fs, run.root, run.run_id)}
    assert ledger["v0040"]["rows_json"] == "{}" and not ledger["v0040"]["shards"]  # v0003's rows
    assert set(ledger["v0003"]["shards"]) <= {s["path"] and f"runs/{run.run_id}/{s['path']}"
                                             for s in manifest["shards"]}
    small = json.loads((run_dir / "report.json").read_text())
    assert "videos" not in small and small["counts"]["videos"] == 42


def test_a_commit_that_died_is_redone_without_stale_shards(tmp_path, monkeypatch):
    import proxyqa.pipeline.run as run_module

    cfg = load_config(None, ["write.rows_per_file=7", "balance.enabled=false"])
    cfg.output = str(tmp_path / "out")
    run = open_run(cfg, "h" * 16)
    stage = ShardWriterStage(run.uri, run.run_id, run.config_hash)
    videos = [_video(i) for i in range(10)]
    for v in videos:
        _write(stage, [v])
    listed = _listed(videos)
    real = run_module.write_bytes_atomic

    def dies(fs, path, data):
        if path.endswith("manifest.json"):
            raise RuntimeError("crash before the manifest")
        real(fs, path, data)

    monkeypatch.setattr(run_module, "write_bytes_atomic", dies)
    try:
        commit(run, cfg, listed, Plan(listed, set(), empty_entries(), None, False), time.time(), "/in")
    except RuntimeError:
        pass
    monkeypatch.undo()
    run_dir = tmp_path / "out" / "runs" / run.run_id
    first = {p.name for p in run_dir.glob("data/*/*.parquet")}
    assert first and (run_dir / "_staged").exists()          # staging kept for the redo
    # The redo plans other groups (a larger target): the first attempt's files must go.
    cfg.write.rows_per_file = 25
    manifest = commit(run, cfg, listed, Plan(listed, set(), empty_entries(), None, False), time.time(), "/in")
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.glob("data/*/*.parquet")}
    assert on_disk == {s["path"] for s in manifest["shards"]}
    assert sum(s["rows"] for s in manifest["shards"]) == 60


def test_shard_files_reach_the_target_per_task_and_split_and_a_small_remainder_joins_the_last():
    from proxyqa.pipeline.dataset import DatasetPlan
    from proxyqa.pipeline.run import Run, _plan_compaction

    run = Run("/out", "r1", "h", None, "/out")

    def plan(rows_per_video: list[int], target: int, split_of=None, dropped=None):
        # One staged file per video (writer batches of one), all of task temporal_order.
        kept = {f"_staged/temporal_order/part-{i:03d}.parquet": {f"v{i:03d}": n}
                for i, n in enumerate(rows_per_video)}
        dataset = DatasetPlan(split_of or {}, {}, dropped or {}, {}, {})
        return _plan_compaction(run, kept, target, dataset)

    def sizes(*args, **kwargs) -> list[int]:
        return [g.rows for g in plan(*args, **kwargs)]

    assert sizes([3] * 10, 10) == [12, 12, 6]         # a remainder of half the target stays apart
    assert sizes([3] * 9, 10) == [12, 15]             # 12 + 12 + 3: under half joins the file before
    assert sizes([4] * 2, 10) == [8]                  # fewer rows than the target: one file
    assert sizes([25], 10) == [25]                    # one video's rows are never split
    # Splits are cut apart: every (task, split) has at most one file below the target.
    split_of = {f"v{i:03d}": ("validation" if i % 5 == 0 else "train") for i in range(40)}
    groups = plan([3] * 40, 10, split_of)
    by_split = {s: [g.rows for g in groups if g.split == s] for s in ("train", "validation")}
    assert by_split == {"train": [12, 12, 12, 12, 12, 12, 12, 12], "validation": [12, 12]}
    assert all(set(split_of[v] for _, vids in g.sources for v in vids) == {g.split} for g in groups)
    # Dropped rows (duplicates, balancing) are left out and not counted towards the target.
    dropped = {(f"v{i:03d}", "temporal_order"): ["s1", "s2"] for i in range(10)}
    groups = plan([3] * 10, 10, dropped=dropped)
    assert [g.rows for g in groups] == [10]
    assert sorted(groups[0].drop) == sorted(["s1", "s2"] * 10)

