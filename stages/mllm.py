"""MLLM stage (endpoint mode): asks an OpenAI-compatible `vllm serve` endpoint what the
planner says to ask, and turns the replies into verified rows (stages/mllm_plan.py)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from proxyqa.core.config import MLLMConfig
from proxyqa.models.openai_chat import EndpointClient, MLLMCallError
from proxyqa.stages.base import Batch, RowStage, to_batch, to_rows
from proxyqa.stages.mllm_plan import MLLMPlanner, Skip, reply_record
from proxyqa.stages.mllm_requests import Request, json_schema, parse_reply, sampling_params
from proxyqa.stages.sampling import RunContext


class MLLMStage(RowStage):
    """Adds MLLM-written samples (verified against geometry) to each video's `samples`."""

    name = "mllm"

    def __init__(self, cfg: MLLMConfig, enabled_tasks: list[str], ctx: RunContext,
                 min_keypoint_score: float = 0.5, client: Optional[Any] = None):
        self.cfg = cfg
        self.planner = MLLMPlanner(cfg, enabled_tasks, ctx, min_keypoint_score)
        self.client = client if client is not None else EndpointClient(cfg)

    def __call__(self, batch: Batch) -> Batch:
        rows = to_rows(batch)
        # Videos run concurrently; each worker keeps at most `concurrency` requests in flight.
        with ThreadPoolExecutor(max_workers=self.cfg.endpoint.concurrency) as pool:
            return to_batch(list(pool.map(self.run_row, rows)))

    def ask(self, req: Request) -> dict:
        try:
            parsed, usage = self.client.call(
                req.messages(self.cfg.image_max_side), name=req.task, schema=json_schema(req.task),
                parse=lambda text: parse_reply(req.task, text), sampling=sampling_params(self.cfg))
        except MLLMCallError as exc:
            return reply_record(error=(exc.kind, exc.detail, exc.attempts))
        return reply_record(parsed, usage)

    def process(self, row: dict) -> dict:
        if not self.planner.tasks:
            return row
        replies: dict[str, dict] = {}
        for task in self.planner.calls:
            step = self.planner.plan(row, task, replies)
            replies[task] = {"skip": [step.kind, step.detail]} if isinstance(step, Skip) else self.ask(step)
        return self.planner.finish(row, replies, "endpoint")
