"""Shared fixtures: one real stack (nats-server, API, worker, Envoy) for the session,
with the OpenAI provider pointed at a fake OpenAI server on loopback."""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from imagejobs.testing import Stack, free_port, require_binary
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc
from PIL import Image

from tests.fakes.openai import FakeOpenAI

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
            # the same fake as a self-hosted OpenAI-compatible server (variations: OpenAI's
            # own dall-e-2 is retired)
            "openai-compatible": {
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


def mock_request(prompt: str = "p", *, ms: int = 0, model: str = "mock/m") -> dict[str, Any]:
    """A small generation for the mock provider, taking `ms` milliseconds upstream."""
    return {"model": model, "prompt": prompt, "size": "16x16", "mock_latency_ms": ms}


def png(width: int, height: int, color: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """A plain PNG of that size and colour."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


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


def status_word(job: jobs_pb2.Job) -> str:
    """A typed Job's status as the contract's word (`JOB_STATUS_PENDING` -> `pending`)."""
    return jobs_pb2.JobStatus.Name(job.status).removeprefix("JOB_STATUS_").lower()


def decode_image(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def assert_error_body(r: httpx.Response, status: int, message: str | None = None) -> dict[str, Any]:
    """The contract's error body, with the HTTP status equal to status_code."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert body["is_bifrost_error"] is True
    assert body["status_code"] == status
    assert body["error"]["message"]
    assert body["event_id"] and body["error"]["event_id"] == body["event_id"]
    assert body["type"] == body["error"]["type"]
    if message is not None:
        assert body["error"]["message"].startswith(message), body
    return body


def orphan_via_failpoint(stack: Stack) -> tuple[str, str]:
    """Start an extra API process with the `submit.before_publish` failpoint and submit
    to it over gRPC with an Idempotency-Key: it dies right after recording the job,
    before publishing it. Returns (the key, the orphaned job's id, from its log)."""
    port = free_port()
    proc = stack.start_api(port, {"IMAGEJOBS_FAILPOINT": "submit.before_publish"})
    key = f"orphan-{uuid.uuid4().hex}"
    request = jobs_pb2.SubmitImageJobRequest(
        kind=jobs_pb2.JOB_KIND_GENERATION,
        request=jobs_pb2.ImageRequest(model="mock/m", prompt="orphan", size="16x16"),
        idempotency_key=key,
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            jobs_pb2_grpc.ImageJobServiceStub(channel).SubmitImageJob(request, timeout=20)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the process died
    assert proc.wait(timeout=10) == 137
    match = re.search(r"exiting before publishing job (\S+)", stack.log(f"api-{port}"))
    assert match, stack.log(f"api-{port}")
    return key, match.group(1)
