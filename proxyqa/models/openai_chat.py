"""The OpenAI-compatible chat client (a `vllm serve` endpoint, or any such server): bounded
retries with backoff, strict JSON replies and a circuit breaker. Knows nothing of tasks:
the caller gives messages, the JSON schema and the parser of a reply.

Requests go out from one asyncio event loop (`AsyncOpenAI`, one connection pool per server,
kept alive), as `vllm bench serve` sends them (one aiohttp session). The loop runs in a
thread of its own, so synchronous callers (`call`, `run`) work from any thread. Threads
per request were slower on a CPU server: every reply waited for the GIL behind the
planning threads (bench/mllm.py, docs/performance.md)."""
from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from proxyqa.core.config import MLLMConfig
from proxyqa.core.errors import message_line

T = TypeVar("T")


class MLLMCallError(Exception):
    """A call that failed after its last retry; `kind` is what the report counts."""

    def __init__(self, kind: str, detail: str, attempts: int):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.attempts = kind, detail, attempts


class EventLoopThread:
    """An asyncio event loop running forever in a daemon thread; `run(coro)` from any other
    thread waits for its result. Stopped by `close()` or when its owner is collected."""

    def __init__(self, name: str = "mllm-client"):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()
        self._finalizer = weakref.finalize(self, _stop_loop, self.loop, self.thread)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("EventLoopThread.run called from its own loop (would deadlock)")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self._finalizer()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout=10)
        if not loop.is_running():
            loop.close()


class EndpointClient:
    """OpenAI client with bounded retries, backoff, strict JSON and a circuit breaker.

    `base_urls`: several servers of the same model (engine mode's replicas), called in turn
    request by request; default: `mllm.endpoint.base_url`.

    `acall` is the call itself (a coroutine on this client's loop); `call` is the same from
    synchronous code, and `run(coro)` runs a caller's coroutine on that loop (the MLLM stage
    runs a whole batch there)."""

    def __init__(self, cfg: MLLMConfig, base_urls: Sequence[str] = ()):
        ep = cfg.endpoint
        self._key = ep.api_key.get_secret_value() if ep.api_key else os.environ.get("OPENAI_API_KEY", "EMPTY")
        self.base_urls = list(base_urls or [ep.base_url])
        self.cfg = cfg
        self._clients: list[Any] | None = None   # made on the loop, at its first request
        self._turn = itertools.count()
        self._failures = 0
        self._lock = threading.Lock()
        self._loop: EventLoopThread | None = None

    @property
    def loop(self) -> EventLoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = EventLoopThread()
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on this client's event loop and waits for it."""
        return self.loop.run(coro)

    def close(self) -> None:
        if self._loop is not None:
            if self._clients is not None:
                clients, self._clients = self._clients, None
                self._loop.run(_close_all(clients))
            self._loop.close()
            self._loop = None

    @property
    def client(self):
        """The next server's client (called on the loop only)."""
        if self._clients is None:
            from openai import AsyncOpenAI

            # Retries are ours (they also cover invalid JSON), so the client's are off.
            self._clients = [AsyncOpenAI(base_url=url, api_key=self._key, timeout=self.cfg.endpoint.timeout_s,
                                         max_retries=0) for url in self.base_urls]
        return self._clients[next(self._turn) % len(self._clients)]

    def _structured(self, name: str, schema: dict) -> dict[str, Any]:
        if self.cfg.endpoint.structured_output == "none":
            return {}
        if self.cfg.endpoint.structured_output == "extra_body":
            return {"extra_body": {"structured_outputs": {"json": schema}}}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": name, "schema": schema, "strict": True}}}

    def call(self, messages: list[dict], *, name: str, schema: dict,
             parse: Callable[[str], dict], sampling: dict[str, Any]) -> tuple[dict, dict]:
        """`acall` from synchronous code (not from this client's loop)."""
        return self.run(self.acall(messages, name=name, schema=schema, parse=parse, sampling=sampling))

    async def acall(self, messages: list[dict], *, name: str, schema: dict,
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
                resp = await self.client.chat.completions.create(
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
                await asyncio.sleep(ep.backoff_s * 2 ** (attempt - 1))
        raise MLLMCallError(last_kind, last_detail, ep.max_retries + 1)


async def _close_all(clients: list[Any]) -> None:
    for c in clients:
        await c.close()
