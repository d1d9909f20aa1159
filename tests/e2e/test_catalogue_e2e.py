"""The model catalogue through real processes (nats-server, API, worker, Envoy): a retired
model, primary or fallback, is a 400 before anything is kept; a deprecated one runs with
the warning (logged once per model by the API); Hugging Face ids are mapped through a
fake Hub, cached, and overridden by `model_map`; the listing matches the configured
providers. The config extends the shipped catalogue (`[[catalogue.mock]]`)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from grpc_status import rpc_status
from imagejobs.testing import Stack, require_binary
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

from tests.conftest import assert_error_body, submit, wait_terminal
from tests.fakes.gemini import FakeGemini
from tests.fakes.huggingface import FakeHuggingFace

pytestmark = pytest.mark.e2e

GEMINI_KEY = "AIzaE2E-catalogue-0123456789"
HF_TOKEN = "hf_e2eCatalogueToken0123456789"
VINTAGE_REASON = "our vintage renderer is being turned off"
OFFLINE_REPO = "acme/offline-flux"  # mapped by model_map: never asked of the Hub
OFFLINE_ID = "acme/flux-on-together-offline"


@dataclass
class Env:
    stack: Stack
    gemini: FakeGemini
    hf: FakeHuggingFace
    api: httpx.Client


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    root = tmp_path_factory.mktemp("catalogue-e2e")
    with contextlib.ExitStack() as fakes:
        gemini = fakes.enter_context(FakeGemini(api_key=GEMINI_KEY))
        hf = fakes.enter_context(FakeHuggingFace(token=HF_TOKEN))
        config: dict[str, Any] = {
            "providers": {
                "mock": {},
                "gemini": {"base_url": gemini.url, "keys": [{"env": "E2E_GEMINI_KEY"}]},
                "huggingface": {
                    "base_url": hf.url,
                    "hub_url": hf.hub_url,
                    "hub_cache_ttl_s": 3600.0,
                    "keys": [{"env": "E2E_HF_TOKEN"}],
                    "model_map": {f"together/{OFFLINE_REPO}": OFFLINE_ID},
                    "max_retries": 0,
                },
            },
            "catalogue": {
                "mock": [
                    {
                        "pattern": "vintage-*",
                        "status": "deprecated",
                        "sunset": "2099-01-01",
                        "replacement": "mock/image-1",
                        "reason": VINTAGE_REASON,
                        "operations": ["generation"],
                        "source": "this test",
                    },
                    {
                        "pattern": "gone-*",
                        "status": "retired",
                        "replacement": "mock/image-1",
                        "reason": "turned off",
                        "source": "this test",
                    },
                ]
            },
        }
        secrets = {"E2E_GEMINI_KEY": GEMINI_KEY, "E2E_HF_TOKEN": HF_TOKEN}
        stack = Stack(root / "stack", config, env=secrets)
        try:
            stack.start()
            with httpx.Client(base_url=stack.url, timeout=30, trust_env=False) as api:
                yield Env(stack=stack, gemini=gemini, hf=hf, api=api)
        finally:
            stack.stop()


def scoped(env: Env) -> httpx.Client:
    """A client with a key of its own (open mode), so that its job list is its own."""
    return httpx.Client(
        base_url=env.stack.url,
        timeout=30,
        trust_env=False,
        headers={"x-bf-vk": f"sk-bf-catalogue-{uuid.uuid4().hex}"},
    )


# --- retired: refused before anything is kept ------------------------------------------------


def test_a_retired_model_or_fallback_is_400_and_nothing_is_kept(env: Env) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    retired_primary = {"model": "gemini/imagen-4.0-generate-001", "prompt": "a castle"}
    retired_fallback = {
        "model": "mock/m",
        "prompt": "a castle",
        "fallbacks": ["mock/m2", "huggingface/nebius/black-forest-labs/FLUX.1-schnell"],
    }
    with scoped(env) as c:
        err = assert_error_body(submit(c, retired_primary, **key), 400)
        assert (err["error"]["code"], err["error"]["param"]) == ("model_retired", "model")
        assert "use gemini/gemini-3.1-flash-image instead" in err["error"]["message"]
        assert err["extra_fields"]["model_requested"] == "imagen-4.0-generate-001"

        err = assert_error_body(submit(c, retired_fallback, **key), 400)
        assert (err["error"]["code"], err["error"]["param"]) == ("model_retired", "fallbacks")
        assert (
            "use huggingface/together/black-forest-labs/FLUX.1-schnell instead"
            in err["error"]["message"]
        )

        # nothing was kept: no job, the Idempotency-Key is still free, no upstream call
        assert c.get("/v1/async/images/jobs").json() == {"jobs": [], "next_page_token": ""}
        fine = submit(c, {"model": "mock/m", "prompt": "a castle"}, **key)
        assert fine.status_code == 202, fine.text
    assert env.gemini.requests == []
    assert env.hf.requests == [] and env.hf.hub_requests == []


def test_a_retired_model_over_grpc_is_invalid_argument_with_the_code(env: Env) -> None:
    with grpc.insecure_channel(env.stack.grpc_gateway) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        request = jobs_pb2.SubmitImageJobRequest(
            kind=jobs_pb2.JOB_KIND_GENERATION,
            request=jobs_pb2.ImageRequest(model="mock/gone-1", prompt="p"),
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitImageJob(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(info.value)
    assert status is not None
    detail = jobs_pb2.ErrorResponse()
    assert status.details[0].Unpack(detail)
    assert detail.error.code == "model_retired"
    assert detail.error.message.endswith("turned off; use mock/image-1 instead")


# --- deprecated: runs, with the warning ------------------------------------------------------


def test_a_deprecated_model_runs_with_the_warning_logged_once(env: Env) -> None:
    jobs = []
    for prompt in ("one", "two"):
        r = submit(env.api, {"model": "mock/vintage-1", "prompt": prompt, "size": "16x16"})
        assert r.status_code == 202, r.text
        jobs.append(wait_terminal(env.api, r.json()["id"]).json())
    for job in jobs:
        assert job["status"] == "completed", job
        [warning] = job["result"]["extra_fields"]["warnings"]
        assert warning == (
            f"model mock/vintage-1 is deprecated (retired on 2099-01-01): {VINTAGE_REASON};"
            " use mock/image-1 instead"
        )
    api_log = env.stack.log(f"api-{env.stack.api_ports[0]}")
    assert api_log.count("deprecated model: model mock/vintage-1") == 1
    # gRPC clients see the same warning in the typed result
    with grpc.insecure_channel(env.stack.grpc_gateway) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        typed = stub.GetJob(jobs_pb2.GetJobRequest(job_id=jobs[0]["id"]))
    assert list(typed.result.extra_fields.warnings) == [
        jobs[0]["result"]["extra_fields"]["warnings"][0]
    ]


def test_a_current_model_carries_no_warning(env: Env) -> None:
    r = submit(env.api, {"model": "mock/image-1", "prompt": "p", "size": "16x16"})
    job = wait_terminal(env.api, r.json()["id"]).json()
    assert "warnings" not in job["result"]["extra_fields"]


# --- Hugging Face: the Hub's mapping, cached, and the override -------------------------------


def hf_job(env: Env, model: str) -> dict[str, Any]:
    r = submit(env.api, {"model": f"huggingface/{model}", "prompt": "a dune"})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = wait_terminal(env.api, r.json()["id"]).json()
    return body


def test_hugging_face_ids_come_from_the_hub_once(env: Env) -> None:
    repo = f"acme/flux-{uuid.uuid4().hex[:8]}"
    env.hf.mappings[repo] = {
        "together": {"providerId": f"{repo}-together", "status": "live", "task": "text-to-image"}
    }
    hub_before, router_before = len(env.hf.hub_requests), len(env.hf.requests)
    for _ in range(2):
        job = hf_job(env, f"together/{repo}")
        assert job["status"] == "completed", job
    lookups = [r for r in env.hf.hub_requests[hub_before:] if r.path == f"/api/models/{repo}"]
    assert len(lookups) == 1  # the second job was a cache hit in the worker
    assert lookups[0].query == {"expand[]": ["inferenceProviderMapping"]}
    assert lookups[0].headers["authorization"] == f"Bearer {HF_TOKEN}"
    sent = env.hf.requests[router_before:]
    assert [r.json()["model"] for r in sent] == [f"{repo}-together"] * 2


def test_model_map_overrides_the_hub(env: Env) -> None:
    hub_before, router_before = len(env.hf.hub_requests), len(env.hf.requests)
    job = hf_job(env, f"together/{OFFLINE_REPO}")
    assert job["status"] == "completed", job
    assert env.hf.hub_requests[hub_before:] == []
    assert env.hf.requests[router_before].json()["model"] == OFFLINE_ID


def test_a_repo_the_hub_does_not_map_fails_the_job_with_a_clear_400(env: Env) -> None:
    env.hf.mappings["acme/only-fal"] = {
        "fal-ai": {"providerId": "fal-ai/acme", "status": "live", "task": "text-to-image"}
    }
    job = hf_job(env, "together/acme/only-fal")
    assert job["status"] == "failed" and job["status_code"] == 400, job
    error = job["error"]["error"]
    assert error["code"] == "model_not_mapped"
    assert "acme/only-fal" in error["message"] and "together" in error["message"]


# --- the listing -------------------------------------------------------------------------------


def test_the_listing_matches_the_configured_providers(env: Env) -> None:
    r = env.api.get("/v1/async/images/models")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    listing = r.json()
    assert listing["catalogue_date"] == "2026-12-01"
    assert [p["name"] for p in listing["providers"]] == ["gemini", "huggingface", "mock"]
    mock = listing["providers"][2]["families"]
    assert [f["pattern"] for f in mock[:2]] == ["vintage-*", "gone-*"]  # the config's first
    assert (mock[0]["status"], mock[1]["status"]) == ("deprecated", "retired")
    gemini = {f["pattern"]: f for f in listing["providers"][0]["families"]}
    assert gemini["imagen-*"]["status"] == "retired"
    assert gemini["gemini-3.1-flash-image"]["status"] == "current"
    hf = {f["pattern"]: f for f in listing["providers"][1]["families"]}
    assert hf["nebius/*"]["replacement"] == "huggingface/together/*"

    with grpc.insecure_channel(env.stack.grpc_direct) as channel:
        typed = jobs_pb2_grpc.ImageJobServiceStub(channel).ListModels(jobs_pb2.ListModelsRequest())
    as_json = json_format.MessageToDict(
        typed, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert as_json == json.loads(r.content)  # one listing, two renderings
