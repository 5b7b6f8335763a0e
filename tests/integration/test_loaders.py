"""The shards of a real run load with the usual tools, without a duplicate `task` column.

The files sit under data/<task>/ (not a hive `key=value` name), so plain reads and globs
work without partitioning flags. The manifest's file list (`shard_uris`) is the dataset; an
incremental run lists shards of earlier runs too, so a glob of its folder is not enough;
the run's README.md (Hugging Face configs) lists them per task and split.
"""
from __future__ import annotations

import os
from collections import Counter

import pytest

from proxyqa.core.schema import SAMPLE_SCHEMA
from proxyqa.trainer.reader import shard_uris
from tests.helpers import read_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")        # local files only, never the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def expected(run) -> tuple[list[str], Counter]:
    rows, manifest, _ = read_run(run)
    assert manifest["counts"]["rows"] == len(rows) > 0
    return sorted(r["sample_id"] for r in rows), Counter(manifest["counts"]["rows_by_task"])


def test_hf_datasets(small_run, tmp_path):
    import datasets

    ids, by_task = expected(small_run)
    files = shard_uris(str(small_run))                   # any run, incremental ones too
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == SAMPLE_SCHEMA.names
    assert sorted(ds["sample_id"]) == ids
    assert Counter(ds["task"]) == by_task
    assert isinstance(ds[0]["images"][0], bytes)
    # A full (non-incremental) run's own folder holds exactly its shards: a glob works too.
    globbed = datasets.load_dataset("parquet", data_files=str(small_run / "data" / "*" / "*.parquet"),
                                    split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(globbed["sample_id"]) == ids and globbed.column_names == SAMPLE_SCHEMA.names


def test_hf_dataset_folder_configs_per_task_and_split(small_run, tmp_path):
    """The run folder itself is a Hugging Face dataset: README.md configs, one per task."""
    import datasets

    rows, manifest, _ = read_run(small_run)
    for task, n in manifest["counts"]["rows_by_task"].items():
        got = []
        for split in ("train", "validation", "test"):
            want = [r["sample_id"] for r in rows if r["task"] == task and r["split"] == split]
            if not want:
                continue
            ds = datasets.load_dataset(str(small_run), task, split=split,
                                       cache_dir=str(tmp_path / "hf"))
            assert sorted(ds["sample_id"]) == sorted(want) and set(ds["split"]) == {split}
            got += want
        assert len(got) == n
    train_tasks = {r["task"] for r in rows if r["split"] == "train"}
    ds = datasets.load_dataset(str(small_run), sorted(train_tasks)[0], split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == SAMPLE_SCHEMA.names


def test_pandas(small_run):
    import pandas as pd

    ids, by_task = expected(small_run)
    df = pd.read_parquet(shard_uris(str(small_run)), partitioning=None)
    assert list(df.columns) == SAMPLE_SCHEMA.names
    assert sorted(df["sample_id"]) == ids
    assert Counter(df["task"]) == by_task
    # The folder reads as is, without partitioning flags (no conflicting `task` column).
    whole = pd.read_parquet(small_run / "data")
    assert list(whole.columns) == SAMPLE_SCHEMA.names and sorted(whole["sample_id"]) == ids


def test_duckdb(small_run):
    import duckdb

    ids, by_task = expected(small_run)
    files = shard_uris(str(small_run))
    con = duckdb.connect()
    source = "read_parquet($files, hive_partitioning = false)"
    rel = con.sql(f"SELECT * FROM {source}", params={"files": files})
    assert rel.columns == SAMPLE_SCHEMA.names
    counts = con.execute(f"SELECT task, count(*) FROM {source} GROUP BY task", {"files": files})
    assert Counter(dict(counts.fetchall())) == by_task
    got = con.execute(f"SELECT sample_id FROM {source} ORDER BY sample_id", {"files": files})
    assert [g[0] for g in got.fetchall()] == ids
    glob = str(small_run / "data" / "*" / "*.parquet")
    n = con.execute(f"SELECT count(*) FROM read_parquet('{glob}')")    # no flags needed
    assert n.fetchall() == [(len(ids),)]


@pytest.mark.ray
def test_ray_data(small_run):
    import ray

    ids, by_task = expected(small_run)
    ds = ray.data.read_parquet(shard_uris(str(small_run)), partitioning=None)
    assert ds.schema().names == SAMPLE_SCHEMA.names
    rows = ds.select_columns(["sample_id", "task"]).take_all()
    assert sorted(r["sample_id"] for r in rows) == ids
    assert Counter(r["task"] for r in rows) == by_task
