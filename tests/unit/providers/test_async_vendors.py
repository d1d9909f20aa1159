"""The Replicate and BFL adapters against their fakes: the exact upstream requests, the
polling of predictions / tasks until they end, result downloads, and error mapping."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import pytest
from imagejobs.domain.kinds import Kind
from imagejobs.providers import bfl, replicate
from imagejobs.providers.base import (
    SYSTEM_CLOCK,
    Clock,
    ImageInput,
    Provider,
    ProviderConfig,
    ProviderError,
    ProviderRequest,
    ProviderResult,
    UnsupportedOperation,
    WeightedKey,
)
from imagejobs.worker.retry import RetryPolicy, call_with_retries
from PIL import Image

from tests.fakes.bfl import FakeBFL
from tests.fakes.clock import FakeClock
from tests.fakes.replicate import FakeReplicate
from tests.fakes.upstream import FakeResponse

TOKEN = "r8_test_token_123"
BFL_KEY = "bfl-test-key-456"
FAST_RETRIES = RetryPolicy(max_retries=3, initial_delay_s=0.01, max_delay_s=0.05, jitter_s=0.0)


def gen(model: str, prompt: str | None = "x", **params: Any) -> ProviderRequest:
    return ProviderRequest(kind=Kind.GENERATION, model=model, prompt=prompt, params=params)


async def retried(
    provider: Provider, request: ProviderRequest, clock: Clock = SYSTEM_CLOCK, **kw: Any
) -> ProviderResult:
    """The request run by the worker's retry loop, with short backoff delays, waiting
    on `clock`."""
    deadline = clock.now() + 5
    return await call_with_retries(
        provider, request, policy=FAST_RETRIES, deadline=deadline, clock=clock, **kw
    )


def config(name: str, url: str, key: str, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "name": name,
        "keys": (WeightedKey(key),),
        "base_url": url,
        "timeout_s": 5.0,
        "poll_interval_s": 0.05,
    }
    values.update(overrides)
    return ProviderConfig(**values)


def rgba_png(size: tuple[int, int] = (4, 4), hole: bool = False) -> bytes:
    """An opaque red image; with `hole`, its left half transparent (an OpenAI mask)."""
    img = Image.new("RGBA", size, (255, 0, 0, 255))
    if hole:
        for x in range(size[0] // 2):
            for y in range(size[1]):
                img.putpixel((x, y), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def grey_pixels(data: bytes) -> list[int]:
    with Image.open(io.BytesIO(data)) as img:
        return list(img.convert("L").tobytes())


WHITE_LEFT_HALF = [255, 255, 0, 0] * 4  # a 4x4 white-means-edit mask of the left half


# --- Replicate --------------------------------------------------------------------------


async def test_replicate_generation_follows_the_prediction(http: httpx.AsyncClient) -> None:
    with FakeReplicate(token=TOKEN, polls=3) as fake:
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        request = ProviderRequest(
            kind=Kind.GENERATION,
            model="black-forest-labs/flux-schnell",
            prompt="a lighthouse at dusk",
            params={
                "n": 2,
                "size": "1792x1024",
                "seed": 7,
                "output_format": "png",
                "negative_prompt": "fog",
                "num_inference_steps": 4,
                "quality": "high",
                "response_format": "b64_json",
                "go_fast": True,
            },
        )
        result = await provider.run(request)

        create = fake.requests[0]
        assert (create.method, create.path, create.query) == (
            "POST",
            "/v1/models/black-forest-labs/flux-schnell/predictions",
            {},
        )
        assert create.headers["authorization"] == f"Bearer {TOKEN}"
        assert "prefer" not in create.headers
        assert create.json() == {
            "input": {
                "prompt": "a lighthouse at dusk",
                "aspect_ratio": "16:9",
                "num_outputs": 2,
                "seed": 7,
                "output_format": "png",
                "negative_prompt": "fog",
                "num_inference_steps": 4,
                "go_fast": True,
            }
        }
        polls = fake.upstream.requests_to(r"/v1/predictions/pred1")
        assert len(polls) == 4  # three `processing`, then `succeeded`
        assert all(p.method == "GET" for p in polls)
        assert all(p.headers["authorization"] == f"Bearer {TOKEN}" for p in polls)
        files = fake.upstream.requests_to(r"/files/.*")
        assert [f.path for f in files] == ["/files/pred1/0.png", "/files/pred1/1.png"]
        assert all("authorization" not in f.headers for f in files)  # never leak the token
        assert [img.data for img in result.images] == fake.served
        assert all(img.content_type == "image/png" for img in result.images)


async def test_replicate_version_model_uses_the_predictions_endpoint(
    http: httpx.AsyncClient,
) -> None:
    with FakeReplicate(token=TOKEN, polls=1, output_as_string=True) as fake:
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        result = await provider.run(gen("stability-ai/sdxl:abc123", "x"))
        create = fake.requests[0]
        assert (create.method, create.path) == ("POST", "/v1/predictions")
        assert create.json() == {"version": "abc123", "input": {"prompt": "x"}}
        assert [img.data for img in result.images] == fake.served
        assert len(result.images) == 1


async def test_replicate_edit_sends_image_and_white_mask_as_data_urls(
    http: httpx.AsyncClient,
) -> None:
    image = rgba_png()
    with FakeReplicate(token=TOKEN, polls=1) as fake:
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        request = ProviderRequest(
            kind=Kind.EDIT,
            model="black-forest-labs/flux-fill-pro",
            prompt="a window",
            params={"output_format": "webp", "size": "1024x1024"},
            images=(ImageInput(image),),
            mask=ImageInput(rgba_png(hole=True)),
        )
        result = await provider.run(request)
        model_input = fake.requests[0].json()["input"]
        assert set(model_input) == {"prompt", "output_format", "aspect_ratio", "image", "mask"}
        assert model_input["prompt"] == "a window"
        assert model_input["aspect_ratio"] == "1:1"
        assert model_input["image"] == "data:image/png;base64," + base64.b64encode(image).decode()
        prefix = "data:image/png;base64,"
        assert model_input["mask"].startswith(prefix)
        mask = base64.b64decode(model_input["mask"][len(prefix) :])
        assert grey_pixels(mask) == WHITE_LEFT_HALF
        assert len(result.images) == 1


async def test_replicate_failed_prediction_is_a_500_with_its_error(
    http: httpx.AsyncClient,
) -> None:
    with FakeReplicate(token=TOKEN, polls=2, fail_with="CUDA out of memory") as fake:
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(gen("a/b", "x"))
        err = info.value
        assert err.status_code == 500
        assert err.code == "prediction_failed"
        assert "CUDA out of memory" in err.message
        assert err.retryable is False
        assert len(fake.upstream.requests_to(r"/v1/predictions/pred1")) == 3
        assert not fake.upstream.requests_to(r"/files/.*")


async def test_replicate_4xx_is_not_retryable(http: httpx.AsyncClient) -> None:
    with FakeReplicate(token=TOKEN) as fake:
        fake.upstream.fail_next(
            FakeResponse(
                422,
                {
                    "title": "Input validation failed",
                    "detail": "- input.aspect_ratio: must be one of 1:1, 16:9",
                    "status": 422,
                },
            )
        )
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        with pytest.raises(ProviderError) as info:
            await retried(provider, gen("a/b", "x"))
        err = info.value
        assert (err.status_code, err.type, err.retryable) == (422, "upstream_error", False)
        assert err.message == "- input.aspect_ratio: must be one of 1:1, 16:9"
        assert len(fake.requests) == 1


async def test_replicate_wrong_token_is_a_401(http: httpx.AsyncClient) -> None:
    with FakeReplicate(token=TOKEN) as fake:
        provider = replicate.build(config("replicate", fake.url, "r8_wrong"), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(gen("a/b", "x"))
        assert (info.value.status_code, info.value.retryable) == (401, False)
        assert "authentication token" in info.value.message
        assert "r8_wrong" not in str(info.value)


async def test_replicate_429_honours_retry_after_then_succeeds(http: httpx.AsyncClient) -> None:
    with FakeReplicate(token=TOKEN, polls=0) as fake:
        fake.upstream.fail_next(
            FakeResponse(
                429,
                {"title": "Too Many Requests", "detail": "throttled", "status": 429},
                headers={"Retry-After": "1"},
            )
        )
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        clock = FakeClock()
        result = await retried(provider, gen("a/b", "x"), clock)
        assert clock.sleeps == [1.0]  # Retry-After: 1 honoured, not the 10 ms backoff
        assert [img.data for img in result.images] == fake.served


async def test_replicate_5xx_then_success(http: httpx.AsyncClient) -> None:
    with FakeReplicate(token=TOKEN, polls=0) as fake:
        fake.upstream.fail_next(FakeResponse(502, "bad gateway"))
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        attempts: list[int] = []
        result = await retried(provider, gen("a/b", "x"), on_attempt=attempts.append)
        assert attempts == [1, 2]
        assert len(result.images) == 1


async def test_replicate_transient_poll_failure_does_not_fail_the_job(
    http: httpx.AsyncClient,
) -> None:
    with FakeReplicate(token=TOKEN, polls=1) as fake:
        fake.fail_polls(FakeResponse(503, "unavailable"), FakeResponse(500, "oops"))
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        result = await provider.run(gen("a/b", "x"))
        assert len(result.images) == 1
        assert len(fake.upstream.requests_to(r"/v1/models/.*")) == 1  # one prediction only


async def test_replicate_polls_wait_the_interval_and_a_poll_429_its_retry_after(
    http: httpx.AsyncClient,
) -> None:
    """Every wait of the polling goes through the adapter's clock: poll_interval_s
    between polls, and a throttled poll waits its Retry-After (longer than the interval)
    before it is read again."""
    with FakeReplicate(token=TOKEN, polls=2) as fake:
        fake.fail_polls(FakeResponse(429, {"detail": "throttled"}, headers={"Retry-After": "2"}))
        clock = FakeClock()
        cfg = config("replicate", fake.url, TOKEN, poll_interval_s=0.5)
        provider = replicate.ReplicateProvider(cfg, http, clock=clock)
        result = await provider.run(gen("a/b", "x"))
        assert len(result.images) == 1
        assert len(fake.upstream.requests_to(r"/v1/predictions/.*")) == 4  # 429 + 3 reads
    assert clock.sleeps == [0.5, 2.0, 0.5, 0.5]


async def test_bfl_polling_stops_at_the_deadline_of_its_clock(http: httpx.AsyncClient) -> None:
    """A task that never ends is given up at `timeout_s` on the adapter's clock: a
    retryable upstream_timeout, with no poll sent at the deadline itself (none slept)."""
    with FakeBFL(key=BFL_KEY, polls=1000) as fake:
        clock = FakeClock()
        cfg = config("bfl", fake.url, BFL_KEY, timeout_s=3.0, poll_interval_s=1.0)
        provider = bfl.BflProvider(cfg, http, clock=clock)
        with pytest.raises(ProviderError) as info:
            await provider.run(gen("flux-dev", "p"))
        polls = fake.upstream.requests_to(r"/v1/get_result")
    assert (info.value.code, info.value.retryable) == ("upstream_timeout", True)
    assert clock.sleeps == [1.0, 1.0, 1.0]  # the third wait ends at the deadline
    assert len(polls) == 2


async def test_replicate_timeout_is_retryable(http: httpx.AsyncClient) -> None:
    with FakeReplicate(token=TOKEN) as fake:
        fake.upstream.fail_next(FakeResponse(201, {}, delay_s=1))
        provider = replicate.build(config("replicate", fake.url, TOKEN, timeout_s=0.3), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(gen("a/b", "x"))
        assert info.value.retryable is True
        assert info.value.code == "upstream_timeout"


async def test_replicate_polling_is_bounded_by_timeout(http: httpx.AsyncClient) -> None:
    with FakeReplicate(token=TOKEN, polls=1000) as fake:
        provider = replicate.build(config("replicate", fake.url, TOKEN, timeout_s=0.4), http)
        started = time.monotonic()
        with pytest.raises(ProviderError) as info:
            await provider.run(gen("a/b", "x"))
        assert time.monotonic() - started < 1.0
        assert (info.value.code, info.value.retryable) == ("upstream_timeout", True)
        assert len(fake.upstream.requests_to(r"/v1/predictions/.*")) >= 3


async def test_replicate_has_no_variations(http: httpx.AsyncClient) -> None:
    with FakeReplicate(token=TOKEN) as fake:
        provider = replicate.build(config("replicate", fake.url, TOKEN), http)
        with pytest.raises(UnsupportedOperation):
            await provider.run(
                ProviderRequest(kind=Kind.VARIATION, model="a/b", images=(ImageInput(b"x"),))
            )
        assert fake.requests == []


# --- BFL ----------------------------------------------------------------------------------


async def test_bfl_generation_polls_then_downloads(http: httpx.AsyncClient) -> None:
    with FakeBFL(key=BFL_KEY, polls=3) as fake:
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        result = await provider.run(
            ProviderRequest(
                kind=Kind.GENERATION,
                model="flux-pro-1.1",
                prompt="a red fox",
                params={
                    "size": "1024x768",
                    "seed": 42,
                    "output_format": "png",
                    "safety_tolerance": 2,
                    "negative_prompt": "dropped",
                    "response_format": "b64_json",
                },
            )
        )
        create = fake.requests[0]
        assert (create.method, create.path, create.query) == ("POST", "/v1/flux-pro-1.1", {})
        assert create.headers["x-key"] == BFL_KEY
        assert create.json() == {
            "prompt": "a red fox",
            "width": 1024,
            "height": 768,
            "seed": 42,
            "output_format": "png",
            "safety_tolerance": 2,
        }
        polls = fake.upstream.requests_to(r"/v1/get_result")
        assert len(polls) == 4
        assert all(p.query == {"id": ["task-1"]} and p.headers["x-key"] == BFL_KEY for p in polls)
        (delivery,) = fake.upstream.requests_to(r"/delivery/.*")
        assert "x-key" not in delivery.headers
        assert [img.data for img in result.images] == fake.served


async def test_bfl_fans_out_n_tasks(http: httpx.AsyncClient) -> None:
    with FakeBFL(key=BFL_KEY, polls=1) as fake:
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        result = await provider.run(
            ProviderRequest(
                kind=Kind.GENERATION, model="flux-pro-1.1", prompt="p", params={"n": 3, "seed": 5}
            )
        )
        creates = [r for r in fake.requests if r.method == "POST"]
        assert sorted(r.json()["seed"] for r in creates) == [5, 6, 7]  # distinct images
        assert all(set(r.json()) == {"prompt", "seed"} for r in creates)
        assert len(result.images) == 3
        assert sorted(img.data for img in result.images) == sorted(fake.served)
        assert len(set(fake.served)) == 3


async def test_bfl_kontext_edit_sends_input_images_and_aspect_ratio(
    http: httpx.AsyncClient,
) -> None:
    first, second = rgba_png((4, 4)), rgba_png((6, 6))
    with FakeBFL(key=BFL_KEY, polls=1) as fake:
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        await provider.run(
            ProviderRequest(
                kind=Kind.EDIT,
                model="flux-kontext-pro",
                prompt="make it night",
                params={"size": "1536x1024"},
                images=(ImageInput(first), ImageInput(second)),
                mask=ImageInput(rgba_png(hole=True)),  # Kontext edits by prompt: ignored
            )
        )
        create = fake.requests[0]
        assert create.path == "/v1/flux-kontext-pro"
        assert create.json() == {
            "prompt": "make it night",
            "aspect_ratio": "3:2",
            "input_image": base64.b64encode(first).decode(),
            "input_image_2": base64.b64encode(second).decode(),
        }


async def test_bfl_fill_edit_sends_image_and_white_mask(http: httpx.AsyncClient) -> None:
    image = rgba_png()
    with FakeBFL(key=BFL_KEY, polls=1) as fake:
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        result = await provider.run(
            ProviderRequest(
                kind=Kind.EDIT,
                model="flux-pro-1.0-fill",
                prompt="a door",
                params={"num_inference_steps": 30},
                images=(ImageInput(image),),
                mask=ImageInput(rgba_png(hole=True)),
            )
        )
        body = fake.requests[0].json()
        assert set(body) == {"prompt", "steps", "image", "mask"}
        assert (body["prompt"], body["steps"]) == ("a door", 30)
        assert base64.b64decode(body["image"]) == image
        assert grey_pixels(base64.b64decode(body["mask"])) == WHITE_LEFT_HALF
        assert len(result.images) == 1


@pytest.mark.parametrize(
    ("final", "status", "code"),
    [
        ("Content Moderated", 400, "content_filtered"),
        ("Request Moderated", 400, "content_filtered"),
        ("Error", 500, "task_failed"),
    ],
)
async def test_bfl_failed_task(http: httpx.AsyncClient, final: str, status: int, code: str) -> None:
    with FakeBFL(key=BFL_KEY, polls=2, final=final) as fake:
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(gen("flux-dev", "p"))
        assert (info.value.status_code, info.value.code, info.value.retryable) == (
            status,
            code,
            False,
        )
        assert len(fake.upstream.requests_to(r"/v1/get_result")) == 3
        assert not fake.upstream.requests_to(r"/delivery/.*")


async def test_bfl_422_is_not_retryable(http: httpx.AsyncClient) -> None:
    with FakeBFL(key=BFL_KEY) as fake:
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        with pytest.raises(ProviderError) as info:
            await retried(provider, gen("flux-pro-1.1", None))
        assert (info.value.status_code, info.value.retryable) == (422, False)
        assert "Field required" in info.value.message
        assert len(fake.requests) == 1


async def test_bfl_wrong_key_is_a_403_without_the_key_in_it(http: httpx.AsyncClient) -> None:
    with FakeBFL(key=BFL_KEY) as fake:
        provider = bfl.build(config("bfl", fake.url, "not-the-key"), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(gen("flux-dev", "p"))
        assert (info.value.status_code, info.value.retryable) == (403, False)
        assert "not-the-key" not in str(info.value)


async def test_bfl_429_honours_retry_after_then_succeeds(http: httpx.AsyncClient) -> None:
    with FakeBFL(key=BFL_KEY, polls=0) as fake:
        fake.upstream.fail_next(
            FakeResponse(
                429,
                {"detail": "You have exceeded the limit of 24 active tasks."},
                headers={"Retry-After": "1"},
            )
        )
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        clock = FakeClock()
        result = await retried(provider, gen("flux-dev", "p"), clock)
        assert clock.sleeps == [1.0]  # Retry-After: 1 honoured, not the 10 ms backoff
        assert [img.data for img in result.images] == fake.served


async def test_bfl_5xx_then_success(http: httpx.AsyncClient) -> None:
    with FakeBFL(key=BFL_KEY, polls=0) as fake:
        fake.upstream.fail_next(FakeResponse(503, {"detail": "maintenance"}))
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        result = await retried(provider, gen("flux-dev", "p"))
        assert len(result.images) == 1
        assert len([r for r in fake.requests if r.method == "POST"]) == 2


async def test_bfl_timeout_is_retryable(http: httpx.AsyncClient) -> None:
    with FakeBFL(key=BFL_KEY) as fake:
        fake.upstream.fail_next(FakeResponse(200, {}, delay_s=1))
        provider = bfl.build(config("bfl", fake.url, BFL_KEY, timeout_s=0.3), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(gen("flux-dev", "p"))
        assert (info.value.code, info.value.retryable) == ("upstream_timeout", True)


async def test_bfl_has_no_variations(http: httpx.AsyncClient) -> None:
    with FakeBFL(key=BFL_KEY) as fake:
        provider = bfl.build(config("bfl", fake.url, BFL_KEY), http)
        with pytest.raises(UnsupportedOperation):
            await provider.run(
                ProviderRequest(kind=Kind.VARIATION, model="flux-dev", images=(ImageInput(b"x"),))
            )
        assert fake.requests == []
