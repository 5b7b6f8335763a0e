"""Names of a run's files and folders: the one place that spells the output layout.

    OUT/latest                          "runs/<run_id>": the newest committed run
    OUT/_lock.json                      the run lock: one run at a time per OUT (owner, heartbeat)
    OUT/ledger/                         which video produced which rows (incremental runs)
    OUT/runs/<run_id>/_run.json         the run's identity (config hash, start time)
    OUT/runs/<run_id>/task=<task>/      Parquet shards of one task
    OUT/runs/<run_id>/_staged/task=<t>/ small files the writers stage per batch (until commit)
    OUT/runs/<run_id>/_videos/          staged records, one per processed video (until commit)
    OUT/runs/<run_id>/report.json       counts and failures by reason
    OUT/runs/<run_id>/report.parquet    one row per listed video: status, reason, rows, errors
    OUT/runs/<run_id>/manifest.json     written last: its presence means the run is complete
"""
from __future__ import annotations

import posixpath

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


def task_dir(task: str) -> str:
    return f"task={task}"
