"""The Hugging Face router adapter against a local fake router: hf-inference text-to-image
and image-to-image, Together and Nebius text-to-image, errors, retries and fan-out."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from imagejobs.domain.kinds import Kind
from imagejobs.providers import huggingface
from imagejobs.providers.base import (
    ImageInput,
    ProviderConfig,
    ProviderError,
    ProviderNotConfigured,
    ProviderRequest,
    UnsupportedOperation,
    WeightedKey,
)
from imagejobs.worker.retry import RetryPolicy, call_with_retries

from tests.fakes.clock import FakeClock
from tests.fakes.gemini import png_bytes
from tests.fakes.huggingface import FakeHuggingFace
from tests.fakes.upstream import FakeResponse

TOKEN = "hf_test_secret"
FLUX = "black-forest-labs/FLUX.1-schnell"
FAST_RETRIES = RetryPolicy(max_retries=2, initial_delay_s=0.01, max_delay_s=0.05, jitter_s=0.0)


def gen(model: str, prompt: str = "a lighthouse at dusk", **params: Any) -> ProviderRequest:
    return ProviderRequest(kind=Kind.GENERATION, model=model, prompt=prompt, params=params)


@pytest.fixture
def fake() -> Iterator[FakeHuggingFace]:
    with FakeHuggingFace(token=TOKEN) as f:
        yield f


def provider_for(
    fake: FakeHuggingFace, http: httpx.AsyncClient, *, key: str = TOKEN, timeout_s: float = 5.0
) -> huggingface.HuggingFaceProvider:
    keys = (WeightedKey(key),) if key else ()
    config = ProviderConfig(
        name="huggingface",
        base_url=fake.url,
        hub_url=fake.hub_url,
        keys=keys,
        timeout_s=timeout_s,
    )
    return huggingface.build(config, http)


async def test_hf_inference_text_to_image_request(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    request = gen(
        f"hf-inference/{FLUX}",
        size="1024x768",
        negative_prompt="blurry",
        num_inference_steps=4,
        seed=42,
        guidance_scale=3.5,
        quality="high",  # a contract field hf-inference has no use for: dropped
    )
    result = await provider_for(fake, http).run(request)

    [sent] = fake.requests
    assert (sent.method, sent.path, sent.query) == ("POST", f"/hf-inference/models/{FLUX}", {})
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.json() == {
        "inputs": "a lighthouse at dusk",
        "parameters": {
            "negative_prompt": "blurry",
            "num_inference_steps": 4,
            "width": 1024,
            "height": 768,
            "seed": 42,
            "guidance_scale": 3.5,
        },
    }
    assert [i.data for i in result.images] == fake.served
    assert result.images[0].content_type == "image/png"


async def test_hf_inference_without_shape_uses_model_default(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    await provider_for(fake, http).run(gen(f"hf-inference/{FLUX}"))
    assert fake.requests[0].json() == {"inputs": "a lighthouse at dusk", "parameters": {}}


async def test_hf_inference_image_to_image_request(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    image = png_bytes(9)
    request = ProviderRequest(
        kind=Kind.EDIT,
        model="hf-inference/timbrooks/instruct-pix2pix",
        prompt="make it winter",
        params={"num_inference_steps": 20, "size": "512x512"},
        images=(ImageInput(image),),
        mask=ImageInput(png_bytes(10)),  # no mask input on hf-inference: ignored
    )
    result = await provider_for(fake, http).run(request)

    [sent] = fake.requests
    assert sent.path == "/hf-inference/models/timbrooks/instruct-pix2pix"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.json() == {
        "inputs": base64.b64encode(image).decode(),
        "parameters": {
            "prompt": "make it winter",
            "num_inference_steps": 20,
            "target_size": {"width": 512, "height": 512},
        },
    }
    assert result.images[0].data == fake.served[0]


async def test_together_text_to_image_request(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    request = gen(f"together/{FLUX}", size="1024x1024", num_inference_steps=4, seed=1)
    result = await provider_for(fake, http).run(request)

    [sent] = fake.requests
    assert (sent.method, sent.path) == ("POST", "/together/v1/images/generations")
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.json() == {
        "model": "black-forest-labs/FLUX.1-schnell-Free",  # Together's id, as the Hub maps it
        "prompt": "a lighthouse at dusk",
        "width": 1024,
        "height": 1024,
        "steps": 4,
        "seed": 1,
        "response_format": "base64",
    }
    assert result.images[0].data == fake.served[0]
    assert result.images[0].content_type == "image/png"


async def test_nebius_text_to_image_request(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    request = gen(
        f"nebius/{FLUX}",  # the Hub repo; the Hub maps it to Nebius's own id
        num_inference_steps=8,
        negative_prompt="text",
        guidance_scale=3.5,  # not accepted by Nebius: dropped
    )
    result = await provider_for(fake, http).run(request)

    [sent] = fake.requests
    assert (sent.method, sent.path) == ("POST", "/nebius/v1/images/generations")
    assert sent.json() == {
        "model": "black-forest-labs/flux-schnell",
        "prompt": "a lighthouse at dusk",
        "num_inference_steps": 8,
        "negative_prompt": "text",
        "response_format": "b64_json",
    }
    assert result.images[0].data == fake.served[0]


async def test_fan_out_with_seeds(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    result = await provider_for(fake, http).run(gen(f"hf-inference/{FLUX}", n=3, seed=10))
    assert len(fake.requests) == 3
    assert sorted(r.json()["parameters"]["seed"] for r in fake.requests) == [10, 11, 12]
    assert len(result.images) == 3
    assert sorted(i.data for i in result.images) == sorted(fake.served)


@pytest.mark.parametrize(
    "request_",
    [
        ProviderRequest(
            kind=Kind.VARIATION,
            model=f"hf-inference/{FLUX}",
            images=(ImageInput(png_bytes()),),
        ),
        ProviderRequest(
            kind=Kind.EDIT,
            model=f"together/{FLUX}",
            prompt="x",
            images=(ImageInput(png_bytes()),),
        ),
    ],
    ids=["variation", "together-edit"],
)
async def test_unsupported_operations(
    fake: FakeHuggingFace, http: httpx.AsyncClient, request_: ProviderRequest
) -> None:
    with pytest.raises(UnsupportedOperation):
        await provider_for(fake, http).run(request_)
    assert fake.requests == []


@pytest.mark.parametrize("model", [f"fal-ai/{FLUX}", "hf-inference", "hf-inference/../../x"])
async def test_unsupported_models(
    fake: FakeHuggingFace, http: httpx.AsyncClient, model: str
) -> None:
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http).run(gen(model))
    assert (info.value.status_code, info.value.code) == (400, "unsupported_model")
    assert fake.requests == []


async def test_needs_a_token(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderNotConfigured):
        await provider_for(fake, http, key="").run(gen(f"hf-inference/{FLUX}"))


async def test_wrong_token_is_401(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http, key="hf_wrong").run(gen(f"hf-inference/{FLUX}"))
    assert info.value.status_code == 401
    assert info.value.message == "Invalid credentials in Authorization header"
    assert not info.value.retryable


async def test_client_error(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    fake.fail_next(FakeResponse(400, {"error": "Input validation error: `inputs` too long"}))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http).run(gen(f"hf-inference/{FLUX}"))
    err = info.value
    assert (err.status_code, err.type) == (400, "upstream_error")
    assert err.message == "Input validation error: `inputs` too long"
    assert not err.retryable


async def test_openai_style_client_error(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    body = {"error": {"message": "model not found", "type": "invalid_request_error"}}
    fake.fail_next(FakeResponse(404, body))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http).run(gen(f"together/{FLUX}"))
    err = info.value
    assert (err.status_code, err.type, err.message) == (
        404,
        "invalid_request_error",
        "model not found",
    )
    assert not err.retryable


async def test_rate_limit_then_success(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    fake.fail_next(FakeResponse(429, {"error": "Rate limit reached"}, headers={"Retry-After": "1"}))
    clock = FakeClock()
    result = await call_with_retries(
        provider_for(fake, http),
        gen(f"hf-inference/{FLUX}"),
        policy=FAST_RETRIES,
        deadline=clock.now() + 10,
        clock=clock,
    )
    assert clock.sleeps == [1.0]  # Retry-After: 1 honoured, not the 10 ms backoff
    assert len(fake.requests) == 2
    assert result.images[0].data == fake.served[0]


async def test_server_error_then_success(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    fake.fail_next(FakeResponse(503, {"error": "Model is currently loading", "estimated_time": 2}))
    attempts: list[int] = []
    result = await call_with_retries(
        provider_for(fake, http),
        gen(f"nebius/{FLUX}"),
        policy=FAST_RETRIES,
        deadline=time.monotonic() + 10,
        on_attempt=attempts.append,
    )
    assert attempts == [1, 2]
    assert result.images[0].data == fake.served[0]


async def test_timeout_is_retryable(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    fake.fail_next(FakeResponse(200, png_bytes(), delay_s=1.0))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http, timeout_s=0.3).run(gen(f"hf-inference/{FLUX}"))
    assert info.value.retryable
    assert info.value.status_code is None
    assert info.value.type == "timeout_error"


async def test_unexpected_success_body(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    fake.fail_next(
        FakeResponse(200, "<html>maintenance</html>", headers={"Content-Type": "text/html"})
    )
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http).run(gen(f"hf-inference/{FLUX}"))
    assert (info.value.status_code, info.value.code) == (502, "invalid_upstream_response")
