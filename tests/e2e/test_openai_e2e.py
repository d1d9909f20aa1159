"""OpenAI image generation end to end against the fake OpenAI server: the exact upstream
request, and an upstream error ending the job failed with its status and message."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import OPENAI_TEST_KEY, decode_image, submit, wait_terminal
from tests.fakes.openai import FakeOpenAI
from tests.fakes.upstream import FakeResponse

pytestmark = pytest.mark.e2e


def test_generation_sends_the_exact_request(client: httpx.Client, fake_openai: FakeOpenAI) -> None:
    before = len(fake_openai.requests_to("/v1/images/generations"))
    r = submit(
        client,
        {
            "model": "openai/gpt-image-2.6-sunburst",
            "prompt": "a lighthouse",
            "size": "1024x1024",
            "quality": "high",
            "n": 1,
            "seed": 7,  # dropped for openai
            "custom_passthrough": {"a": 1},  # unknown keys pass through
        },
    )
    job = wait_terminal(client, r.json()["id"]).json()
    assert job["status"] == "completed", job
    sent = fake_openai.requests_to("/v1/images/generations")[before:]
    assert len(sent) == 1
    req = sent[0]
    assert req.method == "POST"
    assert req.headers["authorization"] == f"Bearer {OPENAI_TEST_KEY}"
    assert req.json() == {
        "model": "gpt-image-2.6-sunburst",
        "prompt": "a lighthouse",
        "size": "1024x1024",
        "quality": "high",
        "n": 1,
        "custom_passthrough": {"a": 1},
    }
    result = job["result"]
    assert result["extra_fields"]["provider"] == "openai"
    assert result["usage"]["total_tokens"] > 0
    assert decode_image(result["data"][0]["b64_json"]).format == "PNG"


def test_upstream_rejection_fails_the_job(client: httpx.Client, fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(
        FakeResponse(
            400,
            {
                "error": {
                    "message": "Your request was rejected by the safety system.",
                    "type": "image_generation_user_error",
                    "code": "moderation_blocked",
                    "param": None,
                }
            },
        )
    )
    r = submit(client, {"model": "openai/gpt-image-2.6-sunburst", "prompt": "forbidden"})
    job = wait_terminal(client, r.json()["id"]).json()
    assert job["status"] == "failed" and job["status_code"] == 400
    err = job["error"]
    assert err["status_code"] == 400
    assert err["error"]["message"] == "Your request was rejected by the safety system."
    assert err["error"]["code"] == "moderation_blocked"
    assert OPENAI_TEST_KEY not in str(job)
