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


class _Recorder:
    """A stage that records the batch sizes it is called with and tags its rows (the
    slicing contract of Fused, which real stages cannot show: they accept any size)."""

    calls: list[tuple[str, int]] = []

    def __init__(self, tag: str):
        self.tag = tag

    def __call__(self, batch):
        n = len(batch["video_id"])
        _Recorder.calls.append((self.tag, n))
        return {**batch, self.tag: [self.tag] * n}


def test_fused_runs_each_step_on_slices_of_its_own_batch_size():
    from proxyqa.core.config import Resources
    from proxyqa.pipeline.plan import Fused, Step, fused

    plan = [Step(_Recorder, {"tag": "a"}, Resources(batch_size=1), drop_after=("a",)),
            Step(_Recorder, {"tag": "b"}, Resources(batch_size=3))]
    _Recorder.calls.clear()
    out = Fused(plan)({"video_id": [f"v{i}" for i in range(5)]})
    assert _Recorder.calls == [("a", 1)] * 5 + [("b", 3), ("b", 2)]
    assert out == {"video_id": [f"v{i}" for i in range(5)], "b": ["b"] * 5}   # "a" dropped
    step = fused(plan, workers=2)
    assert (step.resources.batch_size, step.resources.concurrency, step.resources.num_cpus) == (3, 2, 1.0)


def test_stages_placed_on_their_own_nodes_are_not_fused():
    import pytest

    from proxyqa.core.config import ConfigError, Resources
    from proxyqa.pipeline.plan import Step, fused, unfusable

    plan = [Step(_Recorder, {"tag": "a"}, Resources()),
            Step(_Recorder, {"tag": "b"}, Resources(num_gpus=1)),
            Step(_Recorder, {"tag": "c"}, Resources(custom={"decode_node": 0.01}))]
    assert unfusable(plan) == ["_Recorder", "_Recorder"] and unfusable(plan[:1]) == []
    with pytest.raises(ConfigError, match="cannot fuse"):
        fused(plan)
    assert fused(plan[:1]).stage.__name__ == "Fused"


def test_a_step_waiting_on_a_server_keeps_its_pool_and_splits_the_fused_runs():
    from proxyqa.core.config import Resources
    from proxyqa.pipeline.plan import Step, fuse

    a, b, c, d = (Step(_Recorder, {"tag": t}, Resources()) for t in "abcd")
    c.fusable = False   # as the MLLM step
    assert [s.name for s in fuse([a, b, c, d], workers=2)] == ["Fused", "_Recorder", "_Recorder"]
    first = fuse([a, b, c, d], workers=2)[0]
    assert [s.kwargs["tag"] for s in first.kwargs["steps"]] == ["a", "b"]
    assert first.resources.concurrency == 2
    assert [s.name for s in fuse([a, b, d])] == ["Fused"]
    assert fuse([c, a]) == [c, a]    # a run of one is left as it is


def test_with_an_mllm_the_cpu_stages_are_fused_and_the_mllm_keeps_its_pool(tmp_path):
    from proxyqa.pipeline.plan import fuse

    cfg = load_config(LOCAL_CONFIG, [f"output={tmp_path}", "mllm.enabled=true",
                                     "mllm.endpoint.base_url=http://127.0.0.1:9/v1"])
    plan = steps(cfg, open_run(cfg, config_hash(cfg)))
    fused = fuse(plan, workers=2)
    assert [s.name for s in fused] == ["Fused", "MLLMStage", "ShardWriterStage"]
    assert [s.name for s in fused[0].kwargs["steps"]] == ["DecodeStage", "PoseStage", "BuildTasksStage"]
    assert [s.name for s in fuse(steps(load_config(LOCAL_CONFIG, [f"output={tmp_path}"]),
                                       open_run(cfg, config_hash(cfg))))] == ["Fused"]
