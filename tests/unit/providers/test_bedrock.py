"""The Bedrock adapter against its fake: SigV4 signatures recomputed independently by the
fake (botocore, frozen credentials, the X-Amz-Date sent), the model id's encoding in the
path, the exact Titan / Nova Canvas bodies, mask conversion, fan-out, and errors."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from imagejobs.domain.kinds import Kind
from imagejobs.providers import bedrock
from imagejobs.providers.base import (
    ImageInput,
    ProviderConfig,
    ProviderError,
    ProviderNotConfigured,
    ProviderRequest,
)
from imagejobs.worker.retry import RetryPolicy, call_with_retries
from PIL import Image

from tests.fakes.bedrock import FakeBedrock, bedrock_error
from tests.fakes.clock import FakeClock
from tests.fakes.upstream import FakeRequest, FakeResponse

TITAN = "amazon.titan-image-generator-v2:0"
NOVA = "amazon.nova-canvas-v1:0"
NOVA_GEN = ProviderRequest(kind=Kind.GENERATION, model=NOVA, prompt="p")
FAST_RETRIES = RetryPolicy(max_retries=3, initial_delay_s=0.01, max_delay_s=0.05, jitter_s=0.0)


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as upstream:
        yield upstream


def make(fake: FakeBedrock, http: httpx.AsyncClient, **overrides: Any) -> bedrock.BedrockProvider:
    return bedrock.build(fake.config(**overrides), http)


def b64png(hole: bool = False) -> tuple[bytes, str]:
    img = Image.new("RGBA", (4, 4), (0, 200, 0, 255))
    if hole:
        for x in range(2):
            for y in range(4):
                img.putpixel((x, y), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), base64.b64encode(buf.getvalue()).decode()


def assert_signed(fake: FakeBedrock, req: FakeRequest) -> None:
    """The request carries a valid SigV4 signature for the fake's frozen credentials."""
    assert fake.signature_failures == []
    assert req.headers["authorization"] == fake.expected_authorization(req)
    assert re.fullmatch(r"\d{8}T\d{6}Z", req.headers["x-amz-date"])
    assert req.headers["x-amz-security-token"] == fake.session_token
    signed = req.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert signed == "accept;content-type;host;x-amz-date;x-amz-security-token"
    scope = f"Credential={fake.access_key}/{req.headers['x-amz-date'][:8]}/{fake.region}/bedrock/"
    assert scope in req.headers["authorization"]


async def test_generation_is_signed_and_encodes_the_model_id(
    fake: FakeBedrock, http: httpx.AsyncClient
) -> None:
    result = await make(fake, http).run(
        ProviderRequest(
            kind=Kind.GENERATION,
            model=TITAN,
            prompt="a snowy cabin",
            params={
                "n": 2,
                "size": "1280x768",
                "quality": "high",
                "seed": 42,
                "negative_prompt": "people",
                "cfg_scale": 8.5,
                "response_format": "b64_json",
            },
        )
    )
    (req,) = fake.requests
    assert (req.method, req.path, req.query) == (
        "POST",
        "/model/amazon.titan-image-generator-v2%3A0/invoke",
        {},
    )
    assert_signed(fake, req)
    # botocore encodes the path once more for the canonical request (non-S3 services).
    assert fake.canonical_requests[-1].splitlines()[1] == (
        "/model/amazon.titan-image-generator-v2%253A0/invoke"
    )
    assert req.headers["content-type"] == "application/json"
    assert req.headers["accept"] == "application/json"
    assert req.json() == {
        "taskType": "TEXT_IMAGE",
        "textToImageParams": {"text": "a snowy cabin", "negativeText": "people"},
        "imageGenerationConfig": {
            "numberOfImages": 2,
            "width": 1280,
            "height": 768,
            "quality": "premium",
            "cfgScale": 8.5,
            "seed": 42,
        },
    }
    assert [img.data for img in result.images] == fake.served
    assert all(img.content_type == "image/png" for img in result.images)


async def test_without_session_token(http: httpx.AsyncClient) -> None:
    with FakeBedrock(session_token=None) as plain:
        await bedrock.build(plain.config(), http).run(NOVA_GEN)
        (req,) = plain.requests
        assert "x-amz-security-token" not in req.headers
        assert req.headers["authorization"] == plain.expected_authorization(req)
        assert plain.signature_failures == []
        assert req.path == "/model/amazon.nova-canvas-v1%3A0/invoke"
        assert req.json()["imageGenerationConfig"] == {
            "numberOfImages": 1,
            "width": 1024,
            "height": 1024,
        }


async def test_n_up_to_five_is_one_call(fake: FakeBedrock, http: httpx.AsyncClient) -> None:
    result = await make(fake, http).run(
        ProviderRequest(kind=Kind.GENERATION, model=NOVA, prompt="p", params={"n": 3})
    )
    (req,) = fake.requests
    assert req.json()["imageGenerationConfig"]["numberOfImages"] == 3
    assert len(result.images) == 3
    assert len(set(img.data for img in result.images)) == 3


async def test_n_over_five_fans_out(fake: FakeBedrock, http: httpx.AsyncClient) -> None:
    result = await make(fake, http).run(
        ProviderRequest(kind=Kind.GENERATION, model=NOVA, prompt="p", params={"n": 7, "seed": 3})
    )
    configs = [r.json()["imageGenerationConfig"] for r in fake.requests]
    assert sorted((c["numberOfImages"], c["seed"]) for c in configs) == [(2, 4), (5, 3)]
    assert len(result.images) == 7
    assert sorted(img.data for img in result.images) == sorted(fake.served)
    for req in fake.requests:
        assert_signed(fake, req)


async def test_inpainting_converts_the_mask_to_black_means_edit(
    fake: FakeBedrock, http: httpx.AsyncClient
) -> None:
    image, image_b64 = b64png()
    mask, _ = b64png(hole=True)
    await make(fake, http).run(
        ProviderRequest(
            kind=Kind.EDIT,
            model=TITAN,
            prompt="a red door",
            params={"type": "inpainting", "negative_prompt": "blur", "seed": 1},
            images=(ImageInput(image),),
            mask=ImageInput(mask),
        )
    )
    (req,) = fake.requests
    assert_signed(fake, req)
    body = req.json()
    mask_b64 = body["inPaintingParams"].pop("maskImage")
    assert body == {
        "taskType": "INPAINTING",
        "inPaintingParams": {"image": image_b64, "text": "a red door", "negativeText": "blur"},
        "imageGenerationConfig": {"numberOfImages": 1, "seed": 1},
    }
    with Image.open(io.BytesIO(base64.b64decode(mask_b64))) as img:
        assert img.mode == "RGB"
        # transparent (edit) -> black (0,0,0); opaque (keep) -> white (255,255,255)
        assert list(img.getpixel((x, 0)) for x in range(4)) == [
            (0, 0, 0),
            (0, 0, 0),
            (255, 255, 255),
            (255, 255, 255),
        ]


async def test_edit_without_type_is_inpainting_with_a_mask_prompt(
    fake: FakeBedrock, http: httpx.AsyncClient
) -> None:
    image, image_b64 = b64png()
    await make(fake, http).run(
        ProviderRequest(
            kind=Kind.EDIT,
            model=NOVA,
            prompt="a cat",
            params={"mask_prompt": "the dog", "size": "512x512"},
            images=(ImageInput(image),),
        )
    )
    assert fake.requests[0].json() == {
        "taskType": "INPAINTING",
        "inPaintingParams": {"image": image_b64, "text": "a cat", "maskPrompt": "the dog"},
        "imageGenerationConfig": {"numberOfImages": 1, "width": 512, "height": 512},
    }


async def test_edit_without_mask_or_mask_prompt_is_a_400(
    fake: FakeBedrock, http: httpx.AsyncClient
) -> None:
    image, _ = b64png()
    with pytest.raises(ProviderError) as info:
        await make(fake, http).run(
            ProviderRequest(kind=Kind.EDIT, model=NOVA, prompt="p", images=(ImageInput(image),))
        )
    assert (info.value.status_code, info.value.param, info.value.retryable) == (400, "mask", False)
    assert fake.requests == []


async def test_outpainting_body(fake: FakeBedrock, http: httpx.AsyncClient) -> None:
    image, image_b64 = b64png()
    await make(fake, http).run(
        ProviderRequest(
            kind=Kind.EDIT,
            model=NOVA,
            prompt="a beach",
            params={"type": "outpainting", "mask_prompt": "the person", "quality": "low"},
            images=(ImageInput(image),),
        )
    )
    assert fake.requests[0].json() == {
        "taskType": "OUTPAINTING",
        "outPaintingParams": {
            "image": image_b64,
            "text": "a beach",
            "maskPrompt": "the person",
            "outPaintingMode": "DEFAULT",
        },
        "imageGenerationConfig": {"numberOfImages": 1, "quality": "standard"},
    }


async def test_background_removal_body(fake: FakeBedrock, http: httpx.AsyncClient) -> None:
    image, image_b64 = b64png()
    result = await make(fake, http).run(
        ProviderRequest(
            kind=Kind.EDIT,
            model=NOVA,
            params={"type": "background_removal", "n": 3},
            images=(ImageInput(image),),
        )
    )
    (req,) = fake.requests
    assert req.json() == {
        "taskType": "BACKGROUND_REMOVAL",
        "backgroundRemovalParams": {"image": image_b64},
    }
    assert len(result.images) == 1


async def test_variation_body(fake: FakeBedrock, http: httpx.AsyncClient) -> None:
    first, first_b64 = b64png()
    second, second_b64 = b64png(hole=True)
    result = await make(fake, http).run(
        ProviderRequest(
            kind=Kind.VARIATION,
            model=TITAN,
            params={"n": 2, "size": "768x768", "similarity_strength": 0.7},
            images=(ImageInput(first), ImageInput(second)),
        )
    )
    (req,) = fake.requests
    assert_signed(fake, req)
    assert req.json() == {
        "taskType": "IMAGE_VARIATION",
        "imageVariationParams": {"images": [first_b64, second_b64], "similarityStrength": 0.7},
        "imageGenerationConfig": {"numberOfImages": 2, "width": 768, "height": 768},
    }
    assert len(result.images) == 2


async def test_wrong_secret_fails_the_signature_check(http: httpx.AsyncClient) -> None:
    with FakeBedrock() as strict:
        provider = bedrock.build(strict.config(aws_secret_access_key="not-the-secret"), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(NOVA_GEN)
        assert (info.value.status_code, info.value.retryable) == (403, False)
        assert (info.value.type, info.value.code) == (
            "authentication_error",
            "InvalidSignatureException",
        )
        assert "signature" in info.value.message
        assert "not-the-secret" not in str(info.value)
        assert strict.signature_failures == ["signature mismatch"]


async def test_validation_error_is_not_retryable(
    fake: FakeBedrock, http: httpx.AsyncClient
) -> None:
    fake.upstream.fail_next(
        bedrock_error(400, "ValidationException", "Malformed input request: width must be 64n")
    )
    with pytest.raises(ProviderError) as info:
        await call_with_retries(
            make(fake, http),
            NOVA_GEN,
            policy=FAST_RETRIES,
            deadline=time.monotonic() + 5,
        )
    err = info.value
    assert (err.status_code, err.retryable) == (400, False)
    assert (err.type, err.code) == ("invalid_request_error", "ValidationException")
    assert err.message == "Malformed input request: width must be 64n"
    assert len(fake.requests) == 1


async def test_error_field_in_a_200_is_content_filtered(
    fake: FakeBedrock, http: httpx.AsyncClient
) -> None:
    fake.upstream.fail_next(FakeResponse(200, {"images": [], "error": "blocked by filters"}))
    with pytest.raises(ProviderError) as info:
        await make(fake, http).run(NOVA_GEN)
    assert (info.value.status_code, info.value.code) == (400, "content_filtered")
    assert info.value.message == "blocked by filters"


async def test_throttling_honours_retry_after_then_succeeds(
    fake: FakeBedrock, http: httpx.AsyncClient
) -> None:
    fake.upstream.fail_next(
        bedrock_error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
            headers={"Retry-After": "1"},
        )
    )
    clock = FakeClock()
    result = await call_with_retries(
        make(fake, http),
        NOVA_GEN,
        policy=FAST_RETRIES,
        deadline=clock.now() + 5,
        clock=clock,
    )
    assert clock.sleeps == [1.0]  # Retry-After: 1 honoured, not the 10 ms backoff
    assert [img.data for img in result.images] == fake.served
    assert_signed(fake, fake.requests[-1])


async def test_throttling_past_the_retries_is_a_rate_limit_error(
    fake: FakeBedrock, http: httpx.AsyncClient
) -> None:
    throttled = bedrock_error(429, "ThrottlingException", "Too many requests")
    fake.upstream.fail_next(throttled, throttled, throttled)
    policy = RetryPolicy(max_retries=2, initial_delay_s=0.01, max_delay_s=0.05, jitter_s=0.0)
    with pytest.raises(ProviderError) as info:
        await call_with_retries(
            make(fake, http), NOVA_GEN, policy=policy, deadline=time.monotonic() + 5
        )
    err = info.value
    assert (err.status_code, err.type, err.code) == (429, "rate_limit_error", "ThrottlingException")
    assert err.message == "Too many requests"
    assert len(fake.requests) == 3


async def test_5xx_then_success(fake: FakeBedrock, http: httpx.AsyncClient) -> None:
    fake.upstream.fail_next(FakeResponse(503, {"message": "ServiceUnavailable"}))
    result = await call_with_retries(
        make(fake, http),
        NOVA_GEN,
        policy=FAST_RETRIES,
        deadline=time.monotonic() + 5,
    )
    assert len(result.images) == 1
    assert len(fake.requests) == 2


async def test_timeout_is_retryable(fake: FakeBedrock, http: httpx.AsyncClient) -> None:
    fake.upstream.fail_next(FakeResponse(200, {"images": []}, delay_s=1))
    with pytest.raises(ProviderError) as info:
        await make(fake, http, timeout_s=0.3).run(NOVA_GEN)
    assert (info.value.code, info.value.retryable) == ("upstream_timeout", True)


async def test_refusals_send_nothing(fake: FakeBedrock, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderNotConfigured):
        await make(fake, http, aws_secret_access_key="").run(NOVA_GEN)
    with pytest.raises(ProviderError) as info:
        await make(fake, http).run(
            ProviderRequest(kind=Kind.GENERATION, model="stability.sd3-large-v1:0", prompt="p")
        )
    assert (info.value.status_code, info.value.param) == (400, "model")
    with pytest.raises(ProviderError) as info:
        await make(fake, http).run(
            ProviderRequest(
                kind=Kind.EDIT,
                model=NOVA,
                prompt="p",
                params={"type": "recolor"},
                images=(ImageInput(b64png()[0]),),
            )
        )
    assert (info.value.status_code, info.value.param) == (400, "type")
    assert fake.requests == []


async def test_default_endpoint_is_regional(http: httpx.AsyncClient) -> None:
    provider = bedrock.build(ProviderConfig(name="bedrock", region="ap-southeast-2"), http)
    assert provider.base_url == "https://bedrock-runtime.ap-southeast-2.amazonaws.com"
