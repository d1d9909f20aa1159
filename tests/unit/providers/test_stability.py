"""The Stability AI adapter against its fake: endpoint choice by model and edit type, the
exact multipart fields and files, raw-bytes answers, fan-out, and error mapping."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from imagejobs.domain.kinds import Kind
from imagejobs.providers import stability
from imagejobs.providers.base import (
    ImageInput,
    ProviderConfig,
    ProviderError,
    ProviderRequest,
    UnsupportedOperation,
    WeightedKey,
)
from imagejobs.worker.retry import RetryPolicy, call_with_retries
from PIL import Image

from tests.fakes.clock import FakeClock
from tests.fakes.stability import FakeStability
from tests.fakes.upstream import FakeResponse

KEY = "sk-stability-test"
FAST_RETRIES = RetryPolicy(max_retries=3, initial_delay_s=0.01, max_delay_s=0.05, jitter_s=0.0)


@pytest.fixture
def fake() -> Iterator[FakeStability]:
    with FakeStability(key=KEY) as upstream:
        yield upstream


def make(
    fake: FakeStability, http: httpx.AsyncClient, **overrides: Any
) -> stability.StabilityProvider:
    values: dict[str, Any] = {
        "name": "stability",
        "keys": (WeightedKey(KEY),),
        "base_url": fake.url,
        "timeout_s": 5.0,
    }
    values.update(overrides)
    return stability.build(ProviderConfig(**values), http)


def rgba_png(hole: bool = False) -> bytes:
    img = Image.new("RGBA", (4, 4), (0, 0, 255, 255))
    if hole:
        for x in range(2):
            for y in range(4):
                img.putpixel((x, y), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def generation(model: str = "sd3.5-large", **params: Any) -> ProviderRequest:
    return ProviderRequest(kind=Kind.GENERATION, model=model, prompt="a koi pond", params=params)


async def test_sd3_generation_request_and_result(
    fake: FakeStability, http: httpx.AsyncClient
) -> None:
    result = await make(fake, http).run(
        generation(
            size="1024x1792",
            seed=11,
            output_format="png",
            negative_prompt="people",
            style_preset="photographic",
            quality="hd",
            response_format="b64_json",
        )
    )
    (req,) = fake.requests
    assert (req.method, req.path, req.query) == ("POST", "/v2beta/stable-image/generate/sd3", {})
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["accept"] == "image/*"
    assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
    fields, files = req.multipart()
    assert fields == {
        "prompt": ["a koi pond"],
        "seed": ["11"],
        "output_format": ["png"],
        "negative_prompt": ["people"],
        "style_preset": ["photographic"],
        "model": ["sd3.5-large"],
        "aspect_ratio": ["9:16"],
    }
    assert files == {}
    assert [img.data for img in result.images] == fake.served
    assert result.images[0].content_type == "image/png"


@pytest.mark.parametrize(
    ("model", "endpoint"),
    [("core", "core"), ("stable-image-ultra", "ultra"), ("ultra", "ultra"), ("sd3", "sd3")],
)
async def test_model_picks_the_endpoint(
    fake: FakeStability, http: httpx.AsyncClient, model: str, endpoint: str
) -> None:
    await make(fake, http).run(generation(model, aspect_ratio="21:9"))
    (req,) = fake.requests
    assert req.path == f"/v2beta/stable-image/generate/{endpoint}"
    fields, _ = req.multipart()
    assert fields == {"prompt": ["a koi pond"], "aspect_ratio": ["21:9"]}  # no `model` field


async def test_n_fans_out_one_call_per_image(fake: FakeStability, http: httpx.AsyncClient) -> None:
    result = await make(fake, http).run(generation("core", n=3, seed=9))
    forms = [r.multipart() for r in fake.requests]
    assert sorted(fields["seed"][0] for fields, _ in forms) == ["10", "11", "9"]
    assert all(set(fields) == {"prompt", "seed"} and not files for fields, files in forms)
    assert len(result.images) == 3
    assert sorted(img.data for img in result.images) == sorted(fake.served)
    assert len(set(fake.served)) == 3


async def test_inpaint_sends_image_and_white_mask(
    fake: FakeStability, http: httpx.AsyncClient
) -> None:
    image = rgba_png()
    await make(fake, http).run(
        ProviderRequest(
            kind=Kind.EDIT,
            model="sd3.5-large",
            prompt="lilies",
            params={"seed": 3, "grow_mask": 10, "input_fidelity": "high"},
            images=(ImageInput(image, "image/png", "pond.png"),),
            mask=ImageInput(rgba_png(hole=True)),
        )
    )
    (req,) = fake.requests
    assert req.path == "/v2beta/stable-image/edit/inpaint"
    fields, files = req.multipart()
    assert fields == {"prompt": ["lilies"], "seed": ["3"], "grow_mask": ["10"]}
    assert files["image"] == [("pond.png", "image/png", image)]
    ((name, ctype, mask),) = files["mask"]
    assert (name, ctype) == ("mask.png", "image/png")
    with Image.open(io.BytesIO(mask)) as img:
        assert list(img.convert("L").tobytes()) == [255, 255, 0, 0] * 4


async def test_outpaint_sends_directions(fake: FakeStability, http: httpx.AsyncClient) -> None:
    await make(fake, http).run(
        ProviderRequest(
            kind=Kind.EDIT,
            model="core",
            prompt="more sky",
            params={"type": "outpainting", "left": 64, "up": 128, "creativity": 0.4},
            images=(ImageInput(rgba_png()),),
        )
    )
    (req,) = fake.requests
    assert req.path == "/v2beta/stable-image/edit/outpaint"
    fields, files = req.multipart()
    assert fields == {"prompt": ["more sky"], "creativity": ["0.4"], "left": ["64"], "up": ["128"]}
    assert set(files) == {"image"}


async def test_remove_background_sends_the_image_only(
    fake: FakeStability, http: httpx.AsyncClient
) -> None:
    await make(fake, http).run(
        ProviderRequest(
            kind=Kind.EDIT,
            model="core",
            params={"type": "background_removal", "output_format": "webp", "seed": 5},
            images=(ImageInput(rgba_png()),),
        )
    )
    (req,) = fake.requests
    assert req.path == "/v2beta/stable-image/edit/remove-background"
    fields, files = req.multipart()
    assert fields == {"output_format": ["webp"]}
    assert set(files) == {"image"}


async def test_error_body_becomes_message_and_type(
    fake: FakeStability, http: httpx.AsyncClient
) -> None:
    fake.upstream.fail_next(
        FakeResponse(
            400,
            {
                "id": "e1",
                "name": "bad_request",
                "errors": ["aspect_ratio: must be one of 16:9, 1:1", "seed: too large"],
            },
        )
    )
    with pytest.raises(ProviderError) as info:
        await call_with_retries(
            make(fake, http),
            generation(),
            policy=FAST_RETRIES,
            deadline=time.monotonic() + 5,
        )
    err = info.value
    assert (err.status_code, err.type, err.retryable) == (400, "bad_request", False)
    assert err.message == "aspect_ratio: must be one of 16:9, 1:1; seed: too large"
    assert len(fake.requests) == 1


async def test_wrong_key_is_a_401(fake: FakeStability, http: httpx.AsyncClient) -> None:
    provider = make(fake, http, keys=(WeightedKey("sk-wrong"),))
    with pytest.raises(ProviderError) as info:
        await provider.run(generation())
    assert (info.value.status_code, info.value.type, info.value.retryable) == (
        401,
        "unauthorized",
        False,
    )
    assert "sk-wrong" not in str(info.value)


async def test_content_filtered_result_is_an_error(http: httpx.AsyncClient) -> None:
    with FakeStability(key=KEY, content_filtered=True) as filtered:
        with pytest.raises(ProviderError) as info:
            await make(filtered, http).run(generation())
        assert (info.value.status_code, info.value.code, info.value.retryable) == (
            400,
            "content_filtered",
            False,
        )


async def test_429_honours_retry_after_then_succeeds(
    fake: FakeStability, http: httpx.AsyncClient
) -> None:
    fake.upstream.fail_next(
        FakeResponse(
            429,
            {"id": "r", "name": "rate_limit_exceeded", "errors": ["slow down"]},
            headers={"Retry-After": "1"},
        )
    )
    clock = FakeClock()
    result = await call_with_retries(
        make(fake, http), generation(), policy=FAST_RETRIES, deadline=clock.now() + 5, clock=clock
    )
    assert clock.sleeps == [1.0]  # Retry-After: 1 honoured, not the 10 ms backoff
    assert [img.data for img in result.images] == fake.served


async def test_5xx_then_success(fake: FakeStability, http: httpx.AsyncClient) -> None:
    fake.upstream.fail_next(
        FakeResponse(500, {"id": "x", "name": "internal_error", "errors": ["oops"]})
    )
    result = await call_with_retries(
        make(fake, http), generation(), policy=FAST_RETRIES, deadline=time.monotonic() + 5
    )
    assert len(result.images) == 1
    assert len(fake.requests) == 2


async def test_timeout_is_retryable(fake: FakeStability, http: httpx.AsyncClient) -> None:
    fake.upstream.fail_next(FakeResponse(200, b"", delay_s=1))
    with pytest.raises(ProviderError) as info:
        await make(fake, http, timeout_s=0.3).run(generation())
    assert (info.value.code, info.value.retryable) == ("upstream_timeout", True)


async def test_unsupported_and_invalid_requests_send_nothing(
    fake: FakeStability, http: httpx.AsyncClient
) -> None:
    provider = make(fake, http)
    with pytest.raises(UnsupportedOperation):
        await provider.run(
            ProviderRequest(kind=Kind.VARIATION, model="core", images=(ImageInput(b"x"),))
        )
    with pytest.raises(ProviderError) as info:
        await provider.run(generation("sdxl-1.0"))
    assert (info.value.status_code, info.value.param) == (400, "model")
    with pytest.raises(ProviderError) as info:
        await provider.run(
            ProviderRequest(
                kind=Kind.EDIT,
                model="core",
                prompt="p",
                params={"type": "recolor"},
                images=(ImageInput(rgba_png()),),
            )
        )
    assert (info.value.status_code, info.value.param) == (400, "type")
    assert fake.requests == []
