"""The Python SDK (`imagejobs.client`) against the session stack through Envoy: the blocking
and the asyncio client, every call, the conveniences, large results fetched
transparently, and errors that carry the contract's body. Each test uses a key of its
own (the stack runs open: a key scopes the jobs it makes), so lists count only its jobs."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path

import httpx
import pytest
from imagejobs.client import (
    AsyncClient,
    Client,
    Conflict,
    InvalidArgument,
    JobFailed,
    Kind,
    NotFound,
    Status,
    WaitTimeout,
)
from imagejobs.client.options import MAX_POLL_S
from imagejobs.testing import Stack
from PIL import Image

from tests.conftest import png
from tests.e2e.test_edits import noise_png

pytestmark = pytest.mark.e2e

SLOW = {"mock_latency_ms": 20_000}


def new_key() -> str:
    return f"sk-bf-sdk-{uuid.uuid4().hex}"


def test_generate_returns_images_as_bytes_and_saves_them(stack: Stack, tmp_path: Path) -> None:
    with Client(stack.grpc_gateway, key=new_key()) as client:
        result = client.generate("a red fox", model="mock/image-1", size="40x30", n=2)
    assert [i.index for i in result.images] == [0, 1]
    saved = result.images[1].save(tmp_path / "fox.png")
    assert saved.read_bytes() == result.images[1].data
    assert Image.open(saved).size == (40, 30)
    assert result.images[0].mime_type == "image/png" and result.images[0].extension == "png"
    assert result.usage is not None and result.usage.total_tokens > 0
    assert (result.provider, result.model_requested, result.request_type) == (
        "mock",
        "image-1",
        "image_generation",
    )


async def test_the_async_client_submits_watches_waits_gets_and_lists(stack: Stack) -> None:
    async with AsyncClient(stack.grpc_gateway, key=new_key()) as client:
        job = await client.submit(
            Kind.GENERATION, "mock/m", "steps", params={"size": "8x8", "mock_latency_ms": 300}
        )
        assert job.status is Status.PENDING and job.kind is Kind.GENERATION
        states = [j.status async for j in client.watch(job.id)]
        assert states[-1] is Status.COMPLETED and Status.PROCESSING in states
        assert states.count(Status.COMPLETED) == 1
        waited = await client.wait(job.id)  # already terminal: at once
        got = await client.get(job.id, kind="generations")
        assert waited == got and got.result is not None and got.result.images[0].data
        second = await client.submit("generations", "mock/m", "two", params={"size": "8x8"})
        third = await client.submit("generations", "mock/m", "three", params={"size": "8x8"})
        await client.wait(third.id)
        listed = [j.id async for j in client.list(page_size=1)]  # three pages
        assert listed == [third.id, second.id, job.id]
        assert [j.id async for j in client.list(limit=2)] == [third.id, second.id]
        done = [j async for j in client.list(status="completed", kind=Kind.GENERATION)]
        assert {j.id for j in done} >= {job.id, third.id}
        assert all(not i.data for j in done for i in j.result.images)  # type: ignore[union-attr]


def test_edit_and_vary_take_paths_or_bytes(stack: Stack, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(32, 24, (200, 10, 10)))
    mask = Image.new("RGBA", (32, 24), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 16, 24))  # transparent: edit the left half
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    with Client(stack.grpc_gateway, key=new_key()) as client:
        edited = client.edit([photo], prompt="tint it", model="mock/m", mask=buf.getvalue())
        varied = client.vary(png(20, 20), model="mock/m", n=2)
    assert Image.open(io.BytesIO(edited.images[0].data)).size == (32, 24)
    assert edited.request_type == "image_edit"
    assert len(varied.images) == 2 and varied.request_type == "image_variation"


async def test_cancel_wait_timeout_and_conflict(stack: Stack) -> None:
    async with AsyncClient(stack.grpc_gateway, key=new_key()) as client:
        job = await client.submit(Kind.GENERATION, "mock/m", "slow", params=SLOW)
        still = await client.wait(job.id, timeout_s=0.3)
        assert not still.terminal
        cancelled = await client.cancel(job.id)
        assert cancelled.status is Status.CANCELLED and cancelled.status_code == 499
        assert cancelled.error is not None and cancelled.error.code == "cancelled"
        with pytest.raises(Conflict) as info:
            await client.cancel(job.id)
        assert info.value.status_code == 409 and info.value.code == "job_not_cancellable"
        slow = await client.submit(Kind.GENERATION, "mock/m", "slow 2", params=SLOW)
        with pytest.raises(WaitTimeout) as waited:
            await client.generate("slow 3", model="mock/m", params=SLOW, timeout_s=0.2)
        assert not waited.value.job.terminal
        for j in (slow, waited.value.job):
            await client.cancel(j.id)


def test_errors_carry_the_contracts_error_response(stack: Stack) -> None:
    with Client(stack.grpc_gateway, key=new_key()) as client:
        with pytest.raises(InvalidArgument) as bad:
            client.submit(Kind.GENERATION, "mock/m", "")
        error = bad.value
        assert (error.status_code, error.type, error.code, error.param) == (
            400,
            "invalid_request_error",
            "invalid_request",
            "prompt",
        )
        assert error.message == "prompt cannot be empty" and error.error.event_id
        with pytest.raises(NotFound) as missing:
            client.get(str(uuid.uuid4()))
        assert missing.value.status_code == 404 and missing.value.code == "job_not_found"
        with pytest.raises(JobFailed) as failed:
            client.generate("doomed", model="mock/m", params={"mock_fail_status": 400})
        job = failed.value.job
        assert job.status is Status.FAILED and job.status_code == 400
        assert failed.value.status_code == 400 and failed.value.code == "mock_failure"
        assert failed.value.error.provider == "mock"


def test_a_large_result_comes_whole_with_the_default_receive_limit(
    stack: Stack, client: httpx.Client
) -> None:
    key = new_key()
    with Client(stack.grpc_gateway, key=key) as sdk:
        result = sdk.vary(noise_png(1300, 1300), model="mock/m", n=2)
        assert [i.size_bytes for i in result.images] == [len(i.data) for i in result.images]
        assert all(i.size_bytes > 4 * 1024 * 1024 for i in result.images)
        job_id = result.images[0].url.split("/")[-3]
        summary = sdk.get(job_id, images=False)  # the caller may skip the download
    assert summary.result is not None and summary.result.images[0].data == b""
    for image in result.images:
        path = f"/v1/async/images/variations/{job_id}/images/{image.index}"
        rest = client.get(path, headers={"x-bf-vk": key})
        assert rest.status_code == 200 and rest.content == image.data


async def test_wait_answers_as_soon_as_the_job_ends(stack: Stack) -> None:
    """wait() long-polls (at most MAX_POLL_S each): the answer comes when the job ends,
    not at the end of a poll."""
    latency_ms = 1500
    assert latency_ms / 1000 < MAX_POLL_S
    async with AsyncClient(stack.grpc_gateway, key=new_key()) as client:
        job = await client.submit(
            Kind.GENERATION, "mock/m", "waited", params={"mock_latency_ms": latency_ms}
        )
        started = asyncio.get_running_loop().time()
        done = await client.wait(job.id)
        took = asyncio.get_running_loop().time() - started
    assert done.status is Status.COMPLETED and took < latency_ms / 1000 + 5
