"""The MLLM plan of one video, shared by endpoint and engine mode.

    plan(row, task, replies)  -> Request | Skip      what to ask for `task`, given the replies so far
    finish(row, replies, mode)                       replies -> verified rows and per-task errors

Both modes call exactly these, so the same config gives the same rows, drops and error
kinds whichever way the model is reached. `replies` maps a task to a JSON-able record:
    {"parsed": {...}, "usage": {...}}                a reply that parsed under the task's schema
    {"error": [kind, detail, attempts]}              a call that failed (after its retries)
    {"skip": [kind, detail]}                         nothing was asked (no subject, no motion, ...)
Requests are deterministic in the row, so `finish` rebuilds each one from the row instead
of carrying frames between engine passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from proxyqa.core.config import MLLMConfig
from proxyqa.core.schema import MLLM_TASKS
from proxyqa.stages.base import add_error
from proxyqa.stages.mllm_requests import (
    Request,
    description_request,
    difference_request,
    generator_info,
    qa_request,
    rows_from_reply,
)
from proxyqa.stages.sampling import RunContext


@dataclass(frozen=True)
class Skip:
    kind: str
    detail: str


Step = Union[Request, Skip]


class MLLMPlanner:
    def __init__(self, cfg: MLLMConfig, enabled_tasks: list[str], ctx: RunContext,
                 min_score: float):
        self.cfg, self.ctx, self.min_score = cfg, ctx, min_score
        self.tasks = [t for t in MLLM_TASKS if t in enabled_tasks]
        # synthesized_qa is written from a pose description: ask for one even when
        # pose_description rows are not wanted.
        self.calls = [t for t in MLLM_TASKS
                      if t in self.tasks or (t == "pose_description" and "synthesized_qa" in self.tasks)]

    def plan(self, row: dict, task: str, replies: dict[str, dict], memo: dict | None = None) -> Step:
        """`memo`: a dict kept for one video across its plan() and finish() calls, so its
        requests (frames, geometry) are built once; the same result without it."""
        memo = {} if memo is None else memo
        if "desc" not in memo:
            memo["desc"] = description_request(row, self.ctx, self.min_score, draft=self.cfg.rule_draft)
        desc = memo["desc"]
        if desc is None:
            return Skip("no_subject", "no tracked person to describe")
        if task in ("pose_description", "pose_difference") and _rule_written(row, task) and not (
                task == "pose_description" and "synthesized_qa" in self.tasks):
            return Skip(RULES, f"{task} rows are written from geometry (generator: rules)")
        if task == "pose_description":
            return desc
        if task == "pose_difference":
            if "diff" not in memo:
                memo["diff"] = difference_request(row, self.ctx, self.min_score, self.cfg.min_pose_motion)
            diff = memo["diff"]
            return diff or Skip("no_motion", "no frame pair with enough pose motion")
        parsed = replies.get("pose_description", {}).get("parsed")
        if parsed is None:
            return Skip("depends_on_failed", "pose_description failed")
        return qa_request(row, parsed, desc, self.cfg.questions_per_video)

    def finish(self, row: dict, replies: dict[str, dict], mode: str, memo: dict | None = None) -> dict:
        """Appends the verified rows of every reply to row["samples"], and one error per task
        that was skipped or failed. With on_verify_fail=drop, contradicted rows are left out
        and counted as `verify_failed_dropped`."""
        samples = list(row.get("samples") or [])
        for task in self.calls:
            reply = replies.get(task)
            wanted = task in self.tasks
            if reply is None:
                continue
            if "skip" in reply:
                if wanted and reply["skip"][0] != RULES:
                    add_error(row, task, *reply["skip"])
                continue
            if "error" in reply:
                kind, detail, attempts = reply["error"]
                add_error(row, task, kind, detail, attempts=attempts)
                continue
            if not wanted or _rule_written(row, task):   # asked only for synthesized_qa's sake
                continue
            req = self.plan(row, task, replies, memo)
            assert isinstance(req, Request), (task, req)
            generator = generator_info(self.cfg, mode, req, reply["usage"])
            made = rows_from_reply(row, req, reply["parsed"], generator, self.ctx, self.min_score)
            kept = [s for s in made if not (s["verified"] is False and self.cfg.on_verify_fail == "drop")]
            if len(kept) < len(made):
                add_error(row, task, "verify_failed_dropped",
                          f"{len(made) - len(kept)} row(s) contradicted the pose geometry")
            samples += kept
        row["samples"] = samples
        return row


RULES = "rule_generated"


def _rule_written(row: dict, task: str) -> bool:
    """tasks.<task>.generator is rules: the task builder already wrote this task's rows."""
    return any(s.get("task") == task and s.get("answer_source") == "geometry"
               for s in row.get("samples") or [])


def reply_record(parsed: dict | None = None, usage: dict | None = None,
                 error: tuple[str, str, int] | None = None) -> dict[str, Any]:
    return {"error": list(error)} if error else {"parsed": parsed, "usage": usage or {}}
