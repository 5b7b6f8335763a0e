"""The local executor: the same plan as `proxyqa run`, in one process, no Ray, no Arrow.

For unit tests, debugging a stage with a debugger, and the benchmark's sequential loop.
Engine mode: start a `proxyqa.models.vllm_server.ModelServer` yourself and build the plan
with its URL (`steps(cfg, run, engine_urls=[url])`).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from proxyqa.pipeline.plan import Fused, Step
from proxyqa.stages.base import Batch, to_batch, to_rows


class LocalExecutor:
    def __init__(self, plan: Sequence[Step]):
        self.plan = list(plan)
        self._fused = Fused(self.plan)   # each step on slices of its own batch size

    def run_batch(self, batch: Batch) -> Batch:
        return self._fused(batch)

    def run(self, videos: Sequence[dict], batch_size: int = 8) -> Iterator[dict]:
        """One record per video (what the writer returns), `batch_size` videos at a time."""
        for start in range(0, len(videos), batch_size):
            yield from to_rows(self.run_batch(to_batch(list(videos[start:start + batch_size]))))
