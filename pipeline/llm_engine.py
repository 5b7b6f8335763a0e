"""In-cluster MLLM: the same requests as the endpoint mode, run by ray.data.llm on GPU nodes.

One processor pass per task (pose_description first, since synthesized_qa is written from
its output). preprocess/postprocess are the pure request/parse functions of stages/mllm.py.
"""
from __future__ import annotations

import json
from typing import Any

from pipeline.config import MLLMConfig
from pipeline.schema import MLLM_TASKS
from stages.base import add_error, message_line
from stages.mllm import (Request, add_samples, description_request,
                         difference_request, generator_info, json_schema, parse_reply, qa_request,
                         sampling_params)
from stages.sampling import RunContext

STATE = "mllm_state_json"   # passes requests and the description between passes


class EnginePre:
    """Video row -> the row plus `messages` and `sampling_params` for one task (or none)."""

    def __init__(self, task: str, cfg: MLLMConfig, ctx: RunContext, min_score: float):
        self.task, self.cfg, self.ctx, self.min_score = task, cfg, ctx, min_score

    def request(self, row: dict) -> Request | None:
        if row.get("status") not in (None, "ok"):
            return None
        if self.task == "pose_description":
            return description_request(row, self.ctx, self.min_score)
        if self.task == "pose_difference":
            return difference_request(row, self.ctx, self.min_score, self.cfg.min_pose_motion)
        state = json.loads(row.get(STATE) or "{}")
        desc = description_request(row, self.ctx, self.min_score)
        if "description" not in state or desc is None:
            return None
        return qa_request(row, state["description"], desc, self.cfg.questions_per_video)

    def __call__(self, row: dict) -> dict[str, Any]:
        req = self.request(row)
        sampling = {**sampling_params(self.cfg), "structured_outputs": {"json": json_schema(self.task)}}
        if req is None:  # nothing to ask: a 1-token no-op keeps the row in the stream
            messages = [{"role": "user", "content": [{"type": "text", "text": "-"}]}]
            sampling.update(max_tokens=1, structured_outputs=None)
        else:
            messages = req.messages(self.cfg.image_max_side)
        state = json.loads(row.get(STATE) or "{}")
        state["pending"] = None if req is None else {
            "task": req.task, "prompt_version": req.prompt_version, "positions": req.positions,
            "meta": req.meta}
        return {**row, STATE: json.dumps(state), "messages": messages, "sampling_params": sampling}


class EnginePost:
    """Parsed reply -> samples (verified) appended to the row; failures -> errors_json."""

    def __init__(self, task: str, cfg: MLLMConfig, ctx: RunContext, min_score: float):
        self.task, self.cfg, self.ctx, self.min_score = task, cfg, ctx, min_score

    def __call__(self, row: dict) -> dict[str, Any]:
        state = json.loads(row.get(STATE) or "{}")
        pending = state.pop("pending", None)
        out = {k: v for k, v in row.items() if k not in ("messages", "sampling_params", "generated_text",
                                                         "prompt", "request_id", "num_generated_tokens",
                                                         "num_input_tokens", "time_taken_llm")}
        if pending is not None:
            images = [row["frames_jpeg"][p] for p in pending["positions"]]
            if pending["meta"].get("image") == "subject_crop":
                images = [row["subject_crops_jpeg"][p] for p in pending["positions"]]
            req = Request(self.task, "", pending["prompt_version"], images, pending["positions"],
                          pending["meta"])
            try:
                parsed = parse_reply(self.task, row.get("generated_text") or "")
            except ValueError as exc:
                add_error(out, self.task, "mllm_invalid_output", message_line(exc)[:200])
            else:
                if self.task == "pose_description":
                    state["description"] = parsed
                # One engine call, no retries; vLLM's batch output has no finish_reason.
                usage = {"prompt_tokens": row.get("num_input_tokens"),
                         "completion_tokens": row.get("num_generated_tokens"),
                         "latency_s": row.get("time_taken_llm"), "attempts": 1, "finish_reason": None}
                add_samples(out, req, parsed, generator_info(self.cfg, "engine", req, usage),
                            self.cfg, self.ctx, self.min_score)
        out[STATE] = json.dumps(state)
        return out


def build_processors(cfg: MLLMConfig, enabled: list[str], ctx: RunContext, min_score: float) -> list:
    """One ray.data.llm processor per enabled MLLM task, in dependency order."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    eng = cfg.engine
    engine_cfg = vLLMEngineProcessorConfig(
        model_source=eng.model_source,
        engine_kwargs={"max_model_len": eng.max_model_len,
                       "tensor_parallel_size": eng.tensor_parallel_size,
                       "limit_mm_per_prompt": {"image": 4}, **eng.engine_kwargs},
        batch_size=eng.batch_size,
        concurrency=eng.concurrency,
        prepare_multimodal_stage=True,
    )
    tasks = [t for t in MLLM_TASKS if t in enabled or (t == "pose_description" and "synthesized_qa" in enabled)]
    return [build_processor(engine_cfg, preprocess=EnginePre(t, cfg, ctx, min_score),
                            postprocess=EnginePost(t, cfg, ctx, min_score)) for t in tasks]
