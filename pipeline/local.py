"""The local executor: the same plan as `proxyqa run`, in one process, no Ray, no Arrow.

For unit tests, debugging a stage with a debugger, and the benchmark's sequential loop.
Engine passes need a callable standing in for the vLLM engine: `llm(messages,
sampling_params) -> {"generated_text": ..., ...}` (what ray.data.llm puts in a row).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

from proxyqa.pipeline.plan import Step
from proxyqa.stages.base import Batch, to_batch, to_rows

LLM = Callable[[list[dict], dict[str, Any]], dict[str, Any]]


class LocalExecutor:
    def __init__(self, plan: Sequence[Step], llm: Optional[LLM] = None):
        self.plan = list(plan)
        self.llm = llm
        self._stages = [self._build(step) for step in self.plan]

    def _build(self, step: Step) -> Callable[[Batch], Batch]:
        if step.kind == "map":
            return step.stage(**step.kwargs)
        if self.llm is None:
            raise ValueError("an engine pass (mllm.mode=engine) needs `llm`: the local executor "
                             "has no vLLM engine of its own")
        from proxyqa.pipeline.engine import EnginePost

        pre, post, llm = step.stage(**step.kwargs), EnginePost(step.kwargs["task"]), self.llm

        def engine_pass(batch: Batch) -> Batch:
            rows = [pre(row) for row in to_rows(batch)]
            return to_batch([post({**row, **llm(row["messages"], row["sampling_params"])})
                             for row in rows])
        return engine_pass

    def run_batch(self, batch: Batch) -> Batch:
        for step, stage in zip(self.plan, self._stages):
            batch = stage(batch)
            for name in step.drop_after:
                batch.pop(name, None)
        return batch

    def run(self, videos: Sequence[dict], batch_size: int = 8) -> Iterator[dict]:
        """One record per video (what the writer returns), `batch_size` videos at a time."""
        for start in range(0, len(videos), batch_size):
            yield from to_rows(self.run_batch(to_batch(list(videos[start:start + batch_size]))))
