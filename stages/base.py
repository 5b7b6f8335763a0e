"""What every stage shares: batches as column dicts, per-row errors as data, timings.

A batch is ``dict[str, list]`` (column name -> one value per video). Ray wiring converts
Arrow blocks to and from this form in pipeline/graph.py; tests build batches by hand.
"""
from __future__ import annotations

import json
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from proxyqa.core.errors import StageError, message_line, one_line  # noqa: F401 - stages use them from here

Batch = dict[str, list]


def to_rows(batch: Batch) -> list[dict[str, Any]]:
    if not batch:
        return []
    n = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def to_batch(rows: list[dict[str, Any]]) -> Batch:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return {k: [row.get(k) for row in rows] for k in keys}


class RowStage:
    """Applies `process(row)` to each row whose status is still ok; failures become data.

    A row that failed earlier passes through untouched, so every input video reaches
    the writer and the run report.
    """

    name = "stage"

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, batch: Batch) -> Batch:
        return to_batch([self.run_row(row) for row in to_rows(batch)])

    def run_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """`process` with failures turned into status/reason, and the time it took."""
        if row.get("status") not in (None, "ok"):
            return row
        start = time.perf_counter()
        try:
            row = self.process(row)
        except Exception as exc:  # noqa: BLE001 - one bad video must not end the run
            _record_failure(row, self.name, exc)
        return _done(row, self.name, start)

    async def arun_row(self, row: dict[str, Any],
                       aprocess: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """`run_row` for a stage whose rows are processed by a coroutine (same failures, same
        time: from the row's start to its end)."""
        if row.get("status") not in (None, "ok"):
            return row
        start = time.perf_counter()
        try:
            row = await aprocess(row)
        except Exception as exc:  # noqa: BLE001 - one bad video must not end the run
            _record_failure(row, self.name, exc)
        return _done(row, self.name, start)


def _record_failure(row: dict[str, Any], stage: str, exc: Exception) -> None:
    if isinstance(exc, StageError):
        row["status"], row["reason"] = _failed_status(exc.kind), f"{stage}: {exc}"
        return
    last = traceback.extract_tb(exc.__traceback__)[-1]
    detail = f"{exc.__class__.__name__}: {str(exc)[:300]} ({last.name}:{last.lineno})"
    row["status"], row["reason"] = "failed", f"{stage}: error: {detail}"


def _done(row: dict[str, Any], stage: str, start: float) -> dict[str, Any]:
    if row.get("status") is None:
        row["status"] = "ok"
    _add_time(row, stage, time.perf_counter() - start)
    return row


def add_error(row: dict[str, Any], task: str, kind: str, detail: str, **extra: Any) -> None:
    """A non-fatal problem with one task of a video (the video itself stays ok)."""
    errors = json.loads(row.get("errors_json") or "[]")
    errors.append({"task": task, "kind": kind, "detail": detail[:300], **extra})
    row["errors_json"] = json.dumps(errors)


def _failed_status(kind: str) -> str:
    return "skipped" if kind.startswith("over_limit") else "failed"


def _add_time(row: dict, stage: str, seconds: float) -> None:
    times = json.loads(row.get("stage_times_json") or "{}")
    times[stage] = round(times.get(stage, 0.0) + seconds, 4)
    row["stage_times_json"] = json.dumps(times)
