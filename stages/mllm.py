"""MLLM stage: asks an OpenAI-compatible vLLM server what the planner says to ask, and turns
the replies into verified rows (stages/mllm_plan.py).

Endpoint mode calls `mllm.endpoint.base_url`; engine mode calls the replicas the job started
(`base_urls`, pipeline/graph.py `served_engine`), which serve `mllm.engine.model_source`
under that name. Every MLLM task goes through this one stage, so all of them share the
same servers."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

from proxyqa.core.config import MLLMConfig
from proxyqa.models.openai_chat import EndpointClient, MLLMCallError
from proxyqa.stages.base import Batch, RowStage, to_batch, to_rows
from proxyqa.stages.mllm_plan import MLLMPlanner, Skip, reply_record
from proxyqa.stages.mllm_requests import Request, json_schema, parse_reply, sampling_params
from proxyqa.stages.sampling import RunContext

# A task asked from another's reply waits for it; the others of a video go out at once.
AFTER = {"synthesized_qa": "pose_description"}


class MLLMStage(RowStage):
    """Adds MLLM-written samples (verified against geometry) to each video's `samples`."""

    name = "mllm"

    def __init__(self, cfg: MLLMConfig, enabled_tasks: list[str], ctx: RunContext,
                 min_keypoint_score: float = 0.5, client: Optional[Any] = None,
                 base_urls: Sequence[str] = ()):
        self.mode = cfg.mode
        if self.mode == "engine":
            if not base_urls and client is None:
                raise ValueError("engine mode needs the URLs of the replicas the job started")
            # The replicas serve the model under its source path/id (models/vllm_server.py).
            cfg = cfg.model_copy(update={"endpoint": cfg.endpoint.model_copy(
                update={"model": cfg.engine.model_source})})
        self.cfg = cfg
        self.planner = MLLMPlanner(cfg, enabled_tasks, ctx, min_keypoint_score)
        self.client = client if client is not None else EndpointClient(cfg, base_urls)

    def __call__(self, batch: Batch) -> Batch:
        rows = to_rows(batch)
        # Requests, not videos, are bounded: all videos of the batch start at once and a
        # pool of `concurrency` threads sends their requests, so the server keeps
        # `concurrency` requests of this worker until the batch's last few. (One thread per
        # video with each video's calls in turn kept fewer in flight: 0.56x `vllm bench
        # serve` on the same requests, bench/mllm.py.)
        with ThreadPoolExecutor(max_workers=self.cfg.endpoint.concurrency) as requests, \
                ThreadPoolExecutor(max_workers=max(1, len(rows))) as videos:
            self._requests = requests
            try:
                return to_batch(list(videos.map(self.run_row, rows)))
            finally:
                self._requests = None

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
        pending: dict[str, Future] = {}
        for task in self.planner.calls:    # in order: a task's prerequisite comes first
            if task in AFTER and AFTER[task] in pending:
                replies[AFTER[task]] = pending.pop(AFTER[task]).result()
            step = self.planner.plan(row, task, replies)
            if isinstance(step, Skip):
                replies[task] = {"skip": [step.kind, step.detail]}
            elif getattr(self, "_requests", None) is not None:
                pending[task] = self._requests.submit(self.ask, step)
            else:                          # process() called directly, outside a batch
                replies[task] = self.ask(step)
        for task, future in pending.items():
            replies[task] = future.result()
        return self.planner.finish(row, replies, self.mode)
