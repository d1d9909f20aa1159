"""The Gemini API and Vertex AI adapters against local fakes of both (and of Google's
OAuth token endpoint): exact upstream requests, response parsing, error mapping, retries,
timeouts, fan-out and the service-account token cache."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from google.auth import jwt
from imagejobs.domain.kinds import Kind
from imagejobs.providers import gemini, vertex
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
from PIL import Image

from tests.fakes.clock import FakeClock
from tests.fakes.gemini import FakeGemini, google_error, png_bytes
from tests.fakes.upstream import FakeResponse
from tests.fakes.vertex import GOOGLE_TOKEN_AUDIENCE, JWT_BEARER, FakeVertex

KEY = "gk-test-secret"
PROJECT_PATH = "/v1/projects/test-project/locations/us-central1/publishers/google/models"
FAST_RETRIES = RetryPolicy(max_retries=2, initial_delay_s=0.01, max_delay_s=0.05, jitter_s=0.0)


def gen(model: str, prompt: str = "a red fox", **params: Any) -> ProviderRequest:
    return ProviderRequest(kind=Kind.GENERATION, model=model, prompt=prompt, params=params)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def gemini_fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def vertex_fake() -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        yield fake


def gemini_provider(
    fake: FakeGemini, http: httpx.AsyncClient, timeout_s: float = 5.0
) -> gemini.GeminiProvider:
    config = ProviderConfig(
        name="gemini", base_url=fake.url, keys=(WeightedKey(KEY),), timeout_s=timeout_s
    )
    return gemini.build(config, http)


def vertex_provider(
    fake: FakeVertex, http: httpx.AsyncClient, tmp_path: Path, timeout_s: float = 5.0
) -> vertex.VertexProvider:
    sa_file = fake.write_service_account(tmp_path / "sa.json")
    config = ProviderConfig(
        name="vertex",
        base_url=fake.url,
        credentials_file=str(sa_file),
        project="test-project",
        region="us-central1",
        timeout_s=timeout_s,
    )
    return vertex.build(config, http)


# --- Gemini API: requests and parsing ----------------------------------------------------


async def test_gemini_generate_content_request(
    gemini_fake: FakeGemini, http: httpx.AsyncClient
) -> None:
    provider = gemini_provider(gemini_fake, http)
    request = gen("gemini-3.1-flash-image", size="1536x1024", seed=7, temperature=0.5)
    result = await provider.run(request)

    [sent] = gemini_fake.requests
    assert (sent.method, sent.path, sent.query) == (
        "POST",
        "/v1beta/models/gemini-3.1-flash-image:generateContent",
        {},
    )
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json() == {
        "contents": [{"role": "user", "parts": [{"text": "a red fox"}]}],
        "generationConfig": {
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "3:2", "imageSize": "2K"},
            "seed": 7,
            "temperature": 0.5,
        },
    }
    assert [i.data for i in result.images] == gemini_fake.served
    assert result.images[0].content_type == "image/png"
    assert result.usage == {"input_tokens": 12, "output_tokens": 1290, "total_tokens": 1302}


async def test_gemini_1k_size_sends_no_image_size(
    gemini_fake: FakeGemini, http: httpx.AsyncClient
) -> None:
    await gemini_provider(gemini_fake, http).run(gen("gemini-3.1-flash-image", size="768x1024"))
    config = gemini_fake.requests[0].json()["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "3:4"}  # 1K is the default


async def test_gemini_imagen_predict_request(
    gemini_fake: FakeGemini, http: httpx.AsyncClient
) -> None:
    provider = gemini_provider(gemini_fake, http)
    request = gen(
        "imagen-4.0-generate-001",
        n=2,
        aspect_ratio="16:9",
        negative_prompt="blurry",
        seed=3,
        output_format="jpeg",
        output_compression=80,
        personGeneration="allow_adult",
    )
    result = await provider.run(request)

    [sent] = gemini_fake.requests
    assert (sent.method, sent.path) == ("POST", "/v1beta/models/imagen-4.0-generate-001:predict")
    assert sent.headers["x-goog-api-key"] == KEY
    # The Gemini API rejects negativePrompt and seed for Imagen: they are not sent.
    assert sent.json() == {
        "instances": [{"prompt": "a red fox"}],
        "parameters": {
            "sampleCount": 2,
            "aspectRatio": "16:9",
            "outputOptions": {"mimeType": "image/jpeg", "compressionQuality": 80},
            "personGeneration": "allow_adult",
        },
    }
    assert [i.data for i in result.images] == gemini_fake.served
    assert len(result.images) == 2


async def test_gemini_edit_sends_images_inline_and_ignores_mask(
    gemini_fake: FakeGemini, http: httpx.AsyncClient
) -> None:
    image, mask = png_bytes(100), png_bytes(101)
    request = ProviderRequest(
        kind=Kind.EDIT,
        model="gemini-3.1-flash-image",
        prompt="add a hat",
        images=(ImageInput(image), ImageInput(png_bytes(102), "image/jpeg")),
        mask=ImageInput(mask),
    )
    result = await gemini_provider(gemini_fake, http).run(request)
    [sent] = gemini_fake.requests
    assert sent.path == "/v1beta/models/gemini-3.1-flash-image:generateContent"
    assert sent.json()["contents"][0]["parts"] == [
        {"text": "add a hat"},
        {"inlineData": {"mimeType": "image/png", "data": b64(image)}},
        {"inlineData": {"mimeType": "image/jpeg", "data": b64(png_bytes(102))}},
    ]
    assert result.images[0].data == gemini_fake.served[0]


async def test_gemini_input_images_param(gemini_fake: FakeGemini, http: httpx.AsyncClient) -> None:
    one, two = png_bytes(1), png_bytes(2)
    request = gen(
        "gemini-3.1-flash-image", input_images=[f"data:image/png;base64,{b64(one)}", b64(two)]
    )
    await gemini_provider(gemini_fake, http).run(request)
    parts = gemini_fake.requests[0].json()["contents"][0]["parts"]
    assert parts[1:] == [
        {"inlineData": {"mimeType": "image/png", "data": b64(one)}},
        {"inlineData": {"mimeType": "image/png", "data": b64(two)}},
    ]


async def test_gemini_fan_out(gemini_fake: FakeGemini, http: httpx.AsyncClient) -> None:
    result = await gemini_provider(gemini_fake, http).run(
        gen("gemini-3.1-flash-image", n=3, seed=5)
    )
    assert len(gemini_fake.requests) == 3
    assert sorted(r.json()["generationConfig"]["seed"] for r in gemini_fake.requests) == [5, 6, 7]
    assert sorted(i.data for i in result.images) == sorted(gemini_fake.served)
    assert len(result.images) == 3
    assert result.usage == {"input_tokens": 36, "output_tokens": 3870, "total_tokens": 3906}


async def test_imagen_fans_out_by_four(gemini_fake: FakeGemini, http: httpx.AsyncClient) -> None:
    result = await gemini_provider(gemini_fake, http).run(gen("imagen-4.0-generate-001", n=6))
    counts = sorted(r.json()["parameters"]["sampleCount"] for r in gemini_fake.requests)
    assert counts == [2, 4]
    assert len(result.images) == 6


async def test_gemini_unsupported_operations(
    gemini_fake: FakeGemini, http: httpx.AsyncClient
) -> None:
    provider = gemini_provider(gemini_fake, http)
    image = (ImageInput(png_bytes()),)
    with pytest.raises(UnsupportedOperation):
        await provider.run(ProviderRequest(kind=Kind.VARIATION, model="imagen-4.0", images=image))
    with pytest.raises(UnsupportedOperation):  # the Gemini API has no Imagen edits
        await provider.run(
            ProviderRequest(kind=Kind.EDIT, model="imagen-3.0-capability-001", images=image)
        )
    assert gemini_fake.requests == []


async def test_gemini_needs_a_key(gemini_fake: FakeGemini, http: httpx.AsyncClient) -> None:
    provider = gemini.build(ProviderConfig(name="gemini", base_url=gemini_fake.url), http)
    with pytest.raises(ProviderNotConfigured):
        await provider.run(gen("gemini-3.1-flash-image"))


async def test_gemini_blocked_prompt_is_a_content_filter_error(
    gemini_fake: FakeGemini, http: httpx.AsyncClient
) -> None:
    gemini_fake.fail_next(FakeResponse(200, {"promptFeedback": {"blockReason": "SAFETY"}}))
    with pytest.raises(ProviderError) as info:
        await gemini_provider(gemini_fake, http).run(gen("gemini-3.1-flash-image"))
    assert (info.value.status_code, info.value.code) == (400, "content_filter")
    assert not info.value.retryable


async def test_gemini_rejects_path_escaping_model(
    gemini_fake: FakeGemini, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderError) as info:
        await gemini_provider(gemini_fake, http).run(gen("../../v1/files"))
    assert info.value.status_code == 400
    assert gemini_fake.requests == []


# --- both hosts: errors, retries, timeouts ---------------------------------------------------


@pytest.fixture(params=["gemini", "vertex"])
async def google(
    request: pytest.FixtureRequest, http: httpx.AsyncClient, tmp_path: Path
) -> AsyncIterator[tuple[Any, Any]]:
    """(fake, provider) for each host, with Vertex's token already cached (so scripted
    failures hit the model call, not the token endpoint)."""
    if request.param == "gemini":
        with FakeGemini(api_key=KEY) as fake:
            yield fake, gemini_provider(fake, http, timeout_s=0.3)
    else:
        with FakeVertex() as vfake:
            provider = vertex_provider(vfake, http, tmp_path, timeout_s=0.3)
            await provider.auth_headers()
            yield vfake, provider


async def test_client_error_carries_google_status(google: tuple[Any, Any]) -> None:
    fake, provider = google
    secret = KEY if isinstance(fake, FakeGemini) else fake.issued[0]  # API key / access token
    message = f"Invalid value at 'generation_config.image_config' (credential {secret})"
    fake.fail_next(google_error(400, message, "INVALID_ARGUMENT"))
    with pytest.raises(ProviderError) as info:
        await provider.run(gen("gemini-3.1-flash-image"))
    err = info.value
    assert (err.status_code, err.type, err.code) == (
        400,
        "invalid_request_error",
        "INVALID_ARGUMENT",
    )
    assert err.message.startswith("Invalid value at 'generation_config.image_config'")
    assert secret not in err.message
    assert not err.retryable


async def test_rate_limit_then_success_honours_retry_after(google: tuple[Any, Any]) -> None:
    fake, provider = google
    fake.fail_next(google_error(429, "Quota exceeded", "RESOURCE_EXHAUSTED", {"Retry-After": "1"}))
    clock = FakeClock()
    result = await call_with_retries(
        provider,
        gen("imagen-4.0-generate-001"),
        policy=FAST_RETRIES,
        deadline=clock.now() + 10,
        clock=clock,
    )
    assert clock.sleeps == [1.0]  # Retry-After: 1 honoured, not the 10 ms backoff
    assert len(result.images) == 1


async def test_rate_limit_retry_info_delay_is_honoured(google: tuple[Any, Any]) -> None:
    """Google's quota errors say when to retry in the body (`RetryInfo.retryDelay`), not in
    a Retry-After header: the retry waits that long."""
    fake, provider = google
    fake.fail_next(google_error(429, "Quota exceeded", "RESOURCE_EXHAUSTED", retry_delay="1s"))
    clock = FakeClock()
    result = await call_with_retries(
        provider,
        gen("gemini-3.1-flash-image"),
        policy=FAST_RETRIES,
        deadline=clock.now() + 10,
        clock=clock,
    )
    assert clock.sleeps == [1.0]  # retryDelay 1s honoured, not the 10 ms backoff
    assert result.images[0].data == fake.served[-1]


async def test_rate_limit_error_keeps_retry_info_and_status(google: tuple[Any, Any]) -> None:
    fake, provider = google
    fake.fail_next(google_error(429, "Quota exceeded", "RESOURCE_EXHAUSTED", retry_delay="2.5s"))
    with pytest.raises(ProviderError) as info:
        await provider.run(gen("gemini-3.1-flash-image"))
    err = info.value
    assert (err.status_code, err.type, err.code) == (429, "rate_limit_error", "RESOURCE_EXHAUSTED")
    assert (err.retryable, err.retry_after) == (True, 2.5)


async def test_server_error_then_success(google: tuple[Any, Any]) -> None:
    fake, provider = google
    fake.fail_next(google_error(503, "The model is overloaded.", "UNAVAILABLE"))
    attempts: list[int] = []
    result = await call_with_retries(
        provider,
        gen("gemini-3.1-flash-image"),
        policy=FAST_RETRIES,
        deadline=time.monotonic() + 10,
        on_attempt=attempts.append,
    )
    assert attempts == [1, 2]
    assert result.images[0].data == fake.served[-1]


async def test_timeout_is_retryable(google: tuple[Any, Any]) -> None:
    fake, provider = google
    fake.fail_next(FakeResponse(200, {}, delay_s=1.0))
    with pytest.raises(ProviderError) as info:
        await provider.run(gen("gemini-3.1-flash-image"))
    assert info.value.retryable
    assert info.value.status_code is None
    assert info.value.type == "timeout_error"


# --- Vertex AI ------------------------------------------------------------------------------


async def test_vertex_imagen_request_and_token(
    vertex_fake: FakeVertex, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    provider = vertex_provider(vertex_fake, http, tmp_path)
    request = gen("imagen-4.0-generate-001", negative_prompt="blurry", seed=9, size="1024x1024")
    result = await provider.run(request)

    token_call, predict_call = vertex_fake.requests
    assert (token_call.method, token_call.path) == ("POST", "/token")
    form = parse_qs(token_call.body.decode())
    assert form["grant_type"] == [JWT_BEARER]
    claims = jwt.decode(
        form["assertion"][0], certs=vertex_fake.public_key_pem, audience=GOOGLE_TOKEN_AUDIENCE
    )
    assert claims["iss"] == vertex_fake.client_email
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"

    assert (predict_call.method, predict_call.path, predict_call.query) == (
        "POST",
        f"{PROJECT_PATH}/imagen-4.0-generate-001:predict",
        {},
    )
    assert predict_call.headers["authorization"] == f"Bearer {vertex_fake.issued[0]}"
    assert predict_call.json() == {
        "instances": [{"prompt": "a red fox"}],
        "parameters": {
            "sampleCount": 1,
            "aspectRatio": "1:1",
            "negativePrompt": "blurry",
            "seed": 9,
            "addWatermark": False,
        },
    }
    assert result.images[0].data == vertex_fake.served[0]


async def test_vertex_reuses_its_token(
    vertex_fake: FakeVertex, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    provider = vertex_provider(vertex_fake, http, tmp_path)
    await provider.run(gen("gemini-3.1-flash-image"))
    await provider.run(gen("gemini-3.1-flash-image"))
    assert len(vertex_fake.requests_to("/token")) == 1
    calls = vertex_fake.requests_to(rf"{PROJECT_PATH}/gemini-3\.1-flash-image:generateContent")
    assert [c.headers["authorization"] for c in calls] == [f"Bearer {vertex_fake.issued[0]}"] * 2


async def test_vertex_refreshes_an_expiring_token(http: httpx.AsyncClient, tmp_path: Path) -> None:
    # google-auth refreshes tokens within 3m45s of expiry: a 60 s token is already stale.
    with FakeVertex(token_lifetime_s=60) as fake:
        provider = vertex_provider(fake, http, tmp_path)
        await provider.run(gen("gemini-3.1-flash-image"))
        await provider.run(gen("gemini-3.1-flash-image"))
        assert len(fake.requests_to("/token")) == 2
        calls = fake.requests_to(rf"{PROJECT_PATH}/.*")
        assert [c.headers["authorization"] for c in calls] == [f"Bearer {t}" for t in fake.issued]


async def test_vertex_concurrent_calls_fetch_one_token(
    vertex_fake: FakeVertex, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    provider = vertex_provider(vertex_fake, http, tmp_path)
    result = await provider.run(gen("gemini-3.1-flash-image", n=3))
    assert len(vertex_fake.requests_to("/token")) == 1
    assert len(vertex_fake.requests_to(rf"{PROJECT_PATH}/.*")) == 3
    assert len(result.images) == 3


async def test_vertex_imagen_edit_request(
    vertex_fake: FakeVertex, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    image = png_bytes(7, size=(4, 4))
    mask_img = Image.new("RGBA", (4, 4), (0, 0, 0, 255))
    mask_img.putpixel((0, 0), (0, 0, 0, 0))  # OpenAI style: edit where transparent
    buf = io.BytesIO()
    mask_img.save(buf, format="PNG")
    request = ProviderRequest(
        kind=Kind.EDIT,
        model="imagen-3.0-capability-001",
        prompt="a vase of flowers",
        params={"n": 2, "num_inference_steps": 35},
        images=(ImageInput(image),),
        mask=ImageInput(buf.getvalue()),
    )
    result = await vertex_provider(vertex_fake, http, tmp_path).run(request)

    [sent] = vertex_fake.requests_to(rf"{PROJECT_PATH}/imagen-3\.0-capability-001:predict")
    body = sent.json()
    raw, mask = body["instances"][0]["referenceImages"]
    assert body["instances"][0]["prompt"] == "a vase of flowers"
    assert raw == {
        "referenceType": "REFERENCE_TYPE_RAW",
        "referenceId": 1,
        "referenceImage": {"bytesBase64Encoded": b64(image)},
    }
    assert mask["referenceType"] == "REFERENCE_TYPE_MASK"
    assert mask["referenceId"] == 2
    assert mask["maskImageConfig"] == {"maskMode": "MASK_MODE_USER_PROVIDED"}
    sent_mask = Image.open(
        io.BytesIO(base64.b64decode(mask["referenceImage"]["bytesBase64Encoded"]))
    )
    assert sent_mask.convert("L").getpixel((0, 0)) == 255  # white = edit here
    assert sent_mask.convert("L").getpixel((1, 1)) == 0
    assert body["parameters"] == {
        "sampleCount": 2,
        "editMode": "EDIT_MODE_INPAINT_INSERTION",
        "editConfig": {"baseSteps": 35},
    }
    assert len(result.images) == 2


async def test_vertex_imagen_edit_needs_a_mask(
    vertex_fake: FakeVertex, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    request = ProviderRequest(
        kind=Kind.EDIT,
        model="imagen-3.0-capability-001",
        prompt="x",
        images=(ImageInput(png_bytes()),),
    )
    with pytest.raises(ProviderError) as info:
        await vertex_provider(vertex_fake, http, tmp_path).run(request)
    assert (info.value.status_code, info.value.code) == (400, "mask_required")
    assert vertex_fake.requests == []


async def test_vertex_gemini_edit_and_no_variations(
    vertex_fake: FakeVertex, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    provider = vertex_provider(vertex_fake, http, tmp_path)
    image = ImageInput(png_bytes(3))
    edit = ProviderRequest(
        kind=Kind.EDIT, model="gemini-3.1-flash-image", prompt="snow", images=(image,)
    )
    await provider.run(edit)
    [sent] = vertex_fake.requests_to(rf"{PROJECT_PATH}/gemini-3\.1-flash-image:generateContent")
    assert sent.json()["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": b64(image.data)}
    }
    with pytest.raises(UnsupportedOperation):
        await provider.run(
            ProviderRequest(kind=Kind.VARIATION, model="imagen-4.0", images=(image,))
        )


async def test_vertex_token_endpoint_rejection(
    vertex_fake: FakeVertex, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    provider = vertex_provider(vertex_fake, http, tmp_path)
    vertex_fake.write_service_account(tmp_path / "other.json")  # the fake now trusts another key
    with pytest.raises(ProviderError) as info:
        await provider.run(gen("gemini-3.1-flash-image"))
    err = info.value
    assert (err.status_code, err.type, err.code) == (
        401,
        "authentication_error",
        "token_refresh_failed",
    )
    assert not err.retryable
    assert vertex_fake.requests_to(rf"{PROJECT_PATH}/.*") == []


async def test_vertex_needs_credentials(http: httpx.AsyncClient) -> None:
    config = ProviderConfig(name="vertex", project="p", base_url="http://127.0.0.1:9")
    with pytest.raises(ProviderNotConfigured):
        await vertex.build(config, http).run(gen("gemini-3.1-flash-image"))


async def test_vertex_endpoints(http: httpx.AsyncClient) -> None:
    regional = vertex.build(ProviderConfig(name="vertex", project="p", region="europe-west4"), http)
    assert regional.endpoint("imagen-4.0-generate-001", "predict") == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4"
        "/publishers/google/models/imagen-4.0-generate-001:predict"
    )
    global_ = vertex.build(ProviderConfig(name="vertex", project="p", region="global"), http)
    assert global_.endpoint("gemini-3-pro-image", "generateContent") == (
        "https://aiplatform.googleapis.com/v1/projects/p/locations/global"
        "/publishers/google/models/gemini-3-pro-image:generateContent"
    )
