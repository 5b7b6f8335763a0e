"""The OpenAI-compatible chat client (a `vllm serve` endpoint, or any such server): bounded
retries with backoff, strict JSON replies and a circuit breaker. Knows nothing of tasks:
the caller gives messages, the JSON schema and the parser of a reply.

Requests go out from one asyncio event loop, one aiohttp session (kept-alive connections)
per server, as `vllm bench serve` sends them; the body is the OpenAI chat-completions JSON.
The loop runs in a thread of its own, so synchronous callers (`call`, `run`) work from any
thread. Why not the `openai` package: on the same requests, server and concurrency, its
client (sync or AsyncOpenAI, httpx or aiohttp transport) got 0.55-0.8x the requests/s of a
bare aiohttp session (bench/mllm.py, docs/performance.md)."""
from __future__ import annotations

import asyncio
import itertools
import json
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
    """OpenAI-compatible chat client with bounded retries, backoff, strict JSON and a circuit breaker.

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
        self._clients: list[tuple[Any, str]] = []   # (session, URL) per server, made on the loop
        self._turn = itertools.count()
        self._failures = 0
        self._lock = threading.Lock()
        self._loop: EventLoopThread | None = None

    @property
    def loop(self) -> EventLoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = EventLoopThread()
                # Sessions are closed on their loop when this client goes (or at exit).
                self._finalizer = weakref.finalize(self, _close, self._clients, self._loop)
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on this client's event loop and waits for it."""
        return self.loop.run(coro)

    def close(self) -> None:
        if self._loop is not None:
            self._finalizer()
            self._loop = None

    def _session(self) -> tuple[Any, str]:
        """The next server's (session, chat URL), called on the loop only."""
        if not self._clients:
            import aiohttp

            # Per phase, like the OpenAI client's timeout: connecting, and each wait for bytes.
            t = self.cfg.endpoint.timeout_s
            timeout = aiohttp.ClientTimeout(total=None, connect=t, sock_read=t)
            headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
            # No connection limit: the caller bounds the requests in flight.
            self._clients[:] = [(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout,
                                                    headers=headers),
                              url.rstrip("/") + "/chat/completions") for url in self.base_urls]
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
        import aiohttp

        ep = self.cfg.endpoint
        structured = self._structured(name, schema)
        body = {"model": ep.model, "messages": messages, **sampling, **structured.get("extra_body", {}),
                **{k: v for k, v in structured.items() if k != "extra_body"}}
        data = json.dumps(body).encode()
        last_kind, last_detail = "mllm_error", ""
        for attempt in range(1, ep.max_retries + 2):
            with self._lock:
                if self._failures >= ep.circuit_breaker:
                    raise MLLMCallError("mllm_unreachable", f"circuit open after {self._failures} "
                                        "consecutive connection failures", 0)
            start = time.perf_counter()
            try:
                session, url = self._session()
                async with session.post(url, data=data) as resp:
                    raw = await resp.read()
                    status = resp.status
                if status >= 400:
                    last_kind, last_detail = f"mllm_http_{status}", _status_message(status, raw)[:200]
                    if status < 500 and status != 429:
                        raise MLLMCallError(last_kind, last_detail, attempt)
                else:
                    reply = json.loads(raw)
                    choice = reply["choices"][0]
                    text = choice["message"].get("content") or ""
                    parsed = parse(text)
                    with self._lock:
                        self._failures = 0
                    usage = reply.get("usage") or {}
                    return parsed, {
                        "prompt_tokens": usage.get("prompt_tokens"),
                        "completion_tokens": usage.get("completion_tokens"),
                        "latency_s": round(time.perf_counter() - start, 3), "attempts": attempt,
                        "finish_reason": choice.get("finish_reason"),
                    }
            except asyncio.TimeoutError:        # connect or read (aiohttp's are subclasses)
                last_kind, last_detail = "mllm_timeout", f"no reply within {ep.timeout_s}s"
            except aiohttp.ClientError as exc:  # refused, reset, closed mid-reply
                with self._lock:
                    self._failures += 1
                last_kind, last_detail = "mllm_unreachable", f"Connection error: {exc}"[:200]
            except ValueError as exc:   # invalid JSON or schema (pydantic's ValidationError)
                last_kind, last_detail = "mllm_invalid_output", message_line(exc)[:200]
            except (KeyError, IndexError, TypeError, AttributeError) as exc:   # JSON, not a chat reply
                last_kind, last_detail = "mllm_invalid_output", f"not a chat completion: {message_line(exc)}"[:200]
            if attempt <= ep.max_retries:
                await asyncio.sleep(ep.backoff_s * 2 ** (attempt - 1))
        raise MLLMCallError(last_kind, last_detail, ep.max_retries + 1)


def _status_message(status: int, raw: bytes) -> str:
    """As the OpenAI client words an HTTP error: the code and the body's error message."""
    msg = f"Error code: {status}"
    try:
        body = json.loads(raw)
    except ValueError:
        return msg
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"{msg} - {message}" if isinstance(message, str) and message else msg


def _close(clients: list[tuple[Any, str]], loop: EventLoopThread) -> None:
    sessions, clients[:] = [c[0] for c in clients], []
    if sessions and threading.current_thread() is not loop.thread and loop.loop.is_running():
        try:
            loop.run(_close_sessions(sessions))
        except Exception:  # noqa: BLE001 - closing at exit is best effort
            pass
    loop.close()


async def _close_sessions(sessions: list[Any]) -> None:
    for session in sessions:
        await session.close()
