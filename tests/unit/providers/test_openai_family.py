"""The OpenAI-shaped adapters — openai, openai-compatible, azure, xai, nebius — against
fake upstreams on 127.0.0.1: the exact request each sends, response parsing, URL
downloads, upstream errors, retries through `call_with_retries`, timeouts, unsupported
operations, and secrets kept out of errors."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from imagejobs.domain.kinds import Kind
from imagejobs.providers import azure, nebius, openai, openai_compatible, xai
from imagejobs.providers.base import (
    ImageInput,
    Provider,
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
from tests.fakes.openai import (
    FakeAzureOpenAI,
    FakeNebius,
    FakeOpenAI,
    FakeXAI,
    image_bytes,
    openai_error,
)
from tests.fakes.upstream import FakeResponse

KEY = "sk-test-4f9a1c2e7b8d6a5f"
FAST = RetryPolicy(max_retries=2, initial_delay_s=0.01, max_delay_s=0.05, jitter_s=0.0)
PNG_A = image_bytes(200)
JPEG_B = image_bytes(201, "jpeg")
MASK = image_bytes(202)
IMAGE_A = ImageInput(PNG_A, "image/png", "a.png")
IMAGE_B = ImageInput(JPEG_B, "image/jpeg", "b.jpg")
MASK_IN = ImageInput(MASK, "image/png", "mask.png")

Build = Callable[[ProviderConfig, httpx.AsyncClient], Provider]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config(name: str, url: str, **overrides: Any) -> ProviderConfig:
    settings: dict[str, Any] = {"base_url": url, "keys": (WeightedKey(KEY),), "timeout_s": 5.0}
    settings.update(overrides)
    return ProviderConfig(name=name, **settings)


def is_image(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    return True


# --- every provider, every operation it supports --------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    fake: type[FakeOpenAI]
    build: Build
    model: str
    paths: dict[Kind, str]
    overrides: dict[str, Any] = field(default_factory=dict)

    def request(self, kind: Kind, **params: Any) -> ProviderRequest:
        images = () if kind is Kind.GENERATION else (IMAGE_A,)
        prompt = None if kind is Kind.VARIATION else "a lighthouse at dusk"
        params.setdefault("response_format", "b64_json")
        return ProviderRequest(kind, self.model, prompt, params, images)


OPENAI_PATHS = {kind: f"/v1/images/{kind.value}" for kind in Kind}
AZURE_DEPLOYMENT = "/openai/deployments/gpt-image-2.6-sunburst/images"
CASES = [
    Case("openai", FakeOpenAI, openai.build, "gpt-image-2.6-sunburst", OPENAI_PATHS),
    Case("openai-compatible", FakeOpenAI, openai_compatible.build, "flux-dev", OPENAI_PATHS),
    Case(
        "azure",
        FakeAzureOpenAI,
        azure.build,
        "gpt-image-2.6-sunburst",
        {k: f"{AZURE_DEPLOYMENT}/{k.value}" for k in (Kind.GENERATION, Kind.EDIT)},
    ),
    Case(
        "xai",
        FakeXAI,
        xai.build,
        "grok-imagine-image",
        {Kind.GENERATION: "/v1/images/generations"},
    ),
    Case(
        "nebius",
        FakeNebius,
        nebius.build,
        "black-forest-labs/flux-schnell",
        {Kind.GENERATION: "/v1/images/generations"},
    ),
]
SUPPORTED = [
    pytest.param(case, kind, id=f"{case.name}-{kind.value}")
    for case in CASES
    for kind in case.paths
]
UNSUPPORTED = [
    pytest.param(case, kind, id=f"{case.name}-{kind.value}")
    for case in CASES
    for kind in Kind
    if kind not in case.paths
]
PROVIDERS = [pytest.param(case, id=case.name) for case in CASES]


@pytest.mark.parametrize(("case", "kind"), SUPPORTED)
async def test_each_operation_succeeds(case: Case, kind: Kind, http: httpx.AsyncClient) -> None:
    with case.fake(api_key=KEY) as fake:
        provider = case.build(config(case.name, fake.url, **case.overrides), http)
        result = await provider.run(case.request(kind))
        [sent] = fake.requests
    assert (sent.method, sent.path) == ("POST", case.paths[kind])
    assert [img.data for img in result.images] == fake.served
    assert all(is_image(img.data) for img in result.images)


@pytest.mark.parametrize(("case", "kind"), SUPPORTED)
async def test_upstream_4xx_is_a_final_provider_error(
    case: Case, kind: Kind, http: httpx.AsyncClient
) -> None:
    with case.fake(api_key=KEY) as fake:
        fake.fail_next(
            openai_error(400, "Invalid value: 'size'.", code="invalid_value", param="size")
        )
        provider = case.build(config(case.name, fake.url, **case.overrides), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(case.request(kind))
    err = info.value
    assert (err.status_code, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "invalid_value",
        "size",
    )
    assert err.message == "Invalid value: 'size'."
    assert err.retryable is False
    assert err.retry_after is None


@pytest.mark.parametrize(("case", "kind"), SUPPORTED)
async def test_429_with_retry_after_then_success(
    case: Case, kind: Kind, http: httpx.AsyncClient
) -> None:
    with case.fake(api_key=KEY) as fake:
        fake.fail_next(
            openai_error(
                429,
                "Rate limit reached for requests",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        )
        provider = case.build(config(case.name, fake.url, **case.overrides), http)
        attempts: list[int] = []
        clock = FakeClock()
        result = await call_with_retries(
            provider,
            case.request(kind),
            policy=FAST,
            deadline=clock.now() + 10,
            on_attempt=attempts.append,
            clock=clock,
        )
        sent = fake.requests_to(case.paths[kind])
    assert attempts == [1, 2]
    assert len(sent) == 2
    assert clock.sleeps == [1.0]  # Retry-After: 1 honoured, not the 10 ms backoff
    assert [img.data for img in result.images] == fake.served


@pytest.mark.parametrize(("case", "kind"), SUPPORTED)
async def test_5xx_is_retryable_then_success(
    case: Case, kind: Kind, http: httpx.AsyncClient
) -> None:
    with case.fake(api_key=KEY) as fake:
        fake.fail_next(
            openai_error(500, "The server had an error", type="server_error"),
            FakeResponse(502, "<html>Bad gateway</html>"),
        )
        provider = case.build(config(case.name, fake.url, **case.overrides), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(case.request(kind))
        attempts: list[int] = []
        result = await call_with_retries(
            provider,
            case.request(kind),
            policy=FAST,
            deadline=time.monotonic() + 10,
            on_attempt=attempts.append,
        )
    assert (info.value.status_code, info.value.type, info.value.retryable) == (
        500,
        "server_error",
        True,
    )
    assert attempts == [1, 2]  # the 502 (HTML body) was retried too
    assert len(result.images) == 1


@pytest.mark.parametrize(("case", "kind"), SUPPORTED)
async def test_timeout_is_retryable(case: Case, kind: Kind, http: httpx.AsyncClient) -> None:
    with case.fake(api_key=KEY) as fake:
        fake.fail_next(FakeResponse(200, {"data": []}, delay_s=1.0))
        cfg = config(case.name, fake.url, timeout_s=0.3, **case.overrides)
        provider = case.build(cfg, http)
        started = time.monotonic()
        with pytest.raises(ProviderError) as info:
            await provider.run(case.request(kind))
        elapsed = time.monotonic() - started
    assert info.value.retryable is True
    assert info.value.status_code is None
    assert info.value.type == "timeout_error"
    assert elapsed < 0.9


@pytest.mark.parametrize(("case", "kind"), UNSUPPORTED)
async def test_unsupported_operations(case: Case, kind: Kind, http: httpx.AsyncClient) -> None:
    with case.fake(api_key=KEY) as fake:
        provider = case.build(config(case.name, fake.url, **case.overrides), http)
        assert kind not in provider.operations
        with pytest.raises(UnsupportedOperation) as info:
            await provider.run(case.request(kind))
        assert fake.requests == []
    assert (info.value.status_code, info.value.code, info.value.type) == (
        400,
        "unsupported_operation",
        "invalid_request_error",
    )
    assert info.value.retryable is False


@pytest.mark.parametrize("case", PROVIDERS)
async def test_secrets_never_reach_error_messages(case: Case, http: httpx.AsyncClient) -> None:
    with case.fake(api_key=KEY) as fake:
        fake.fail_next(
            openai_error(401, f"Incorrect API key provided: {KEY}.", code="invalid_api_key")
        )
        cfg = config(case.name, fake.url, **case.overrides)
        provider = case.build(cfg, http)
        with pytest.raises(ProviderError) as info:
            await provider.run(case.request(Kind.GENERATION))
    err = info.value
    assert err.status_code == 401
    assert KEY not in err.message
    assert KEY not in str(err)
    assert KEY not in repr(err)
    assert KEY not in repr(cfg)
    assert "<redacted>" in err.message


@pytest.mark.parametrize(
    ("build", "overrides"),
    [
        pytest.param(openai.build, {"keys": ()}, id="openai-without-key"),
        pytest.param(openai_compatible.build, {"base_url": ""}, id="compatible-without-base"),
        pytest.param(azure.build, {"base_url": ""}, id="azure-without-endpoint"),
        pytest.param(xai.build, {"keys": ()}, id="xai-without-key"),
        pytest.param(nebius.build, {"keys": ()}, id="nebius-without-key"),
    ],
)
async def test_not_configured(
    build: Build, overrides: dict[str, Any], http: httpx.AsyncClient
) -> None:
    with FakeOpenAI() as fake:
        provider = build(config("x", fake.url, **overrides), http)
        with pytest.raises(ProviderNotConfigured) as info:
            await provider.run(ProviderRequest(Kind.GENERATION, "m", "p"))
        assert fake.requests == []
    assert (info.value.status_code, info.value.code) == (400, "provider_not_configured")


async def test_default_base_urls(http: httpx.AsyncClient) -> None:
    client = http
    cfg = ProviderConfig(name="x", keys=(WeightedKey(KEY),))
    assert (
        openai.OpenAIProvider(cfg, client).endpoint(Kind.EDIT, "gpt-image-2.6-sunburst")
        == "https://api.openai.com/v1/images/edits"
    )
    assert (
        xai.XAIProvider(cfg, client).endpoint(Kind.GENERATION, "grok-imagine-image")
        == "https://api.x.ai/v1/images/generations"
    )
    assert (
        nebius.NebiusProvider(cfg, client).endpoint(Kind.GENERATION, "m")
        == "https://api.tokenfactory.nebius.com/v1/images/generations"
    )


# --- openai (and openai-compatible: the same code) -------------------------------------------


OPENAI_FAMILY = [
    pytest.param(openai.build, "openai", id="openai"),
    pytest.param(openai_compatible.build, "openai-compatible", id="openai-compatible"),
]


@pytest.mark.parametrize(("build", "name"), OPENAI_FAMILY)
async def test_openai_generation_request_and_result(
    build: Build, name: str, http: httpx.AsyncClient
) -> None:
    params = {
        "n": 2,
        "size": "1024x1536",
        "quality": "high",
        "background": "transparent",
        "output_format": "png",
        "output_compression": 100,
        "moderation": "low",
        "style": "vivid",
        "user": "user-1",
        "seed": 7,
        "negative_prompt": "blur",
        "num_inference_steps": 30,
        "aspect_ratio": "16:9",
        "resolution": "2K",
        "type": "generation",
        "input_images": ["data:image/png;base64,AAAA"],
        "input_fidelity": "high",
        "partial_images": 2,
        "mock_delay_ms": 5,
        "custom_flag": True,
        "extra": {"nested": [1, 2]},
        "response_format": None,
    }
    with FakeOpenAI(api_key=KEY) as fake:
        provider = build(config(name, fake.url), http)
        result = await provider.run(
            ProviderRequest(Kind.GENERATION, "gpt-image-2.6-sunburst", "a red fox", params)
        )
        [sent] = fake.requests
    assert (sent.method, sent.path, sent.query) == ("POST", "/v1/images/generations", {})
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.json() == {
        "model": "gpt-image-2.6-sunburst",
        "prompt": "a red fox",
        "n": 2,
        "size": "1024x1536",
        "quality": "high",
        "background": "transparent",
        "output_format": "png",
        "output_compression": 100,
        "moderation": "low",
        "style": "vivid",
        "user": "user-1",
        "custom_flag": True,
        "extra": {"nested": [1, 2]},
    }
    assert [img.data for img in result.images] == fake.served
    assert len(result.images) == 2
    assert {img.content_type for img in result.images} == {"image/png"}
    assert all(img.revised_prompt is None for img in result.images)
    assert result.fields == {
        "background": "transparent",
        "output_format": "png",
        "quality": "high",
        "size": "1024x1536",
    }
    assert result.usage == {
        "input_tokens": 50,
        "input_tokens_details": {"image_tokens": 40, "text_tokens": 10},
        "output_tokens": 2112,
        "total_tokens": 2162,
    }


@pytest.mark.parametrize(
    ("model", "params", "size"),
    [
        ("gpt-image-2.6-sunburst", {"aspect_ratio": "16:9"}, "1536x1024"),
        ("gpt-image-2.6-sunburst", {"aspect_ratio": "9:16", "resolution": "2K"}, "1024x1536"),
        ("gpt-image-2.6-sunburst", {"aspect_ratio": "1:1"}, "1024x1024"),
        ("gpt-image-2.6-sunburst", {"resolution": "2K"}, None),
        ("gpt-image-2.6-sunburst", {"size": "auto", "aspect_ratio": "16:9"}, "auto"),
        ("dall-e-3", {"aspect_ratio": "16:9"}, "1792x1024"),
        ("dall-e-2", {"aspect_ratio": "16:9"}, None),
        ("flux-dev", {"aspect_ratio": "16:9", "resolution": "1K"}, "1024x576"),
    ],
)
async def test_openai_maps_aspect_ratio_to_size(
    model: str, params: dict[str, Any], size: str | None, http: httpx.AsyncClient
) -> None:
    with FakeOpenAI() as fake:
        provider = openai.build(config("openai", fake.url), http)
        await provider.run(ProviderRequest(Kind.GENERATION, model, "p", params))
        body = fake.requests[0].json()
    assert body.get("size") == size
    assert "aspect_ratio" not in body
    assert "resolution" not in body


@pytest.mark.parametrize(
    ("model", "sent"),
    [("gpt-image-2.6-sunburst", None), ("chatgpt-image-latest", None), ("dall-e-3", "url")],
)
async def test_openai_response_format_only_for_models_that_take_it(
    model: str, sent: str | None, http: httpx.AsyncClient
) -> None:
    with FakeOpenAI() as fake:
        provider = openai.build(config("openai", fake.url), http)
        params = {"response_format": "url"}
        await provider.run(ProviderRequest(Kind.GENERATION, model, "p", params))
        body = fake.requests[0].json()
    assert body.get("response_format") == sent


async def test_openai_url_results_are_downloaded_without_credentials(
    http: httpx.AsyncClient,
) -> None:
    with FakeOpenAI(api_key=KEY) as fake:
        provider = openai.build(config("openai", fake.url), http)
        request = ProviderRequest(
            Kind.GENERATION, "dall-e-3", "a fox", {"response_format": "url", "n": 2}
        )
        result = await provider.run(request)
        sent = list(fake.requests)
    assert [r.method for r in sent] == ["POST", "GET", "GET"]
    assert all(r.path.startswith("/files/") for r in sent[1:])
    assert all("authorization" not in r.headers for r in sent[1:])
    assert [img.data for img in result.images] == fake.served
    assert [img.content_type for img in result.images] == ["image/png", "image/png"]
    assert [img.revised_prompt for img in result.images] == ["A revised a fox"] * 2
    assert sent[0].json()["response_format"] == "url"


async def test_openai_expired_result_url_is_a_provider_error(http: httpx.AsyncClient) -> None:
    with FakeOpenAI() as fake:
        fake.fail_next(FakeResponse(200, {"data": [{"url": f"{fake.url}/files/gone.png"}]}))
        provider = openai.build(config("openai", fake.url), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(ProviderRequest(Kind.GENERATION, "dall-e-2", "p"))
    assert info.value.status_code == 404
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"data": []}, "no images"),
        ({"data": [{"b64_json": "not base64!"}]}, "not valid base64"),
        ({"data": [{}]}, "neither"),
        ("not json", "not JSON"),
    ],
)
async def test_openai_unusable_success_responses(
    body: Any, why: str, http: httpx.AsyncClient
) -> None:
    with FakeOpenAI() as fake:
        fake.fail_next(FakeResponse(200, body))
        provider = openai.build(config("openai", fake.url), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(ProviderRequest(Kind.GENERATION, "gpt-image-2.6-sunburst", "p"))
    assert why in info.value.message
    assert (info.value.status_code, info.value.code) == (502, "invalid_upstream_response")


@pytest.mark.parametrize(("build", "name"), OPENAI_FAMILY)
async def test_openai_edit_multipart(build: Build, name: str, http: httpx.AsyncClient) -> None:
    params = {
        "n": 1,
        "size": "1024x1024",
        "quality": "high",
        "background": "opaque",
        "input_fidelity": "high",
        "output_format": "webp",
        "output_compression": 80,
        "response_format": "b64_json",
        "user": "user-2",
        "seed": 1,
        "style": "vivid",
        "moderation": "low",
        "mock_fail": True,
        "extra_field": "x",
        "flag": False,
    }
    request = ProviderRequest(
        Kind.EDIT, "gpt-image-2.6-sunburst", "put a hat on it", params, (IMAGE_A, IMAGE_B), MASK_IN
    )
    with FakeOpenAI(api_key=KEY) as fake:
        provider = build(config(name, fake.url), http)
        result = await provider.run(request)
        [sent] = fake.requests
    assert (sent.method, sent.path, sent.query) == ("POST", "/v1/images/edits", {})
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    fields, files = sent.multipart()
    assert fields == {
        "model": ["gpt-image-2.6-sunburst"],
        "prompt": ["put a hat on it"],
        "n": ["1"],
        "size": ["1024x1024"],
        "quality": ["high"],
        "background": ["opaque"],
        "input_fidelity": ["high"],
        "output_format": ["webp"],
        "output_compression": ["80"],
        "user": ["user-2"],
        "extra_field": ["x"],
        "flag": ["false"],
    }
    assert {k: [(f, t, sha(d)) for f, t, d in v] for k, v in files.items()} == {
        "image[]": [("a.png", "image/png", sha(PNG_A)), ("b.jpg", "image/jpeg", sha(JPEG_B))],
        "mask": [("mask.png", "image/png", sha(MASK))],
    }
    assert [img.data for img in result.images] == fake.served
    assert result.fields["output_format"] == "webp"


async def test_openai_edit_with_one_image_sends_an_image_part(http: httpx.AsyncClient) -> None:
    with FakeOpenAI() as fake:
        provider = openai.build(config("openai", fake.url), http)
        await provider.run(ProviderRequest(Kind.EDIT, "dall-e-2", "p", {}, (IMAGE_B,)))
        fields, files = fake.requests[0].multipart()
    assert fields == {"model": ["dall-e-2"], "prompt": ["p"]}
    assert {k: [(f, t, sha(d)) for f, t, d in v] for k, v in files.items()} == {
        "image": [("b.jpg", "image/jpeg", sha(JPEG_B))]
    }


async def test_openai_edit_without_an_image_is_rejected(http: httpx.AsyncClient) -> None:
    with FakeOpenAI() as fake:
        provider = openai.build(config("openai", fake.url), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(ProviderRequest(Kind.EDIT, "gpt-image-2.6-sunburst", "p"))
        assert fake.requests == []
    assert (info.value.status_code, info.value.code, info.value.param) == (
        400,
        "missing_image",
        "image",
    )


@pytest.mark.parametrize(("build", "name"), OPENAI_FAMILY)
async def test_openai_variation_multipart(build: Build, name: str, http: httpx.AsyncClient) -> None:
    params = {
        "n": 2,
        "size": "512x512",
        "response_format": "url",
        "user": "user-3",
        "quality": "hd",
        "style": "vivid",
        "background": "opaque",
        "seed": 3,
    }
    request = ProviderRequest(Kind.VARIATION, "dall-e-2", None, params, (IMAGE_A, IMAGE_B))
    with FakeOpenAI(api_key=KEY) as fake:
        provider = build(config(name, fake.url), http)
        result = await provider.run(request)
        sent = list(fake.requests)
    assert (sent[0].method, sent[0].path) == ("POST", "/v1/images/variations")
    assert sent[0].headers["authorization"] == f"Bearer {KEY}"
    fields, files = sent[0].multipart()
    assert fields == {
        "model": ["dall-e-2"],
        "n": ["2"],
        "size": ["512x512"],
        "response_format": ["url"],
        "user": ["user-3"],
    }
    assert {k: [(f, t, sha(d)) for f, t, d in v] for k, v in files.items()} == {
        "image": [("a.png", "image/png", sha(PNG_A))]
    }
    assert [r.method for r in sent[1:]] == ["GET", "GET"]
    assert [img.data for img in result.images] == fake.served


# --- openai-compatible ------------------------------------------------------------------------


async def test_compatible_without_key_sends_no_authorization(http: httpx.AsyncClient) -> None:
    with FakeOpenAI() as fake:
        provider = openai_compatible.build(config("openai-compatible", fake.url, keys=()), http)
        result = await provider.run(ProviderRequest(Kind.GENERATION, "sdxl", "p"))
        [sent] = fake.requests
    assert "authorization" not in sent.headers
    assert len(result.images) == 1


async def test_compatible_base_url_with_v1_is_not_doubled(http: httpx.AsyncClient) -> None:
    with FakeOpenAI() as fake:
        provider = openai_compatible.build(config("openai-compatible", f"{fake.url}/v1/"), http)
        await provider.run(ProviderRequest(Kind.GENERATION, "sdxl", "p"))
        [sent] = fake.requests
    assert sent.path == "/v1/images/generations"


# --- azure --------------------------------------------------------------------------------------


async def test_azure_generation_request(http: httpx.AsyncClient) -> None:
    params = {"n": 1, "size": "1024x1024", "quality": "high", "seed": 5, "mock_x": 1, "x": "y"}
    with FakeAzureOpenAI(api_key=KEY) as fake:
        cfg = config("azure", fake.url, deployments={"gpt-image-2.6-sunburst": "prod-images"})
        provider = azure.build(cfg, http)
        result = await provider.run(
            ProviderRequest(Kind.GENERATION, "gpt-image-2.6-sunburst", "p", params)
        )
        [sent] = fake.requests
    assert (sent.method, sent.path) == (
        "POST",
        "/openai/deployments/prod-images/images/generations",
    )
    assert sent.query == {"api-version": [azure.DEFAULT_API_VERSION]}
    assert sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    assert sent.json() == {
        "model": "gpt-image-2.6-sunburst",
        "prompt": "p",
        "n": 1,
        "size": "1024x1024",
        "quality": "high",
        "x": "y",
    }
    assert [img.data for img in result.images] == fake.served
    assert result.fields["quality"] == "high"


async def test_azure_edit_multipart_and_api_version(http: httpx.AsyncClient) -> None:
    request = ProviderRequest(
        Kind.EDIT, "gpt-image-2.6-sunburst", "p", {"size": "1024x1536"}, (IMAGE_A, IMAGE_B), MASK_IN
    )
    with FakeAzureOpenAI(api_key=KEY) as fake:
        provider = azure.build(config("azure", fake.url, api_version="2025-06-01"), http)
        result = await provider.run(request)
        [sent] = fake.requests
    assert sent.path == "/openai/deployments/gpt-image-2.6-sunburst/images/edits"
    assert sent.query == {"api-version": ["2025-06-01"]}
    assert sent.headers["api-key"] == KEY
    fields, files = sent.multipart()
    assert fields == {"model": ["gpt-image-2.6-sunburst"], "prompt": ["p"], "size": ["1024x1536"]}
    assert {k: [(f, t, sha(d)) for f, t, d in v] for k, v in files.items()} == {
        "image[]": [("a.png", "image/png", sha(PNG_A)), ("b.jpg", "image/jpeg", sha(JPEG_B))],
        "mask": [("mask.png", "image/png", sha(MASK))],
    }
    assert len(result.images) == 1


async def test_azure_entra_token_goes_in_authorization(http: httpx.AsyncClient) -> None:
    token = "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi"
    with FakeAzureOpenAI(api_key=token) as fake:
        provider = azure.build(config("azure", fake.url, keys=(WeightedKey(token),)), http)
        await provider.run(ProviderRequest(Kind.GENERATION, "gpt-image-2.6-sunburst", "p"))
        [sent] = fake.requests
    assert sent.headers["authorization"] == token
    assert "api-key" not in sent.headers


# --- xai ----------------------------------------------------------------------------------------


async def test_xai_generation_request_and_url_result(http: httpx.AsyncClient) -> None:
    params = {
        "n": 2,
        "aspect_ratio": "16:9",
        "resolution": "2K",
        "size": "1024x1024",
        "style": "vivid",
        "quality": "high",
        "output_compression": 50,
        "background": "opaque",
        "output_format": "png",
        "seed": 9,
        "user": "user-4",
        "custom": 1,
    }
    with FakeXAI(api_key=KEY) as fake:
        provider = xai.build(config("xai", fake.url), http)
        result = await provider.run(
            ProviderRequest(Kind.GENERATION, "grok-imagine-image", "a cat", params)
        )
        sent = list(fake.requests)
    assert (sent[0].method, sent[0].path, sent[0].query) == ("POST", "/v1/images/generations", {})
    assert sent[0].headers["authorization"] == f"Bearer {KEY}"
    assert sent[0].json() == {
        "model": "grok-imagine-image",
        "prompt": "a cat",
        "n": 2,
        "aspect_ratio": "16:9",
        "resolution": "2k",
        "user": "user-4",
        "custom": 1,
    }
    assert [r.method for r in sent[1:]] == ["GET", "GET"]  # xAI answers URLs by default
    assert all("authorization" not in r.headers for r in sent[1:])
    assert [img.data for img in result.images] == fake.served
    assert {img.content_type for img in result.images} == {"image/png"}
    assert result.usage == {"cost_in_usd_ticks": 1_400_000_000}


@pytest.mark.parametrize(
    ("size", "ratio"), [("1792x1024", "16:9"), ("1024x1536", "2:3"), ("1024x1024", "1:1")]
)
async def test_xai_maps_size_to_aspect_ratio(
    size: str, ratio: str, http: httpx.AsyncClient
) -> None:
    params = {"size": size, "response_format": "b64_json"}
    with FakeXAI() as fake:
        provider = xai.build(config("xai", fake.url), http)
        result = await provider.run(
            ProviderRequest(Kind.GENERATION, "grok-imagine-image-2.0", "p", params)
        )
        [sent] = fake.requests
    assert sent.json() == {
        "model": "grok-imagine-image-2.0",
        "prompt": "p",
        "aspect_ratio": ratio,
        "response_format": "b64_json",
    }
    assert result.images[0].data == fake.served[0]


# --- nebius -------------------------------------------------------------------------------------


async def test_nebius_generation_request(http: httpx.AsyncClient) -> None:
    params = {
        "n": 1,
        "size": "1024x768",
        "seed": 42,
        "num_inference_steps": 4,
        "negative_prompt": "fog",
        "output_format": "jpeg",
        "guidance_scale": 3.5,
        "quality": "high",
        "style": "vivid",
        "user": "user-5",
        "mock_x": 1,
    }
    with FakeNebius(api_key=KEY) as fake:
        provider = nebius.build(config("nebius", fake.url), http)
        result = await provider.run(
            ProviderRequest(Kind.GENERATION, "black-forest-labs/flux-schnell", "a boat", params)
        )
        [sent] = fake.requests
    assert (sent.method, sent.path, sent.query) == ("POST", "/v1/images/generations", {})
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json() == {
        "model": "black-forest-labs/flux-schnell",
        "prompt": "a boat",
        "width": 1024,
        "height": 768,
        "num_inference_steps": 4,
        "seed": 42,
        "negative_prompt": "fog",
        "guidance_scale": 3.5,
        "response_extension": "jpg",
        "response_format": "b64_json",
    }
    assert [img.data for img in result.images] == fake.served
    assert result.images[0].content_type == "image/jpeg"


async def test_nebius_fans_out_n(http: httpx.AsyncClient) -> None:
    params = {"n": 3, "seed": 42, "aspect_ratio": "16:9", "resolution": "1K"}
    with FakeNebius(api_key=KEY) as fake:
        provider = nebius.build(config("nebius", fake.url), http)
        result = await provider.run(ProviderRequest(Kind.GENERATION, "sdxl", "p", params))
        bodies = [r.json() for r in fake.requests_to("/v1/images/generations")]
        downloads = fake.requests_to(r"/files/.*")
    assert len(bodies) == 3
    assert sorted(b["seed"] for b in bodies) == [42, 43, 44]
    assert all("n" not in b for b in bodies)
    assert {(b["width"], b["height"]) for b in bodies} == {(1024, 576)}
    assert downloads == []
    assert len(result.images) == 3
    assert sorted(img.data for img in result.images) == sorted(fake.served)
    assert len({img.data for img in result.images}) == 3


async def test_nebius_url_results_are_downloaded(http: httpx.AsyncClient) -> None:
    params = {"n": 2, "response_format": "url", "output_format": "webp"}
    with FakeNebius(api_key=KEY) as fake:
        provider = nebius.build(config("nebius", fake.url), http)
        result = await provider.run(ProviderRequest(Kind.GENERATION, "sdxl", "p", params))
        bodies = [r.json() for r in fake.requests_to("/v1/images/generations")]
        downloads = fake.requests_to(r"/files/.*")
    assert all("seed" not in b for b in bodies)
    assert {b["response_extension"] for b in bodies} == {"webp"}
    assert len(downloads) == 2
    assert sorted(img.data for img in result.images) == sorted(fake.served)
    assert {img.content_type for img in result.images} == {"image/webp"}


async def test_nebius_validation_error_detail(http: httpx.AsyncClient) -> None:
    params = {"width": 4096, "height": 1024}
    with FakeNebius(api_key=KEY) as fake:
        provider = nebius.build(config("nebius", fake.url), http)
        with pytest.raises(ProviderError) as info:
            await provider.run(ProviderRequest(Kind.GENERATION, "sdxl", "p", params))
        [sent] = fake.requests
    assert (sent.json()["width"], sent.json()["height"]) == (4096, 1024)
    assert info.value.status_code == 422
    assert "must be 64-2048" in info.value.message
    assert info.value.retryable is False
