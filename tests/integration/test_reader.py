"""RunDataset: exactly-once splitting over ranks x DataLoader workers, shuffling, mixtures, S3."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from proxyqa.core.schema import SAMPLE_SCHEMA, empty_sample
from proxyqa.trainer.reader import RunDataset, RunError, decode_images, resolve_run, shard_uris
from tests.helpers import PLUMBING_TEMPORAL, REPO, latest_run, read_run, run_cli


def _jpeg(i: int) -> bytes:
    img = np.full((24, 32, 3), i % 256, np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def make_run(root: Path, rows_per_task: dict[str, int], row_group_size: int = 7,
             rows_per_shard: int = 40) -> Path:
    """A complete run in the real layout with small row groups (many split points)."""
    run = root / "runs" / "r1"
    shards = []
    for task, n in rows_per_task.items():
        rows = []
        for i in range(n):
            row = empty_sample()
            row.update(sample_id=f"{task}-{i:04d}", video_id=f"v{i % 5}", task=task,
                       family="temporal", question="q", answer="a", answer_struct="{}",
                       images=[_jpeg(i)], frame_indices=[i], timestamps=[i / 10])
            rows.append(row)
        for k, start in enumerate(range(0, n, rows_per_shard)):
            rel = f"data/{task}/train-{k:03d}.parquet"
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(rows[start:start + rows_per_shard], schema=SAMPLE_SCHEMA)
            pq.write_table(table, run / rel, row_group_size=row_group_size)
            shards.append({"path": rel, "task": task, "rows": table.num_rows, "split": "train",
                           "bytes": (run / rel).stat().st_size})
    counts = {"rows": sum(rows_per_task.values()), "rows_by_task": rows_per_task}
    (run / "report.json").write_text(json.dumps({"videos": [], "counts": counts}))
    (run / "manifest.json").write_text(json.dumps(
        {"run_id": "r1", "shards": shards, "counts": counts, "config": {}, "versions": {}}))
    (root / "latest").write_text("runs/r1\n")
    return run


def ids_of(ds, num_workers: int = 2) -> list[str]:
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    return [row["sample_id"] for row in loader]


def world_ids(run, world_size: int = 2, num_workers: int = 2, **kwargs) -> list[list[str]]:
    return [ids_of(RunDataset(str(run), rank=r, world_size=world_size, **kwargs), num_workers)
            for r in range(world_size)]


def test_small_run_each_sample_once_over_2_ranks_x_2_workers(small_run):
    rows, manifest, _ = read_run(small_run)
    expected = sorted(r["sample_id"] for r in rows)
    assert len(expected) == manifest["counts"]["rows"] > 4
    per_rank = world_ids(small_run, columns=["sample_id"])
    got = [i for ids in per_rank for i in ids]
    assert sorted(got) == expected                       # every sample, no duplicates
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1  # balanced ranks


@pytest.mark.parametrize("shuffle", [False, True])
def test_many_row_groups_each_sample_once_per_epoch(tmp_path, shuffle):
    run = make_run(tmp_path, {"temporal_order": 61, "temporal_direction": 38})
    expected = sorted(f"temporal_order-{i:04d}" for i in range(61)) + \
        sorted(f"temporal_direction-{i:04d}" for i in range(38))
    epochs = []
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            ds = RunDataset(str(run), rank=rank, world_size=2, shuffle=shuffle,
                            shuffle_buffer=16, seed=3)
            ds.set_epoch(epoch)
            assert ds.rows_this_rank() in (49, 50)
            per_rank.append(ids_of(ds))
            assert len(per_rank[-1]) == ds.rows_this_rank()
        got = [i for ids in per_rank for i in ids]
        assert sorted(got) == sorted(expected)
        epochs.append(got)
    assert (epochs[0] != epochs[1]) == shuffle            # set_epoch reshuffles


def test_shuffle_same_seed_repeats_other_seed_differs(tmp_path):
    run = make_run(tmp_path, {"temporal_order": 80})
    first = world_ids(run, shuffle=True, shuffle_buffer=20, seed=7)
    again = world_ids(run, shuffle=True, shuffle_buffer=20, seed=7)
    other = world_ids(run, shuffle=True, shuffle_buffer=20, seed=8)
    plain = world_ids(run)
    assert first == again
    assert first != other
    assert first != plain
    assert sorted(sum(first, [])) == sorted(sum(plain, []))


def test_mixture_weights_shift_the_task_mix(tmp_path):
    run = make_run(tmp_path, {"temporal_order": 100, "temporal_direction": 100})

    def mix(weights):
        per_rank = world_ids(run, task_weights=weights, shuffle=True, seed=1)
        return Counter(i.split("-")[0] for ids in per_rank for i in ids)

    heavy_order = mix({"temporal_order": 0.9, "temporal_direction": 0.1})
    heavy_direction = mix({"temporal_order": 0.1, "temporal_direction": 0.9})
    # An epoch is samples_per_epoch draws: by default the rows of the weighted tasks.
    assert sum(heavy_order.values()) == sum(heavy_direction.values()) == 200
    assert heavy_order["temporal_order"] > 160             # ~180 expected
    assert heavy_direction["temporal_order"] < 40
    only = mix({"temporal_order": 1.0, "pose_description": 5.0})   # absent task dropped
    assert only == {"temporal_order": 100}


def test_mixture_upsamples_a_small_task_cycling_its_rows(tmp_path):
    run = make_run(tmp_path, {"temporal_order": 10, "temporal_direction": 190})
    ds = RunDataset(str(run), task_weights={"temporal_order": 1, "temporal_direction": 1},
                    samples_per_epoch=100, seed=2)
    got = Counter(row["sample_id"] for row in ds)
    small = {k: v for k, v in got.items() if k.startswith("temporal_order")}
    assert sum(got.values()) == 100
    assert len(small) == 10                                # all of the small task seen
    assert max(small.values()) - min(small.values()) <= 1  # cycled evenly, not at random


def test_reads_only_manifest_shards_of_complete_runs(small_run, tmp_path):
    rows, manifest, _ = read_run(small_run)
    copy = tmp_path / "out"
    shutil.copytree(small_run.parent.parent, copy)
    run = copy / "runs" / small_run.name
    # A stray shard (e.g. from a crashed retry) is not in the manifest: not read.
    stray = run / manifest["shards"][0]["path"]
    shutil.copy(stray, stray.with_name("part-stray.parquet"))
    assert resolve_run(str(copy)) == str(run)              # output root -> latest run
    assert len(list(RunDataset(str(copy), columns=["sample_id"]))) == len(rows)
    assert len(shard_uris(str(run))) == len(manifest["shards"])
    (run / "manifest.json").unlink()
    with pytest.raises(RunError, match="incomplete"):
        RunDataset(str(run))
    with pytest.raises(RunError, match="no manifest"):
        resolve_run(str(copy))


@pytest.mark.ray
def test_incremental_run_reads_carried_shards_of_earlier_runs(small_run, small_input, tmp_path):
    rows, _, _ = read_run(small_run)
    out = tmp_path / "out"
    shutil.copytree(small_run.parent.parent, out)
    assert run_cli(REPO / "configs" / "local.yaml", "--input", str(small_input), "--output",
                   str(out), "--set", "ray.progress_bars=false", *PLUMBING_TEMPORAL, "--incremental") == 0
    second = latest_run(out)
    assert second.name != small_run.name
    manifest = json.loads((second / "manifest.json").read_text())
    assert any(s["path"].startswith("../") for s in manifest["shards"])   # carried, not copied
    per_rank = world_ids(out, columns=["sample_id"])
    assert sorted(sum(per_rank, [])) == sorted(r["sample_id"] for r in rows)


def test_rows_keep_schema_and_decode_lazily(small_run):
    raw = next(iter(RunDataset(str(small_run))))
    assert set(raw) == set(SAMPLE_SCHEMA.names)
    assert all(isinstance(b, bytes) and b[:2] == b"\xff\xd8" for b in raw["images"])
    assert raw["task"] == raw["task"].strip() and "/" not in raw["task"]
    decoded = next(iter(RunDataset(str(small_run), transform=decode_images("numpy"))))
    first = cv2.imdecode(np.frombuffer(raw["images"][0], np.uint8), cv2.IMREAD_COLOR)
    assert decoded["images"][0].shape == first.shape
    assert np.abs(decoded["images"][0][..., ::-1].astype(int) - first).max() <= 2  # RGB
    pil = next(iter(RunDataset(str(small_run), transform=decode_images("pil"))))
    assert pil["images"][0].size == (first.shape[1], first.shape[0])


def test_bad_arguments_are_clear(small_run):
    with pytest.raises(ValueError, match="rank"):
        RunDataset(str(small_run), rank=2, world_size=2)
    with pytest.raises(ValueError, match="no task with a positive weight"):
        RunDataset(str(small_run), task_weights={"synthesized_qa": 1.0})   # no such rows
    with pytest.raises(RunError):
        RunDataset(str(small_run / "data" / "nothing"))


@pytest.mark.s3
def test_reads_a_run_on_s3(small_run):
    import s3fs
    from moto.server import ThreadedMotoServer

    from proxyqa.core.config import S3Config

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Config(endpoint_url=f"http://{host}:{port}", region="eu-west-1",
                      key="testing", secret="testing")
        fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={
            "endpoint_url": s3.endpoint_url, "region_name": "eu-west-1"})
        fs.mkdir("bucket")
        fs.put(str(small_run.parent.parent) + "/", "bucket/out/", recursive=True)
        rows, _, _ = read_run(small_run)
        uri = "s3://bucket/out"
        per_rank = [ids_of(RunDataset(uri, s3=s3, rank=r, world_size=2, columns=["sample_id"]))
                    for r in (0, 1)]
        assert sorted(sum(per_rank, [])) == sorted(r["sample_id"] for r in rows)
        assert resolve_run(uri, s3) == f"{uri}/runs/{small_run.name}"
    finally:
        server.stop()
