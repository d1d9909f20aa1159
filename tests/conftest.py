"""Shared fixtures: one real stack (nats-server, API, worker, Envoy) for the session,
with the OpenAI provider pointed at a fake OpenAI server on loopback."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fakes.openai import FakeOpenAI
from tests.harness import Stack, require_binary

OPENAI_TEST_KEY = "sk-test-openai-0123456789"


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_TEST_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    root = tmp_path_factory.mktemp("stack")
    config: dict[str, Any] = {
        "providers": {
            "mock": {},
            "openai": {
                "base_url": fake_openai.url,
                "keys": [{"env": "TEST_OPENAI_KEY"}],
                "max_retries": 1,
            },
        },
    }
    s = Stack(root, config, env={"TEST_OPENAI_KEY": OPENAI_TEST_KEY})
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c


def submit(
    client: httpx.Client, body: dict[str, Any], kind: str = "generations", **headers: str
) -> httpx.Response:
    return client.post(f"/v1/async/images/{kind}", json=body, headers=headers)


def wait_terminal(
    client: httpx.Client,
    job_id: str,
    kind: str = "generations",
    timeout_s: float = 30,
    **headers: str,
) -> httpx.Response:
    """Poll until the job is terminal (HTTP 200); fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get(f"/v1/async/images/{kind}/{job_id}", headers=headers)
        if r.status_code != 202:
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not terminal after {timeout_s} s: {r.json()}")
        time.sleep(0.05)


def decode_image(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def assert_error_body(r: httpx.Response, status: int, message: str | None = None) -> dict[str, Any]:
    """The contract's error body, with the HTTP status equal to status_code."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["is_bifrost_error"] is True
    assert body["status_code"] == status
    assert body["error"]["message"]
    assert body["event_id"] and body["error"]["event_id"] == body["event_id"]
    assert body["type"] == body["error"]["type"]
    if message is not None:
        assert body["error"]["message"].startswith(message), body
    return body
