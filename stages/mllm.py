"""MLLM stage: asks an OpenAI-compatible vLLM server what the planner says to ask, and turns
the replies into verified rows (stages/mllm_plan.py).

Endpoint mode calls `mllm.endpoint.base_url`; engine mode calls the replicas the job started
(`base_urls`, pipeline/graph.py `served_engine`), which serve `mllm.engine.model_source`
under that name. Every MLLM task goes through this one stage, so all of them share the
same servers."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from proxyqa.core.config import MLLMConfig
from proxyqa.models.openai_chat import EndpointClient, MLLMCallError
from proxyqa.stages.base import Batch, RowStage, to_batch, to_rows
from proxyqa.stages.mllm_plan import MLLMPlanner, Skip, reply_record
from proxyqa.stages.mllm_requests import Request, json_schema, parse_reply, sampling_params
from proxyqa.stages.sampling import RunContext

# A task asked from another's reply waits for it; the others of a video go out at once.
AFTER = {"synthesized_qa": "pose_description"}


@dataclass
class _BatchState:
    """What the videos of one batch share: the request slots and the encoded images."""

    slots: asyncio.Semaphore
    images: dict = field(default_factory=dict)   # (jpeg, max side) -> data URL, once per batch


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
        if not self.planner.tasks:
            return to_batch([self.run_row(r) for r in rows])
        return to_batch(self._run(self._batch(rows)))

    def _run(self, coro):
        """`coro` on the client's event loop (an injected client without one, e.g. a test's,
        gets a loop here and its `call` runs in threads)."""
        run = getattr(self.client, "run", None)
        return run(coro) if run is not None else asyncio.run(coro)

    async def _batch(self, rows: list[dict]) -> list[dict]:
        # Requests, not videos, are bounded: all videos of the batch start at once and
        # `concurrency` slots send their requests, so the server keeps `concurrency`
        # requests of this worker until the batch's last few. A slot is held only while a
        # request is at the server (bodies are built before), and the replies are read by
        # one event loop, not by threads that wait for the GIL behind the planning.
        state = _BatchState(asyncio.Semaphore(self.cfg.endpoint.concurrency))
        return list(await asyncio.gather(*(self._run_row(r, state) for r in rows)))

    async def _run_row(self, row: dict, state: _BatchState) -> dict:
        return await self.arun_row(row, lambda r: self._aprocess(r, state))

    async def _aask(self, req: Request, state: _BatchState) -> dict:
        messages = req.messages(self.cfg.image_max_side, state.images)
        kwargs = dict(name=req.task, schema=json_schema(req.task),
                      parse=lambda text: parse_reply(req.task, text), sampling=sampling_params(self.cfg))
        acall = getattr(self.client, "acall", None)
        try:
            async with state.slots:
                if acall is not None:
                    parsed, usage = await acall(messages, **kwargs)
                else:
                    parsed, usage = await asyncio.to_thread(self.client.call, messages, **kwargs)
        except MLLMCallError as exc:
            return reply_record(error=(exc.kind, exc.detail, exc.attempts))
        return reply_record(parsed, usage)

    def process(self, row: dict) -> dict:
        """One video outside a batch (RowStage's form): a batch of one."""
        if not self.planner.tasks:
            return row
        state = _BatchState(asyncio.Semaphore(self.cfg.endpoint.concurrency))
        return self._run(self._aprocess(row, state))

    async def _aprocess(self, row: dict, state: _BatchState) -> dict:
        replies: dict[str, dict] = {}
        pending: dict[str, asyncio.Task] = {}
        memo: dict = {}                    # the video's requests, planned once
        for task in self.planner.calls:    # in order: a task's prerequisite comes first
            if task in AFTER and AFTER[task] in pending:
                replies[AFTER[task]] = await pending.pop(AFTER[task])
            step = self.planner.plan(row, task, replies, memo)
            if isinstance(step, Skip):
                replies[task] = {"skip": [step.kind, step.detail]}
            else:
                pending[task] = asyncio.ensure_future(self._aask(step, state))
                await asyncio.sleep(0)     # let it start: the first requests go out at once
        for task, fut in pending.items():
            replies[task] = await fut
        return self.planner.finish(row, replies, self.mode, memo)
