"""The OpenAI-compatible chat client (a `vllm serve` endpoint, or any such server): bounded
retries with backoff, strict JSON replies and a circuit breaker. Knows nothing of tasks:
the caller gives messages, the JSON schema and the parser of a reply."""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from proxyqa.core.config import MLLMConfig
from proxyqa.core.errors import message_line


class MLLMCallError(Exception):
    """A call that failed after its last retry; `kind` is what the report counts."""

    def __init__(self, kind: str, detail: str, attempts: int):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.attempts = kind, detail, attempts


class EndpointClient:
    """OpenAI client with bounded retries, backoff, strict JSON and a circuit breaker.

    `base_urls`: several servers of the same model (engine mode's replicas), called in turn
    request by request; default: `mllm.endpoint.base_url`."""

    def __init__(self, cfg: MLLMConfig, base_urls: Sequence[str] = ()):
        from openai import OpenAI

        ep = cfg.endpoint
        key = ep.api_key.get_secret_value() if ep.api_key else os.environ.get("OPENAI_API_KEY", "EMPTY")
        # Retries are ours (they also cover invalid JSON), so the client's are off.
        self.clients = [OpenAI(base_url=url, api_key=key, timeout=ep.timeout_s, max_retries=0)
                        for url in (base_urls or [ep.base_url])]
        self._turn = itertools.count()
        self.cfg = cfg
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def client(self):
        """The next server's client (itertools.count is safe across threads in CPython)."""
        return self.clients[next(self._turn) % len(self.clients)]

    def _structured(self, name: str, schema: dict) -> dict[str, Any]:
        if self.cfg.endpoint.structured_output == "none":
            return {}
        if self.cfg.endpoint.structured_output == "extra_body":
            return {"extra_body": {"structured_outputs": {"json": schema}}}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": name, "schema": schema, "strict": True}}}

    def call(self, messages: list[dict], *, name: str, schema: dict,
             parse: Callable[[str], dict], sampling: dict[str, Any]) -> tuple[dict, dict]:
        """(parsed reply, usage/latency) or MLLMCallError after the last retry."""
        import openai

        ep = self.cfg.endpoint
        last_kind, last_detail = "mllm_error", ""
        for attempt in range(1, ep.max_retries + 2):
            with self._lock:
                if self._failures >= ep.circuit_breaker:
                    raise MLLMCallError("mllm_unreachable", f"circuit open after {self._failures} "
                                        "consecutive connection failures", 0)
            start = time.perf_counter()
            try:
                resp = self.client.chat.completions.create(
                    model=ep.model, messages=messages, **sampling, **self._structured(name, schema))
                text = resp.choices[0].message.content or ""
                parsed = parse(text)
                with self._lock:
                    self._failures = 0
                usage = resp.usage
                return parsed, {
                    "prompt_tokens": usage.prompt_tokens if usage else None,
                    "completion_tokens": usage.completion_tokens if usage else None,
                    "latency_s": round(time.perf_counter() - start, 3), "attempts": attempt,
                    "finish_reason": resp.choices[0].finish_reason,
                }
            except openai.APITimeoutError:
                last_kind, last_detail = "mllm_timeout", f"no reply within {ep.timeout_s}s"
            except openai.APIConnectionError as exc:
                with self._lock:
                    self._failures += 1
                last_kind, last_detail = "mllm_unreachable", str(exc)[:200]
            except openai.APIStatusError as exc:
                last_kind, last_detail = f"mllm_http_{exc.status_code}", str(exc.message)[:200]
                if exc.status_code < 500 and exc.status_code != 429:
                    raise MLLMCallError(last_kind, last_detail, attempt) from None
            except ValueError as exc:   # invalid JSON or schema (pydantic's ValidationError)
                last_kind, last_detail = "mllm_invalid_output", message_line(exc)[:200]
            if attempt <= ep.max_retries:
                time.sleep(ep.backoff_s * 2 ** (attempt - 1))
        raise MLLMCallError(last_kind, last_detail, ep.max_retries + 1)
