"""Pure parts of the Ray wiring (pipeline/graph.py), no Ray: input blocks and the
placement check the unschedulable watchdog uses."""
from __future__ import annotations

from proxyqa.core.config import load_config
from proxyqa.pipeline.graph import input_blocks, unplaceable, videos_per_block
from proxyqa.pipeline.sources import as_listing


def test_a_million_videos_make_a_few_thousand_blocks():
    cfg = load_config(None, [])
    assert videos_per_block(cfg, 1_000_000, 64) == 256            # capped
    assert videos_per_block(cfg, 20_000, 2) == 256
    assert videos_per_block(cfg, 2_000, 2) == 63                  # >= 16 blocks per CPU
    assert videos_per_block(cfg, 9, 2) == 1                       # small runs: one per block
    videos = [{"video_uri": f"/v/{i}.mp4", "video_id": f"id{i}", "size_bytes": i, "mtime": None,
               "status": None, "reason": None} for i in range(1000)]
    blocks = input_blocks(videos, 256)
    assert [b.num_rows for b in blocks] == [256, 256, 256, 232]
    assert blocks[3].column("video_id").to_pylist()[-1] == "id999"
    assert blocks[0].schema.field("status").type == blocks[0].schema.field("video_uri").type
    # The listing as the CLI keeps it (Arrow): the same blocks, as slices of it.
    from_table = input_blocks(as_listing(videos), 256)
    assert [b.to_pylist() for b in from_table] == [b.to_pylist() for b in blocks]
    assert from_table[0].schema == blocks[0].schema


def test_a_stage_is_unplaceable_only_when_no_single_node_fits_one_worker():
    needs = {"DecodeStage": {"CPU": 0.25, "decode_node": 0.01},
             "PoseStage": {"CPU": 2, "GPU": 1, "gpu_node": 0.01}}
    cpu_node = {"CPU": 8, "decode_node": 1, "memory": 1e10}
    gpu_node = {"CPU": 8, "GPU": 1, "gpu_node": 1}
    assert unplaceable(needs, [cpu_node, gpu_node]) == []
    assert unplaceable(needs, [cpu_node]) == ["PoseStage"]
    assert unplaceable(needs, [gpu_node]) == ["DecodeStage"]
    # Resources split over two nodes do not make one worker fit.
    assert unplaceable(needs, [{"CPU": 8, "GPU": 1}, {"gpu_node": 1}]) == ["DecodeStage", "PoseStage"]
    assert unplaceable(needs, []) == ["DecodeStage", "PoseStage"]


def test_a_pass_is_stalled_only_after_losing_a_node_and_going_quiet():
    from proxyqa.pipeline.graph import StallWatch

    watch = StallWatch(nodes=3, timeout_s=10)
    assert not watch.stalled(0, 3, 0.0)
    assert not watch.stalled(0, 3, 100.0)      # quiet without a lost node: slow work, not a stall
    assert not watch.stalled(1, 2, 101.0)      # a node lost, but output still coming
    assert not watch.stalled(1, 2, 110.0)
    assert watch.stalled(1, 2, 111.5)          # lost a node and nothing for 10 s
    assert watch.stalled(1, 3, 112.0)          # a node coming back does not undo the loss
    assert not watch.stalled(2, 3, 113.0)      # ... but new output does
