"""The MLLM client (proxyqa/models/openai_chat.py) against a small HTTP server on 127.0.0.1
that answers as a broken OpenAI-compatible server would: a fault a real vLLM server does
not produce on demand (vLLM itself is exercised in tests/integration/test_mllm.py)."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
from aiohttp import web

from proxyqa.core.config import load_config
from proxyqa.models.openai_chat import EndpointClient, MLLMCallError

REPLIES = {
    "/ok/chat/completions": (200, {"choices": [{"message": {"content": '{"a": 1}'}, "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
    "/not-chat/chat/completions": (200, {"object": "list", "data": []}),
    "/bad-request/chat/completions": (400, {"error": {"message": "image too large"}}),
    "/busy/chat/completions": (503, {"error": {"message": "overloaded"}}),
}


@pytest.fixture(scope="module")
def server():
    calls: dict[str, int] = {}
    loop = asyncio.new_event_loop()

    async def reply(request: web.Request) -> web.Response:
        calls[request.path] = calls.get(request.path, 0) + 1
        body = await request.json()
        assert body["model"] and body["messages"]
        status, payload = REPLIES[request.path]
        return web.json_response(payload, status=status)

    app = web.Application()
    for path in REPLIES:
        app.router.add_post(path, reply)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", calls
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()


def _client(base: str, retries: int = 1) -> EndpointClient:
    cfg = load_config(None, [f"mllm.endpoint.base_url={base}", f"mllm.endpoint.max_retries={retries}",
                             "mllm.endpoint.backoff_s=0.01", "mllm.endpoint.structured_output=none"]).mllm
    return EndpointClient(cfg)


def _call(client: EndpointClient):
    return client.call([{"role": "user", "content": "hi"}], name="x", schema={},
                       parse=json.loads, sampling={"max_tokens": 4})


def test_a_good_reply_is_parsed_with_its_usage(server):
    base, _ = server
    parsed, usage = _call(_client(base + "/ok"))
    assert parsed == {"a": 1}
    assert usage["completion_tokens"] == 2 and usage["finish_reason"] == "stop"


def test_json_that_is_not_a_chat_completion_is_invalid_output_after_retries(server):
    base, calls = server
    with pytest.raises(MLLMCallError) as err:
        _call(_client(base + "/not-chat", retries=1))
    assert err.value.kind == "mllm_invalid_output" and err.value.attempts == 2
    assert calls["/not-chat/chat/completions"] == 2


def test_http_errors_keep_their_code_and_message_and_only_5xx_is_retried(server):
    base, calls = server
    with pytest.raises(MLLMCallError) as err:
        _call(_client(base + "/bad-request", retries=2))
    assert err.value.kind == "mllm_http_400" and "image too large" in err.value.detail
    assert calls["/bad-request/chat/completions"] == 1
    with pytest.raises(MLLMCallError) as err:
        _call(_client(base + "/busy", retries=2))
    assert err.value.kind == "mllm_http_503" and calls["/busy/chat/completions"] == 3
