"""Names of a run's files and folders: the one place that spells the output layout.

    OUT/latest                          "runs/<run_id>": the newest committed run
    OUT/_lock.json                      the run lock: one run at a time per OUT (owner, heartbeat)
    OUT/ledger/                         which video produced which rows (incremental runs)
    OUT/runs/<run_id>/_run.json         the run's identity (config hash, start time)
    OUT/runs/<run_id>/data/<task>/      Parquet shards of one task: <split>-<digest>.parquet
    OUT/runs/<run_id>/README.md         Hugging Face dataset card: one config per task, its splits
    OUT/runs/<run_id>/_staged/<task>/   small files the writers stage per batch (until commit)
    OUT/runs/<run_id>/_videos/          staged records, one per processed video (until commit)
    OUT/runs/<run_id>/report.json       counts and failures by reason
    OUT/runs/<run_id>/report.parquet    one row per listed video: status, reason, rows, errors
    OUT/runs/<run_id>/manifest.json     written last: its presence means the run is complete
"""
from __future__ import annotations

import posixpath

from proxyqa.core.schema import SPLITS

LATEST = "latest"
LEDGER_DIR = "ledger"
RUNS_DIR = "runs"
RUN_META = "_run.json"
VIDEOS_DIR = "_videos"
STAGED_DIR = "_staged"
REPORT = "report.json"
REPORT_VIDEOS = "report.parquet"
LOCK = "_lock.json"
MANIFEST = "manifest.json"
SHARD_GLOB = "part-*.parquet"


def run_key(run_id: str, *parts: str) -> str:
    """A path inside a run, relative to OUT."""
    return posixpath.join(RUNS_DIR, run_id, *parts)


DATA_DIR = "data"
HF_README = "README.md"


def task_dir(task: str) -> str:
    """A task's shard folder, relative to the run. Not `key=value`: a hive-style name would
    add a partition column that conflicts with the rows' own `task` column."""
    return posixpath.join(DATA_DIR, task)


def task_of_key(key: str) -> str:
    """The task of a shard key/path '.../data/<task>/<file>.parquet'."""
    return posixpath.basename(posixpath.dirname(key))


def split_of_name(name: str) -> str | None:
    """'train-<digest>.parquet' -> 'train'; staged or carried names -> None."""
    head = posixpath.basename(name).split("-", 1)[0]
    return head if head in SPLITS else None
