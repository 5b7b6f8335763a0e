"""The local executor runs the same plan as `proxyqa run` in one process: over two real
clips its rows are the golden rows `proxyqa run` (Ray) gives for them, and the writer step
writes their records."""
from __future__ import annotations

import json
import shutil

from proxyqa.core.config import load_config
from proxyqa.pipeline.fingerprint import config_hash
from proxyqa.pipeline.local import LocalExecutor
from proxyqa.pipeline.plan import HEAVY_COLUMNS, steps
from proxyqa.pipeline.run import open_run
from proxyqa.pipeline.sources import list_videos
from tests.helpers import CLIPS, LOCAL_CONFIG, REPO

GOLDEN = json.loads((REPO / "tests" / "data" / "golden_local_clips.json").read_text())["rows"]


def test_local_executor_gives_the_rows_of_a_ray_run(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("pose2sim_single_cam01.mp4", "kinetics_ta_chi.mp4"):
        shutil.copy(CLIPS / name, clips / name)
    cfg = load_config(LOCAL_CONFIG, [f"input={clips}", f"output={tmp_path / 'out'}"])
    run = open_run(cfg, config_hash(cfg))
    plan = steps(cfg, run)
    assert [s.stage.__name__ for s in plan] == ["DecodeStage", "PoseStage", "BuildTasksStage",
                                                 "ShardWriterStage"]
    videos = list_videos(cfg)

    rows = list(LocalExecutor(plan[:-1]).run(videos, batch_size=2))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert not any(name in rows[0] for name in HEAVY_COLUMNS)   # dropped as the plan says
    samples = [s for r in rows for s in r["samples"]]
    assert len(samples) > 10
    # The golden rows went through the commit too (balancing and dedup drop some): the rows
    # it kept are here, with the same answers.
    kept = [s for s in samples if s["sample_id"] in GOLDEN]
    assert len(kept) >= len(samples) // 2
    for s in kept:
        assert GOLDEN[s["sample_id"]] == [s["task"], s["answer"], s["answer_struct"]]

    records = list(LocalExecutor(plan[-1:]).run(rows))
    assert sorted(r["video_id"] for r in records) == sorted(v["video_id"] for v in videos)
    counts = {r["video_id"]: json.loads(r["counts_json"]) for r in records}
    for row in rows:
        assert sum(counts[row["video_id"]].values()) == len(row["samples"]) > 0
        assert all(shard.endswith(".parquet") for shard in next(
            r["shards"] for r in records if r["video_id"] == row["video_id"]))
