"""The Hugging Face adapter maps a Hub repo to the inference provider's own model id as the
official clients do: one Hub lookup (`inferenceProviderMapping`), kept for a TTL and
shared by concurrent jobs, a `model_map` that needs no Hub, and clear errors. Against a
fake router and a fake Hub that record what they got."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from imagejobs.config import load_settings
from imagejobs.domain.errors import ConfigError
from imagejobs.domain.kinds import Kind
from imagejobs.providers import huggingface
from imagejobs.providers.base import (
    ImageInput,
    ProviderConfig,
    ProviderError,
    ProviderRequest,
    WeightedKey,
)
from imagejobs.providers.hf_mapping import ProviderMapping, parse_mappings

from tests.fakes.clock import FakeClock
from tests.fakes.gemini import png_bytes
from tests.fakes.huggingface import FLUX_SCHNELL, FakeHuggingFace
from tests.fakes.upstream import FakeResponse

TOKEN = "hf_mapping_test_token"
TOGETHER_ID = "black-forest-labs/FLUX.1-schnell-Free"  # the fake Hub's mapping


def gen(model: str, **params: Any) -> ProviderRequest:
    return ProviderRequest(kind=Kind.GENERATION, model=model, prompt="a dune", params=params)


@pytest.fixture
def fake() -> Iterator[FakeHuggingFace]:
    with FakeHuggingFace(token=TOKEN) as f:
        yield f


def provider_for(
    fake: FakeHuggingFace,
    http: httpx.AsyncClient,
    *,
    clock: FakeClock | None = None,
    ttl_s: float = 0.0,
    model_map: dict[str, str] | None = None,
) -> huggingface.HuggingFaceProvider:
    config = ProviderConfig(
        name="huggingface",
        base_url=fake.url,
        hub_url=fake.hub_url,
        keys=(WeightedKey(TOKEN),),
        timeout_s=5.0,
        hub_cache_ttl_s=ttl_s,
        model_map=model_map or {},
    )
    return huggingface.HuggingFaceProvider(config, http, clock=clock or FakeClock())


async def test_the_hub_is_asked_as_the_official_client_asks(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    await provider_for(fake, http).run(gen(f"together/{FLUX_SCHNELL}"))

    [lookup] = fake.hub_requests
    assert (lookup.method, lookup.path) == ("GET", f"/api/models/{FLUX_SCHNELL}")
    assert lookup.query == {"expand[]": ["inferenceProviderMapping"]}
    assert lookup.headers["authorization"] == f"Bearer {TOKEN}"
    assert lookup.headers["accept"] == "application/json"
    [sent] = fake.requests
    assert sent.path == "/together/v1/images/generations"
    assert sent.json()["model"] == TOGETHER_ID  # the provider's id, not the repo id
    assert sent.headers["accept"] == "application/json"


async def test_a_mapping_is_looked_up_once_then_again_after_its_ttl(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    provider = provider_for(fake, http, clock=clock, ttl_s=600)
    for _ in range(2):
        await provider.run(gen(f"together/{FLUX_SCHNELL}"))
    assert len(fake.hub_requests) == 1  # the second job was a cache hit
    assert len(fake.requests) == 2

    await clock.sleep(601)
    await provider.run(gen(f"together/{FLUX_SCHNELL}"))
    assert len(fake.hub_requests) == 2  # expired: asked again


async def test_concurrent_jobs_share_one_lookup(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    provider = provider_for(fake, http)
    await asyncio.gather(*(provider.run(gen(f"together/{FLUX_SCHNELL}")) for _ in range(4)))
    assert len(fake.hub_requests) == 1
    assert [r.json()["model"] for r in fake.requests] == [TOGETHER_ID] * 4


async def test_model_map_needs_no_hub(fake: FakeHuggingFace, http: httpx.AsyncClient) -> None:
    model_map = {"together/acme/private-flux": "acme/flux-on-together"}
    await provider_for(fake, http, model_map=model_map).run(gen("together/acme/private-flux"))
    assert fake.hub_requests == []
    assert fake.requests[0].json()["model"] == "acme/flux-on-together"


async def test_hf_inference_sends_the_repo_id_without_a_lookup(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    await provider_for(fake, http).run(gen(f"hf-inference/{FLUX_SCHNELL}"))
    assert fake.hub_requests == []
    assert fake.requests[0].path == f"/hf-inference/models/{FLUX_SCHNELL}"


async def test_a_repo_the_hub_maps_to_other_providers_is_a_400_naming_them(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    fake.mappings["acme/only-fal"] = {
        "fal-ai": {"providerId": "fal-ai/acme", "status": "live", "task": "text-to-image"}
    }
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http).run(gen("together/acme/only-fal"))
    err = info.value
    assert (err.status_code, err.code, err.param) == (400, "model_not_mapped", "model")
    assert not err.retryable
    assert "acme/only-fal" in err.message and "together" in err.message
    assert "fal-ai" in err.message and "model_map" in err.message
    assert fake.requests == []  # nothing reached the router


async def test_a_mapping_for_another_task_is_a_400(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    fake.mappings["acme/chat"] = {
        "together": {"providerId": "acme/chat", "status": "live", "task": "conversational"}
    }
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http).run(gen("together/acme/chat"))
    assert (info.value.status_code, info.value.code) == (400, "model_not_mapped")
    assert "conversational" in info.value.message and "text-to-image" in info.value.message


async def test_a_repo_the_hub_does_not_know_is_a_400(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderError) as info:
        await provider_for(fake, http).run(gen("together/nobody/nothing"))
    err = info.value
    assert (err.status_code, err.code) == (400, "model_not_found")
    assert "nobody/nothing" in err.message and "Repository not found" in err.message
    assert fake.requests == []


async def test_a_hub_outage_is_retryable_and_not_cached(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    provider = provider_for(fake, http, ttl_s=600)
    fake.hub.fail_next(FakeResponse(503, {"error": "Service Unavailable"}))
    with pytest.raises(ProviderError) as info:
        await provider.run(gen(f"together/{FLUX_SCHNELL}"))
    assert info.value.retryable and info.value.status_code == 503
    await provider.run(gen(f"together/{FLUX_SCHNELL}"))  # the next job asks again
    assert len(fake.hub_requests) == 2
    assert fake.requests[0].json()["model"] == TOGETHER_ID


async def test_an_hf_inference_edit_still_needs_no_lookup(
    fake: FakeHuggingFace, http: httpx.AsyncClient
) -> None:
    request = ProviderRequest(
        kind=Kind.EDIT,
        model="hf-inference/timbrooks/instruct-pix2pix",
        prompt="make it winter",
        images=(ImageInput(png_bytes(3)),),
    )
    await provider_for(fake, http).run(request)
    assert fake.hub_requests == []
    assert fake.requests[0].headers["accept"] == "*/*"  # it answers image bytes, not JSON


def test_both_shapes_of_the_mapping_are_read() -> None:
    entry = {"providerId": "t/x", "status": "live", "task": "text-to-image"}
    as_object = parse_mappings({"inferenceProviderMapping": {"together": entry}})
    as_list = parse_mappings({"inferenceProviderMapping": [{**entry, "provider": "together"}]})
    expected = (ProviderMapping("together", "t/x", "text-to-image", "live"),)
    assert as_object == as_list == expected
    assert parse_mappings({"id": "x"}) is None  # no mapping at all
    assert parse_mappings({"inferenceProviderMapping": [{"provider": "p"}]}) == ()  # no id


def test_the_settings_take_the_mapping_options_for_huggingface_only(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[providers.huggingface]\nhub_url = "http://hub.internal"\nhub_cache_ttl_s = 60\n'
        '[providers.huggingface.model_map]\n"together/acme/x" = "acme/x-together"\n'
    )
    hf = load_settings(cfg).provider_config("huggingface")
    assert hf is not None
    assert (hf.hub_url, hf.hub_cache_ttl_s) == ("http://hub.internal", 60)
    assert hf.model_map == {"together/acme/x": "acme/x-together"}
    unused = cast(httpx.AsyncClient, None)  # nothing is sent
    defaults = huggingface.build(ProviderConfig(name="huggingface"), unused)
    assert defaults._config.hub_url == "https://huggingface.co"  # the vendor's defaults
    assert defaults._config.hub_cache_ttl_s == 3600
    cfg.write_text('[providers.openai.model_map]\n"a" = "b"\n')
    with pytest.raises(ConfigError, match="provider openai takes no model_map"):
        load_settings(cfg)
