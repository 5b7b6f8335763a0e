"""Engine mode: the MLLM plan run by ray.data.llm (vLLM engines on GPU nodes).

One pass per planned call (stages/mllm_plan.py `MLLMPlanner.calls`, pose_description first,
since synthesized_qa is written from its reply). Each pass is a pre step (plan -> chat
messages, or a 1-token no-op when the planner skips), the engine, and a post step (reply ->
a reply record). `MLLMFinish`, a plain stage after the last pass, turns the records into
rows with the planner's `finish`, exactly as endpoint mode does.

All passes use ONE engine per model: the processor config is built once and shared, so three
MLLM tasks of one model need one model's GPUs, not three.
"""
from __future__ import annotations

import json
from typing import Any

from proxyqa.core.config import MLLMConfig
from proxyqa.core.errors import message_line
from proxyqa.stages.base import RowStage
from proxyqa.stages.mllm_plan import MLLMPlanner, Skip, reply_record
from proxyqa.stages.mllm_requests import json_schema, parse_reply, sampling_params
from proxyqa.stages.sampling import RunContext

STATE = "mllm_state_json"   # the reply records, carried between passes
ENGINE_COLUMNS = ("messages", "sampling_params", "generated_text", "prompt", "request_id",
                  "num_generated_tokens", "num_input_tokens", "time_taken_llm",
                  "prompt_token_ids", "generated_tokens", "metrics")
NOOP = [{"role": "user", "content": [{"type": "text", "text": "-"}]}]


class EnginePre:
    """Video row -> the row plus `messages` and `sampling_params` for one planned call."""

    def __init__(self, task: str, planner: MLLMPlanner, cfg: MLLMConfig):
        self.task, self.planner, self.cfg = task, planner, cfg

    def __call__(self, row: dict) -> dict[str, Any]:
        replies = json.loads(row.get(STATE) or "{}")
        sampling = {**sampling_params(self.cfg), "structured_outputs": {"json": json_schema(self.task)}}
        step = None
        if row.get("status") in (None, "ok") and self.planner.tasks:
            step = self.planner.plan(row, self.task, replies)
        if step is None or isinstance(step, Skip):
            if isinstance(step, Skip):
                replies[self.task] = {"skip": [step.kind, step.detail]}
            # nothing to ask: a 1-token no-op keeps the row in the stream
            messages, sampling = NOOP, {**sampling, "max_tokens": 1, "structured_outputs": None}
        else:
            messages = step.messages(self.cfg.image_max_side)
            replies.setdefault("_pending", []).append(self.task)
        return {**row, STATE: json.dumps(replies), "messages": messages, "sampling_params": sampling}


class EnginePost:
    """Engine output -> a reply record for the task (a parse failure is an error record)."""

    def __init__(self, task: str):
        self.task = task

    def __call__(self, row: dict) -> dict[str, Any]:
        replies = json.loads(row.get(STATE) or "{}")
        out = {k: v for k, v in row.items() if k not in ENGINE_COLUMNS}
        pending = replies.pop("_pending", [])
        if self.task in pending:
            try:
                parsed = parse_reply(self.task, row.get("generated_text") or "")
            except ValueError as exc:
                replies[self.task] = reply_record(error=("mllm_invalid_output", message_line(exc)[:200], 1))
            else:
                # One engine call, no retries; vLLM's batch output has no finish_reason.
                usage = {"prompt_tokens": row.get("num_input_tokens"),
                         "completion_tokens": row.get("num_generated_tokens"),
                         "latency_s": row.get("time_taken_llm"), "attempts": 1, "finish_reason": None}
                replies[self.task] = reply_record(parsed, usage)
        out[STATE] = json.dumps(replies)
        return out


class MLLMFinish(RowStage):
    """After the engine passes: reply records -> verified rows and errors (the planner's finish)."""

    name = "mllm"

    def __init__(self, cfg: MLLMConfig, enabled_tasks: list[str], ctx: RunContext,
                 min_keypoint_score: float = 0.5):
        self.planner = MLLMPlanner(cfg, enabled_tasks, ctx, min_keypoint_score)

    def process(self, row: dict) -> dict:
        replies = json.loads(row.pop(STATE, None) or "{}")
        if not self.planner.tasks:
            return row
        return self.planner.finish(row, replies, "engine")

    def __call__(self, batch):
        out = super().__call__(batch)
        out.pop(STATE, None)       # rows that failed earlier still carry the column
        return out


def engine_processor_config(cfg: MLLMConfig):
    """The one vLLM engine config every pass shares."""
    from ray.data.llm import vLLMEngineProcessorConfig

    eng = cfg.engine
    return vLLMEngineProcessorConfig(
        model_source=eng.model_source,
        engine_kwargs={"max_model_len": eng.max_model_len,
                       "tensor_parallel_size": eng.tensor_parallel_size,
                       "limit_mm_per_prompt": {"image": 4}, **eng.engine_kwargs},
        batch_size=eng.batch_size,
        concurrency=eng.concurrency,
        prepare_multimodal_stage=True,
    )
