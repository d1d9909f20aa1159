"""Every provider end to end: one real stack (nats-server, API, worker, Envoy) whose
config names all twelve vendors, each pointed at its own fake upstream on loopback.

For each provider and each operation it has, a job is submitted through REST via Envoy
(JSON for generations, multipart for edits and variations), and the test asserts the
exact upstream request the fake recorded (path, auth header or SigV4 signature, body),
that the bytes the fake served come back as the job's images, and `extra_fields`.
Then the cross-cutting behaviour: unsupported operations, fallbacks, 429 with a retry
delay then success, polling vendors, fan-out for `n`, upstream error details carried
into the job, and no secret in any job body or process log.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from imagejobs.testing import Stack, require_binary
from PIL import Image

from tests.conftest import decode_image, submit, wait_terminal
from tests.fakes import bedrock as bedrock_fake
from tests.fakes.bedrock import FakeBedrock, bedrock_error
from tests.fakes.bfl import FakeBFL
from tests.fakes.gemini import FakeGemini, google_error
from tests.fakes.huggingface import FakeHuggingFace
from tests.fakes.openai import FakeAzureOpenAI, FakeNebius, FakeOpenAI, FakeXAI, openai_error
from tests.fakes.replicate import FakeReplicate
from tests.fakes.stability import FakeStability
from tests.fakes.upstream import FakeRequest, FakeResponse
from tests.fakes.vertex import FakeVertex

pytestmark = pytest.mark.e2e

JOB_TIMEOUT_S = 60.0  # generous: two shared cores
POLLS = 3  # Replicate predictions and BFL tasks stay running for this many reads

KEYS = {
    "openai": "sk-e2e-openai-0123456789abcdef",
    "openai-compatible": "sk-e2e-compatible-0123456789",
    "azure": "e2e-azure-key-0123456789abcdef",
    "gemini": "AIzaE2E-gemini-key-0123456789",
    "xai": "xai-e2e-key-0123456789abcdef",
    "huggingface": "hf_e2eToken0123456789abcdef",
    "nebius": "nebius-e2e-key-0123456789",
    "replicate": "r8_e2eToken0123456789abcdef",
    "stability": "sk-e2e-stability-0123456789",
    "bfl": "bfl-e2e-key-0123456789abcdef",
}
KEY_ENV = {name: "E2E_KEY_" + name.upper().replace("-", "_") for name in KEYS}
AWS_KEY_ENV = "E2E_AWS_ACCESS_KEY_ID"
AZURE_DEPLOYMENT = "images-prod"
AZURE_API_VERSION = "2025-04-01-preview"
VERTEX_PROJECT = "e2e-project"
VERTEX_REGION = "europe-west4"
VERTEX_MODELS = f"/v1/projects/{VERTEX_PROJECT}/locations/{VERTEX_REGION}/publishers/google/models"

# Every job body the tests saw, checked for secrets at the end.
SEEN: list[str] = []


@dataclass
class Fakes:
    openai: FakeOpenAI
    compatible: FakeOpenAI
    azure: FakeAzureOpenAI
    xai: FakeXAI
    nebius: FakeNebius
    gemini: FakeGemini
    vertex: FakeVertex
    bedrock: FakeBedrock
    huggingface: FakeHuggingFace
    replicate: FakeReplicate
    stability: FakeStability
    bfl: FakeBFL


@dataclass
class Env:
    stack: Stack
    fakes: Fakes
    api: httpx.Client


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    root = tmp_path_factory.mktemp("providers-e2e")
    with contextlib.ExitStack() as stack_of_fakes:
        fakes = Fakes(
            openai=stack_of_fakes.enter_context(FakeOpenAI(api_key=KEYS["openai"])),
            compatible=stack_of_fakes.enter_context(FakeOpenAI(api_key=KEYS["openai-compatible"])),
            azure=stack_of_fakes.enter_context(FakeAzureOpenAI(api_key=KEYS["azure"])),
            xai=stack_of_fakes.enter_context(FakeXAI(api_key=KEYS["xai"])),
            nebius=stack_of_fakes.enter_context(FakeNebius(api_key=KEYS["nebius"])),
            gemini=stack_of_fakes.enter_context(FakeGemini(api_key=KEYS["gemini"])),
            vertex=stack_of_fakes.enter_context(FakeVertex()),
            bedrock=stack_of_fakes.enter_context(FakeBedrock()),
            huggingface=stack_of_fakes.enter_context(FakeHuggingFace(token=KEYS["huggingface"])),
            replicate=stack_of_fakes.enter_context(
                FakeReplicate(token=KEYS["replicate"], polls=POLLS)
            ),
            stability=stack_of_fakes.enter_context(FakeStability(key=KEYS["stability"])),
            bfl=stack_of_fakes.enter_context(FakeBFL(key=KEYS["bfl"], polls=POLLS)),
        )
        sa_file = fakes.vertex.write_service_account(root / "vertex-sa.json")
        common = {"max_retries": 1, "timeout_s": 20.0}
        polling = {**common, "poll_interval_s": 0.05}

        def keyed(name: str, url: str, **extra: Any) -> dict[str, Any]:
            return {"base_url": url, "keys": [{"env": KEY_ENV[name]}], **common, **extra}

        config: dict[str, Any] = {
            "providers": {
                "mock": {},
                "openai": keyed("openai", fakes.openai.url),
                # a base URL that already ends in /v1, as self-hosted servers are often given
                "openai-compatible": keyed("openai-compatible", f"{fakes.compatible.url}/v1"),
                "azure": keyed(
                    "azure",
                    fakes.azure.url,
                    deployments={"gpt-image-2.6-sunburst": AZURE_DEPLOYMENT},
                    api_version=AZURE_API_VERSION,
                ),
                "xai": keyed("xai", fakes.xai.url),
                "nebius": keyed("nebius", fakes.nebius.url),
                "gemini": keyed("gemini", fakes.gemini.url),
                "vertex": {
                    "base_url": fakes.vertex.url,
                    "project": VERTEX_PROJECT,
                    "region": VERTEX_REGION,
                    "credentials_file": str(sa_file),
                    **common,
                },
                "bedrock": {
                    "base_url": fakes.bedrock.url,
                    "region": bedrock_fake.REGION,
                    "keys": [{"env": AWS_KEY_ENV}],
                    **common,
                },
                "huggingface": keyed(
                    "huggingface", fakes.huggingface.url, hub_url=fakes.huggingface.hub_url
                ),
                "replicate": {**keyed("replicate", fakes.replicate.url), **polling},
                "stability": keyed("stability", fakes.stability.url),
                "bfl": {**keyed("bfl", fakes.bfl.url), **polling},
            },
        }
        secrets_env = {KEY_ENV[name]: value for name, value in KEYS.items()}
        secrets_env[AWS_KEY_ENV] = bedrock_fake.ACCESS_KEY
        # bedrock's secret and session token come from the standard AWS variables
        secrets_env["AWS_SECRET_ACCESS_KEY"] = bedrock_fake.SECRET_KEY
        secrets_env["AWS_SESSION_TOKEN"] = bedrock_fake.SESSION_TOKEN
        stack = Stack(root / "stack", config, env=secrets_env)
        try:
            stack.start()
            with httpx.Client(base_url=stack.url, timeout=30, trust_env=False) as api:
                yield Env(stack=stack, fakes=fakes, api=api)
        finally:
            stack.stop()


# --- helpers ---------------------------------------------------------------------------------


def png(size: tuple[int, int] = (16, 16), colour: tuple[int, int, int] = (30, 140, 220)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(size: tuple[int, int] = (16, 16)) -> bytes:
    """An OpenAI-style mask: transparent (edit) on the left half, opaque on the right."""
    img = Image.new("RGBA", size, (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


IMAGE = png()
MASK = mask_png()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def job_of(api: httpx.Client, r: httpx.Response, kind: str) -> dict[str, Any]:
    assert r.status_code == 202, r.text
    job = wait_terminal(api, r.json()["id"], kind=kind, timeout_s=JOB_TIMEOUT_S)
    assert job.status_code == 200, job.text
    SEEN.append(job.text)
    body: dict[str, Any] = job.json()
    return body


def generate(env: Env, body: dict[str, Any]) -> dict[str, Any]:
    return job_of(env.api, submit(env.api, body), "generations")


def upload(
    env: Env,
    kind: str,
    fields: dict[str, str],
    *,
    mask: bool = False,
    images: tuple[bytes, ...] = (IMAGE,),
) -> dict[str, Any]:
    """A multipart edit or variation: `image` (one) or `image[]` (several), optional mask."""
    part = "image" if len(images) == 1 else "image[]"
    files = [(part, (f"in{i}.png", data, "image/png")) for i, data in enumerate(images)]
    if mask:
        files.append(("mask", ("mask.png", MASK, "image/png")))
    return job_of(env.api, env.api.post(f"/v1/async/images/{kind}", data=fields, files=files), kind)


def completed(
    job: dict[str, Any], provider: str, model: str, *, n: int = 1, requested: str | None = None
) -> list[bytes]:
    """The job completed with `n` decodable images served by `provider`/`model`; returns
    the image bytes."""
    assert job["status"] == "completed", job
    assert job["status_code"] == 200
    result = job["result"]
    extra = result["extra_fields"]
    assert extra["provider"] == provider, extra
    assert extra["model_used"] == model
    assert extra["model_requested"] == (requested or model)
    assert isinstance(extra["latency"], int)
    assert [item["index"] for item in result["data"]] == list(range(n))
    images = [base64.b64decode(item["b64_json"]) for item in result["data"]]
    for item in result["data"]:
        assert decode_image(item["b64_json"]).size[0] > 0
    return images


def failed(job: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    """The job failed with `status` and error `code`; returns the inner error object."""
    assert job["status"] == "failed", job
    assert job["status_code"] == status
    err = job["error"]
    assert err["status_code"] == status and err["is_bifrost_error"] is True
    assert err["error"].get("code") == code, err
    inner: dict[str, Any] = err["error"]
    return inner


class Since:
    """The requests a fake received after this point."""

    def __init__(self, fake: Any) -> None:
        self._fake = fake
        self._mark = len(fake.requests)

    def __call__(self, pattern: str = ".*", method: str | None = None) -> list[FakeRequest]:
        rx = re.compile(pattern)
        return [
            r
            for r in self._fake.requests[self._mark :]
            if rx.fullmatch(r.path) and (method is None or r.method == method)
        ]


def fields_of(req: FakeRequest) -> tuple[dict[str, str], dict[str, list[tuple[str, str, bytes]]]]:
    """A multipart request's single-valued fields and its files."""
    fields, files = req.multipart()
    assert all(len(v) == 1 for v in fields.values()), fields
    return {k: v[0] for k, v in fields.items()}, files


def decoded_mask(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# --- OpenAI and OpenAI-shaped vendors ------------------------------------------------------


def test_openai_generation(env: Env) -> None:
    fake = env.fakes.openai
    sent = Since(fake)
    job = generate(
        env,
        {
            "model": "openai/gpt-image-2.6-sunburst",
            "prompt": "a lighthouse",
            "size": "1024x1024",
            "quality": "low",
            "seed": 7,  # not an OpenAI parameter: dropped
            "custom_flag": True,  # unknown: passed through
        },
    )
    images = completed(job, "openai", "gpt-image-2.6-sunburst")
    (req,) = sent("/v1/images/generations")
    assert req.headers["authorization"] == f"Bearer {KEYS['openai']}"
    assert req.json() == {
        "model": "gpt-image-2.6-sunburst",
        "prompt": "a lighthouse",
        "size": "1024x1024",
        "quality": "low",
        "custom_flag": True,
    }
    assert images == fake.served[-1:]
    assert job["result"]["usage"]["total_tokens"] == 50 + 1056
    assert job["result"]["quality"] == "low"


def test_openai_edit_multipart(env: Env) -> None:
    fake = env.fakes.openai
    sent = Since(fake)
    second = png(colour=(200, 10, 10))
    job = upload(
        env,
        "edits",
        {"model": "openai/gpt-image-2.6-sunburst", "prompt": "add a moon", "n": "2"},
        mask=True,
        images=(IMAGE, second),
    )
    images = completed(job, "openai", "gpt-image-2.6-sunburst", n=2)
    (req,) = sent("/v1/images/edits")
    assert req.headers["authorization"] == f"Bearer {KEYS['openai']}"
    fields, files = fields_of(req)
    assert fields == {"model": "gpt-image-2.6-sunburst", "prompt": "add a moon", "n": "2"}
    assert [(f[0], f[2]) for f in files["image[]"]] == [("in0.png", IMAGE), ("in1.png", second)]
    assert [f[2] for f in files["mask"]] == [MASK]  # OpenAI's own convention: unchanged
    assert images == fake.served[-2:]
    assert job["result"]["extra_fields"]["request_type"] == "image_edit"


def test_openai_variation_with_retired_dall_e_is_refused_at_submit(env: Env) -> None:
    """dall-e-2 (OpenAI's only model with variations) is retired: the multipart submit is
    a 400 naming the replacement, and nothing reaches OpenAI."""
    sent = Since(env.fakes.openai)
    files = [("image", ("in0.png", IMAGE, "image/png"))]
    fields = {"model": "openai/dall-e-2", "size": "256x256"}
    r = env.api.post("/v1/async/images/variations", data=fields, files=files)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("model_retired", "model")
    assert "use openai/gpt-image-2.5-sunburst instead" in err["message"]
    assert sent() == []


def test_openai_compatible_generation_and_variation(env: Env) -> None:
    fake = env.fakes.compatible
    sent = Since(fake)
    job = generate(
        env,
        {"model": "openai-compatible/local-sdxl", "prompt": "a barn", "size": "512x512"},
    )
    images = completed(job, "openai-compatible", "local-sdxl")
    (req,) = sent("/v1/images/generations")  # the configured /v1 is not doubled
    assert req.headers["authorization"] == f"Bearer {KEYS['openai-compatible']}"
    assert req.json() == {"model": "local-sdxl", "prompt": "a barn", "size": "512x512"}
    assert images == fake.served[-1:]

    job = upload(env, "variations", {"model": "openai-compatible/local-sdxl"})
    images = completed(job, "openai-compatible", "local-sdxl")
    (req,) = sent("/v1/images/variations")
    fields, files = fields_of(req)
    assert fields == {"model": "local-sdxl"}
    assert [f[2] for f in files["image"]] == [IMAGE]
    assert images == fake.served[-1:]


def test_azure_generation_and_edit(env: Env) -> None:
    fake = env.fakes.azure
    sent = Since(fake)
    job = generate(
        env, {"model": "azure/gpt-image-2.6-sunburst", "prompt": "a harbour", "size": "1536x1024"}
    )
    images = completed(job, "azure", "gpt-image-2.6-sunburst")
    deployment = f"/openai/deployments/{AZURE_DEPLOYMENT}/images"
    (req,) = sent(f"{deployment}/generations")
    assert req.query == {"api-version": [AZURE_API_VERSION]}
    assert req.headers["api-key"] == KEYS["azure"]
    assert "authorization" not in req.headers
    assert req.json() == {
        "model": "gpt-image-2.6-sunburst",
        "prompt": "a harbour",
        "size": "1536x1024",
    }
    assert images == fake.served[-1:]

    job = upload(
        env, "edits", {"model": "azure/gpt-image-2.6-sunburst", "prompt": "add boats"}, mask=True
    )
    images = completed(job, "azure", "gpt-image-2.6-sunburst")
    (req,) = sent(f"{deployment}/edits")
    assert req.query == {"api-version": [AZURE_API_VERSION]}
    assert req.headers["api-key"] == KEYS["azure"]
    fields, files = fields_of(req)
    assert fields == {"model": "gpt-image-2.6-sunburst", "prompt": "add boats"}
    assert [f[2] for f in files["image"]] == [IMAGE]
    assert [f[2] for f in files["mask"]] == [MASK]
    assert images == fake.served[-1:]


def test_xai_generation_downloads_the_result_url(env: Env) -> None:
    fake = env.fakes.xai
    sent = Since(fake)
    job = generate(
        env,
        {
            "model": "xai/grok-imagine-image-2.0",
            "prompt": "a comet",
            "size": "1024x1024",
            "style": "vivid",
        },
    )
    images = completed(job, "xai", "grok-imagine-image-2.0")
    (req,) = sent("/v1/images/generations")
    assert req.headers["authorization"] == f"Bearer {KEYS['xai']}"
    # xAI rejects size and style: the size became the nearest aspect ratio
    assert req.json() == {
        "model": "grok-imagine-image-2.0",
        "prompt": "a comet",
        "aspect_ratio": "1:1",
    }
    (download,) = sent(r"/files/\w+\.png", "GET")
    assert "authorization" not in download.headers  # result URLs get no credentials
    assert images == fake.served[-1:]
    assert job["result"]["usage"] == {"cost_in_usd_ticks": 700_000_000}


def test_nebius_generation_fans_out_n(env: Env) -> None:
    fake = env.fakes.nebius
    sent = Since(fake)
    job = generate(
        env,
        {
            "model": "nebius/black-forest-labs/flux-schnell",
            "prompt": "a meadow",
            "size": "512x512",
            "n": 2,
            "seed": 5,
            "num_inference_steps": 4,
        },
    )
    images = completed(job, "nebius", "black-forest-labs/flux-schnell", n=2)
    calls = sent("/v1/images/generations")
    assert len(calls) == 2  # one image per Nebius call
    for req in calls:
        assert req.headers["authorization"] == f"Bearer {KEYS['nebius']}"
    bodies = sorted((req.json() for req in calls), key=lambda b: b["seed"])
    assert bodies == [
        {
            "model": "black-forest-labs/flux-schnell",
            "prompt": "a meadow",
            "width": 512,
            "height": 512,
            "num_inference_steps": 4,
            "seed": seed,
            "response_format": "b64_json",
        }
        for seed in (5, 6)
    ]
    assert sorted(images) == sorted(fake.served[-2:])


# --- Google --------------------------------------------------------------------------------


def test_gemini_generate_content_fans_out_n(env: Env) -> None:
    fake = env.fakes.gemini
    sent = Since(fake)
    job = generate(
        env,
        {
            "model": "gemini/gemini-3.1-flash-image",
            "prompt": "a red fox",
            "size": "1536x1024",
            "n": 2,
            "seed": 10,
        },
    )
    images = completed(job, "gemini", "gemini-3.1-flash-image", n=2)
    calls = sent(r"/v1beta/models/gemini-3\.1-flash-image:generateContent")
    assert len(calls) == 2  # one image per generateContent call
    for req in calls:
        assert req.headers["x-goog-api-key"] == KEYS["gemini"]
        assert "authorization" not in req.headers
    bodies = sorted((req.json() for req in calls), key=lambda b: b["generationConfig"]["seed"])
    assert bodies == [
        {
            "contents": [{"role": "user", "parts": [{"text": "a red fox"}]}],
            "generationConfig": {
                "responseModalities": ["IMAGE"],
                "imageConfig": {"aspectRatio": "3:2", "imageSize": "2K"},
                "seed": seed,
            },
        }
        for seed in (10, 11)
    ]
    assert sorted(images) == sorted(fake.served[-2:])
    assert job["result"]["usage"]["total_tokens"] == 2 * 1302  # merged across the calls


def test_gemini_imagen_is_retired_and_refused_at_submit(env: Env) -> None:
    """Imagen is shut down on the Gemini API: 400 model_retired, nothing sent upstream."""
    sent = Since(env.fakes.gemini)
    r = submit(env.api, {"model": "gemini/imagen-4.0-generate-001", "prompt": "a castle"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("model_retired", "model")
    assert "use gemini/gemini-3.1-flash-image instead" in err["message"]
    assert sent() == []


def test_gemini_edit_sends_the_upload_inline(env: Env) -> None:
    fake = env.fakes.gemini
    sent = Since(fake)
    job = upload(
        env,
        "edits",
        {"model": "gemini/gemini-3.1-flash-image", "prompt": "make it night"},
        mask=True,  # Gemini has no mask input: ignored
    )
    images = completed(job, "gemini", "gemini-3.1-flash-image")
    (req,) = sent(r"/v1beta/models/gemini-3\.1-flash-image:generateContent")
    assert req.headers["x-goog-api-key"] == KEYS["gemini"]
    assert req.json() == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "make it night"},
                    {"inlineData": {"mimeType": "image/png", "data": b64(IMAGE)}},
                ],
            }
        ],
        "generationConfig": {"responseModalities": ["IMAGE"]},
    }
    assert images == fake.served[-1:]


def test_vertex_imagen_generation_with_service_account_token(env: Env) -> None:
    fake = env.fakes.vertex
    sent = Since(fake)
    job = generate(
        env,
        {
            "model": "vertex/imagen-4.0-generate-001",
            "prompt": "a glacier",
            "size": "1024x1024",
            "seed": 42,
            "negative_prompt": "people",
        },
    )
    images = completed(job, "vertex", "imagen-4.0-generate-001")
    # deprecated on Vertex: it runs, and the job says so
    [warning] = job["result"]["extra_fields"]["warnings"]
    assert warning.startswith("model vertex/imagen-4.0-generate-001 is deprecated")
    (req,) = sent(re.escape(VERTEX_MODELS) + r"/imagen-4\.0-generate-001:predict")
    auth = req.headers["authorization"]
    assert auth.startswith("Bearer ya29.fake-")
    assert auth.removeprefix("Bearer ") in fake.issued  # obtained from the token endpoint
    assert fake.assertions and fake.assertions[0]["iss"] == fake.client_email
    assert req.json() == {
        "instances": [{"prompt": "a glacier"}],
        "parameters": {
            "sampleCount": 1,
            "aspectRatio": "1:1",
            "negativePrompt": "people",
            "seed": 42,
            "addWatermark": False,
        },
    }
    assert images == fake.served[-1:]


def test_vertex_imagen_edit_with_converted_mask(env: Env) -> None:
    fake = env.fakes.vertex
    sent = Since(fake)
    job = upload(
        env,
        "edits",
        {"model": "vertex/imagen-3.0-capability-001", "prompt": "a red door"},
        mask=True,
    )
    images = completed(job, "vertex", "imagen-3.0-capability-001")
    (req,) = sent(re.escape(VERTEX_MODELS) + r"/imagen-3\.0-capability-001:predict")
    assert req.headers["authorization"].removeprefix("Bearer ") in fake.issued
    body = req.json()
    raw, mask_ref = body["instances"][0]["referenceImages"]
    assert raw == {
        "referenceType": "REFERENCE_TYPE_RAW",
        "referenceId": 1,
        "referenceImage": {"bytesBase64Encoded": b64(IMAGE)},
    }
    assert mask_ref["referenceType"] == "REFERENCE_TYPE_MASK"
    assert mask_ref["maskImageConfig"] == {"maskMode": "MASK_MODE_USER_PROVIDED"}
    mask = decoded_mask(base64.b64decode(mask_ref["referenceImage"]["bytesBase64Encoded"]))
    assert mask.convert("L").getpixel((2, 8)) == 255  # transparent (edit) -> white
    assert mask.convert("L").getpixel((13, 8)) == 0
    assert body["instances"][0]["prompt"] == "a red door"
    assert body["parameters"] == {"sampleCount": 1, "editMode": "EDIT_MODE_INPAINT_INSERTION"}
    assert images == fake.served[-1:]


def test_vertex_gemini_generation(env: Env) -> None:
    fake = env.fakes.vertex
    sent = Since(fake)
    job = generate(env, {"model": "vertex/gemini-2.5-flash-image", "prompt": "a kite"})
    images = completed(job, "vertex", "gemini-2.5-flash-image")
    (req,) = sent(re.escape(VERTEX_MODELS) + r"/gemini-2\.5-flash-image:generateContent")
    assert req.headers["authorization"].removeprefix("Bearer ") in fake.issued
    assert req.json() == {
        "contents": [{"role": "user", "parts": [{"text": "a kite"}]}],
        "generationConfig": {"responseModalities": ["IMAGE"]},
    }
    assert images == fake.served[-1:]


# --- Bedrock ---------------------------------------------------------------------------------


NOVA = "amazon.nova-canvas-v1:0"
NOVA_PATH = "/model/amazon.nova-canvas-v1%3A0/invoke"


def assert_signed(fake: FakeBedrock, req: FakeRequest) -> None:
    """A valid SigV4 signature for the fake's credentials, recomputed by the fake."""
    assert req.headers["authorization"] == fake.expected_authorization(req)
    scope = f"Credential={bedrock_fake.ACCESS_KEY}/{req.headers['x-amz-date'][:8]}/"
    assert scope + f"{bedrock_fake.REGION}/bedrock/aws4_request" in req.headers["authorization"]
    assert req.headers["x-amz-security-token"] == bedrock_fake.SESSION_TOKEN


def test_bedrock_generation_is_signed_and_fans_out(env: Env) -> None:
    fake = env.fakes.bedrock
    sent = Since(fake)
    failures = len(fake.signature_failures)
    job = generate(
        env,
        {
            "model": f"bedrock/{NOVA}",
            "prompt": "a lantern",
            "negative_prompt": "smoke",
            "size": "512x512",
            "quality": "high",
            "seed": 7,
            "n": 7,  # Nova Canvas makes at most 5 per call: 5 + 2
        },
    )
    images = completed(job, "bedrock", NOVA, n=7)
    calls = sent(re.escape(NOVA_PATH))
    assert len(calls) == 2
    assert fake.signature_failures[failures:] == []
    for req in calls:
        assert_signed(fake, req)
    bodies = sorted((req.json() for req in calls), key=lambda b: b["imageGenerationConfig"]["seed"])
    assert bodies == [
        {
            "taskType": "TEXT_IMAGE",
            "textToImageParams": {"text": "a lantern", "negativeText": "smoke"},
            "imageGenerationConfig": {
                "numberOfImages": count,
                "width": 512,
                "height": 512,
                "quality": "premium",
                "seed": seed,
            },
        }
        for count, seed in ((5, 7), (2, 8))
    ]
    assert sorted(images) == sorted(fake.served[-7:])


def test_bedrock_inpainting_edit_and_variation(env: Env) -> None:
    fake = env.fakes.bedrock
    sent = Since(fake)
    job = upload(env, "edits", {"model": f"bedrock/{NOVA}", "prompt": "a cat"}, mask=True)
    images = completed(job, "bedrock", NOVA)
    (req,) = sent(re.escape(NOVA_PATH))
    assert_signed(fake, req)
    body = req.json()
    assert body["taskType"] == "INPAINTING"
    assert body["imageGenerationConfig"] == {"numberOfImages": 1}  # keeps the input's size
    params = body["inPaintingParams"]
    assert set(params) == {"image", "text", "maskImage"}
    assert (params["image"], params["text"]) == (b64(IMAGE), "a cat")
    mask = decoded_mask(base64.b64decode(params["maskImage"])).convert("RGB")
    assert mask.getpixel((2, 8)) == (0, 0, 0)  # Bedrock edits where the mask is black
    assert mask.getpixel((13, 8)) == (255, 255, 255)
    assert images == fake.served[-1:]

    sent = Since(fake)
    job = upload(env, "variations", {"model": f"bedrock/{NOVA}", "size": "320x320"})
    images = completed(job, "bedrock", NOVA)
    (req,) = sent(re.escape(NOVA_PATH))
    assert_signed(fake, req)
    assert req.json() == {
        "taskType": "IMAGE_VARIATION",
        "imageVariationParams": {"images": [b64(IMAGE)]},
        "imageGenerationConfig": {"numberOfImages": 1, "width": 320, "height": 320},
    }
    assert images == fake.served[-1:]


def test_bedrock_error_type_header_reaches_the_job(env: Env) -> None:
    fake = env.fakes.bedrock
    sent = Since(fake)
    fake.fail_next(bedrock_error(400, "ValidationException", "Malformed input request: bad width"))
    job = generate(env, {"model": f"bedrock/{NOVA}", "prompt": "x", "size": "100x100"})
    err = failed(job, 400, "ValidationException")
    assert err["type"] == "invalid_request_error"
    assert err["message"] == "Malformed input request: bad width"
    assert len(sent(re.escape(NOVA_PATH))) == 1  # a 400 is not retried


# --- Hugging Face ---------------------------------------------------------------------------


HF_REPO = "black-forest-labs/FLUX.1-schnell"


def test_huggingface_text_to_image_and_image_to_image(env: Env) -> None:
    fake = env.fakes.huggingface
    sent = Since(fake)
    model = f"hf-inference/{HF_REPO}"
    job = generate(
        env,
        {
            "model": f"huggingface/{model}",
            "prompt": "a lake",
            "size": "512x512",
            "num_inference_steps": 4,
        },
    )
    images = completed(job, "huggingface", model)
    (req,) = sent(f"/hf-inference/models/{re.escape(HF_REPO)}")
    assert req.headers["authorization"] == f"Bearer {KEYS['huggingface']}"
    assert req.json() == {
        "inputs": "a lake",
        "parameters": {"width": 512, "height": 512, "num_inference_steps": 4},
    }
    assert images == fake.served[-1:]

    sent = Since(fake)
    job = upload(env, "edits", {"model": f"huggingface/{model}", "prompt": "in winter"})
    images = completed(job, "huggingface", model)
    (req,) = sent(f"/hf-inference/models/{re.escape(HF_REPO)}")
    assert req.headers["authorization"] == f"Bearer {KEYS['huggingface']}"
    assert req.json() == {"inputs": b64(IMAGE), "parameters": {"prompt": "in winter"}}
    assert images == fake.served[-1:]


def test_huggingface_together_route(env: Env) -> None:
    fake = env.fakes.huggingface
    sent = Since(fake)
    model = f"together/{HF_REPO}"  # the Hub repo; the fake Hub maps it to Together's id
    job = generate(env, {"model": f"huggingface/{model}", "prompt": "a dune", "seed": 3})
    images = completed(job, "huggingface", model)
    (req,) = sent("/together/v1/images/generations")
    assert req.headers["authorization"] == f"Bearer {KEYS['huggingface']}"
    assert req.json() == {
        "model": "black-forest-labs/FLUX.1-schnell-Free",
        "prompt": "a dune",
        "seed": 3,
        "response_format": "base64",
    }
    assert images == fake.served[-1:]


# --- Replicate, Stability, BFL ---------------------------------------------------------------


def test_replicate_generation_polls_the_prediction(env: Env) -> None:
    fake = env.fakes.replicate
    sent = Since(fake)
    job = generate(
        env,
        {
            "model": "replicate/black-forest-labs/flux-schnell",
            "prompt": "a canyon",
            "size": "1024x1024",
            "n": 2,
            "go_fast": True,
        },
    )
    images = completed(job, "replicate", "black-forest-labs/flux-schnell", n=2)
    (create,) = sent("/v1/models/black-forest-labs/flux-schnell/predictions", "POST")
    assert create.headers["authorization"] == f"Bearer {KEYS['replicate']}"
    assert "prefer" not in create.headers
    assert create.json() == {
        "input": {"prompt": "a canyon", "aspect_ratio": "1:1", "num_outputs": 2, "go_fast": True}
    }
    polls = sent(r"/v1/predictions/pred\d+", "GET")
    assert len(polls) == POLLS + 1  # processing x POLLS, then succeeded
    assert len({req.path for req in polls}) == 1
    for req in polls:
        assert req.headers["authorization"] == f"Bearer {KEYS['replicate']}"
    downloads = sent(r"/files/pred\d+/\d\.png", "GET")
    assert len(downloads) == 2
    assert all("authorization" not in req.headers for req in downloads)
    assert images == fake.served[-2:]


def test_replicate_edit_sends_image_and_white_mask(env: Env) -> None:
    fake = env.fakes.replicate
    sent = Since(fake)
    model = "black-forest-labs/flux-fill-pro"
    job = upload(env, "edits", {"model": f"replicate/{model}", "prompt": "a window"}, mask=True)
    images = completed(job, "replicate", model)
    (create,) = sent(f"/v1/models/{model}/predictions", "POST")
    model_input = create.json()["input"]
    assert set(model_input) == {"prompt", "image", "mask"}
    assert model_input["prompt"] == "a window"
    assert model_input["image"] == f"data:image/png;base64,{b64(IMAGE)}"
    header, _, data = model_input["mask"].partition(",")
    assert header == "data:image/png;base64"
    mask = decoded_mask(base64.b64decode(data)).convert("L")
    assert (mask.getpixel((2, 8)), mask.getpixel((13, 8))) == (255, 0)  # white = edit
    assert len(sent(r"/v1/predictions/pred\d+", "GET")) == POLLS + 1
    assert images == fake.served[-1:]


def test_stability_generation_fans_out_n(env: Env) -> None:
    fake = env.fakes.stability
    sent = Since(fake)
    job = generate(
        env,
        {
            "model": "stability/sd3.5-large",
            "prompt": "a volcano",
            "size": "1344x768",
            "n": 2,
            "seed": 100,
            "output_format": "png",
            "style_preset": "photographic",
        },
    )
    images = completed(job, "stability", "sd3.5-large", n=2)
    calls = sent("/v2beta/stable-image/generate/sd3")
    assert len(calls) == 2  # one image per Stability call
    bodies = []
    for req in calls:
        assert req.headers["authorization"] == f"Bearer {KEYS['stability']}"
        assert req.headers["accept"] == "image/*"
        assert req.headers["content-type"].startswith("multipart/form-data")
        fields, files = fields_of(req)
        assert files == {}
        bodies.append(fields)
    assert sorted(bodies, key=lambda f: f["seed"]) == [
        {
            "prompt": "a volcano",
            "seed": str(seed),
            "output_format": "png",
            "style_preset": "photographic",
            "model": "sd3.5-large",
            "aspect_ratio": "16:9",
        }
        for seed in (100, 101)
    ]
    assert sorted(images) == sorted(fake.served[-2:])


def test_stability_inpaint_edit(env: Env) -> None:
    fake = env.fakes.stability
    sent = Since(fake)
    job = upload(env, "edits", {"model": "stability/core", "prompt": "a boat"}, mask=True)
    images = completed(job, "stability", "core")
    (req,) = sent("/v2beta/stable-image/edit/inpaint")
    assert req.headers["authorization"] == f"Bearer {KEYS['stability']}"
    fields, files = fields_of(req)
    assert fields == {"prompt": "a boat"}
    assert [(f[0], f[2]) for f in files["image"]] == [("in0.png", IMAGE)]
    ((_, _, mask_bytes),) = files["mask"]
    mask = decoded_mask(mask_bytes).convert("L")
    assert (mask.getpixel((2, 8)), mask.getpixel((13, 8))) == (255, 0)  # white = edit
    assert images == fake.served[-1:]


def test_bfl_generation_polls_each_task_and_fans_out(env: Env) -> None:
    fake = env.fakes.bfl
    sent = Since(fake)
    job = generate(
        env,
        {
            "model": "bfl/flux-pro-1.1",
            "prompt": "an owl",
            "size": "500x500",
            "n": 2,
            "seed": 3,
            "safety_tolerance": 2,
        },
    )
    images = completed(job, "bfl", "flux-pro-1.1", n=2)
    creates = sent("/v1/flux-pro-1.1", "POST")
    assert len(creates) == 2  # one image per BFL task
    for req in creates:
        assert req.headers["x-key"] == KEYS["bfl"]
        assert "authorization" not in req.headers
    bodies = sorted((req.json() for req in creates), key=lambda b: b["seed"])
    assert bodies == [
        {"prompt": "an owl", "width": 512, "height": 512, "seed": seed, "safety_tolerance": 2}
        for seed in (3, 4)
    ]
    polls = sent("/v1/get_result", "GET")
    assert len(polls) == 2 * (POLLS + 1)  # Pending x POLLS, then Ready, for each task
    assert all(req.headers["x-key"] == KEYS["bfl"] for req in polls)
    downloads = sent(r"/delivery/task-\d+\.png", "GET")
    assert len(downloads) == 2 and all("x-key" not in req.headers for req in downloads)
    assert sorted(images) == sorted(fake.served[-2:])


def test_bfl_kontext_edit(env: Env) -> None:
    fake = env.fakes.bfl
    sent = Since(fake)
    job = upload(
        env,
        "edits",
        {"model": "bfl/flux-kontext-pro", "prompt": "make it autumn", "aspect_ratio": "4:3"},
    )
    images = completed(job, "bfl", "flux-kontext-pro")
    (req,) = sent("/v1/flux-kontext-pro", "POST")
    assert req.headers["x-key"] == KEYS["bfl"]
    assert req.json() == {
        "prompt": "make it autumn",
        "aspect_ratio": "4:3",
        "input_image": b64(IMAGE),
    }
    assert len(sent("/v1/get_result", "GET")) == POLLS + 1
    assert images == fake.served[-1:]


# --- operations a provider lacks ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "model", "fake_name"),
    [
        ("variations", "azure/gpt-image-2.6-sunburst", "azure"),
        ("variations", "gemini/gemini-3.1-flash-image", "gemini"),
        ("variations", "vertex/imagen-4.0-generate-001", "vertex"),
        ("edits", "xai/grok-imagine-image-2.0", "xai"),
        ("variations", "xai/grok-imagine-image-2.0", "xai"),
        ("variations", "huggingface/hf-inference/org/model", "huggingface"),
        ("edits", "nebius/black-forest-labs/flux-schnell", "nebius"),
        ("variations", "replicate/black-forest-labs/flux-schnell", "replicate"),
        ("variations", "stability/core", "stability"),
        ("variations", "bfl/flux-pro-1.1", "bfl"),
    ],
)
def test_unsupported_operation_fails_the_job_with_400(
    env: Env, kind: str, model: str, fake_name: str
) -> None:
    fake = getattr(env.fakes, fake_name)
    sent = Since(fake)
    fields = {"model": model} if kind == "variations" else {"model": model, "prompt": "x"}
    job = upload(env, kind, fields)
    err = failed(job, 400, "unsupported_operation")
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith(f"provider {model.split('/')[0]} does not support")
    assert job["error"]["extra_fields"]["provider"] == model.split("/")[0]
    assert sent() == []  # nothing was sent upstream


# --- retries and fallbacks ------------------------------------------------------------------------


def test_openai_429_with_retry_after_then_success(env: Env) -> None:
    fake = env.fakes.openai
    sent = Since(fake)
    fake.fail_next(
        openai_error(
            429, "Rate limit reached", type="rate_limit_error", headers={"Retry-After": "2"}
        )
    )
    job = generate(env, {"model": "openai/gpt-image-2.6-sunburst", "prompt": "patience"})
    images = completed(job, "openai", "gpt-image-2.6-sunburst")
    assert len(sent("/v1/images/generations")) == 2
    # waited for Retry-After (2 s), longer than the first backoff could be (<= 1 s)
    assert job["result"]["extra_fields"]["latency"] >= 1950
    assert images == fake.served[-1:]


def test_gemini_429_retry_info_delay_then_success(env: Env) -> None:
    """Google says when to retry in the body (`RetryInfo.retryDelay`), not a header."""
    fake = env.fakes.gemini
    sent = Since(fake)
    fake.fail_next(google_error(429, "Quota exceeded", "RESOURCE_EXHAUSTED", retry_delay="2s"))
    job = generate(env, {"model": "gemini/gemini-3.1-flash-image", "prompt": "patience"})
    images = completed(job, "gemini", "gemini-3.1-flash-image")
    assert len(sent(r"/v1beta/models/gemini-3\.1-flash-image:generateContent")) == 2
    assert job["result"]["extra_fields"]["latency"] >= 1950  # the retryDelay, not the backoff
    assert images == fake.served[-1:]


def test_fallback_after_retried_5xx_names_the_provider_that_served(env: Env) -> None:
    primary, backup = env.fakes.compatible, env.fakes.stability
    sent_primary, sent_backup = Since(primary), Since(backup)
    primary.fail_next(
        openai_error(500, "The server had an error", type="server_error"),
        openai_error(503, "Overloaded", type="server_error"),
    )
    job = generate(
        env,
        {
            "model": "openai-compatible/local-sdxl",
            "prompt": "a bridge",
            "fallbacks": ["stability/core"],
        },
    )
    images = completed(job, "stability", "core", requested="local-sdxl")
    assert len(sent_primary("/v1/images/generations")) == 2  # max_retries = 1
    assert len(sent_backup("/v2beta/stable-image/generate/core")) == 1
    assert images == backup.served[-1:]


def test_fallback_after_a_4xx_through_several_candidates(env: Env) -> None:
    nebius, gemini = env.fakes.nebius, env.fakes.gemini
    sent_nebius, sent_gemini = Since(nebius), Since(gemini)
    nebius.fail_next(FakeResponse(400, {"detail": "model is not available"}))
    gemini.fail_next(google_error(403, "Permission denied", "PERMISSION_DENIED"))
    job = generate(
        env,
        {
            "model": "nebius/black-forest-labs/flux-dev",
            "prompt": "a tower",
            "fallbacks": ["gemini/gemini-3.1-flash-image", "mock/fallback-1"],
        },
    )
    completed(job, "mock", "fallback-1", requested="black-forest-labs/flux-dev")
    assert len(sent_nebius()) == 1 and len(sent_gemini()) == 1  # 4xx: no retries


def test_all_candidates_failing_reports_the_last_error(env: Env) -> None:
    fake = env.fakes.xai
    fake.fail_next(FakeResponse(400, {"code": "bad", "error": "Prompt rejected"}))
    job = generate(
        env,
        {
            "model": "xai/grok-imagine-image-2.0",
            "prompt": "x",
            "fallbacks": ["mock/m"],
            "mock_fail_status": 422,
        },
    )
    failed(job, 422, "mock_failure")  # the last candidate's error, not the first
    extra = job["error"]["extra_fields"]
    assert (extra["provider"], extra["model_requested"]) == ("mock", "m")  # and its name


# --- secrets -----------------------------------------------------------------------------------


def test_echoed_key_is_scrubbed_from_the_job_error(env: Env) -> None:
    fake = env.fakes.openai
    fake.fail_next(
        openai_error(401, f"Incorrect API key provided: {KEYS['openai']}.", code="invalid_api_key")
    )
    job = generate(env, {"model": "openai/gpt-image-2.6-sunburst", "prompt": "x"})
    err = failed(job, 401, "invalid_api_key")
    assert KEYS["openai"] not in json.dumps(job)
    assert err["message"].startswith("Incorrect API key provided: ")
    assert "redacted" in err["message"]


def test_no_secret_in_any_job_body_or_process_log(env: Env) -> None:
    secrets = [
        *KEYS.values(),
        bedrock_fake.ACCESS_KEY,
        bedrock_fake.SECRET_KEY,
        bedrock_fake.SESSION_TOKEN,
        *env.fakes.vertex.issued,  # OAuth access tokens are secrets too
    ]
    # run on its own (-k), this module's other jobs have not run: make sure some did
    completed(generate(env, {"model": "bedrock/" + NOVA, "prompt": "x"}), "bedrock", NOVA)
    logs = {name: env.stack.log(name) for name in env.stack.procs}
    assert any(logs.values())
    for secret in secrets:
        for text in SEEN:
            assert secret not in text
        for name, text in logs.items():
            assert secret not in text, f"a secret appears in the {name} log"
