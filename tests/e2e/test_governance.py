"""Governance with real processes (nats-server, two API processes, a worker, Envoy): what
a job costs (image-priced and token-priced mocks from `[[pricing]]`, the OpenAI and xAI
fakes at the shipped list prices), in the result, the list, the typed result and the
worker's metric; budgets at the edge with both API processes submitting at once; the 402
through REST; settlement to the real cost and release on failure and cancel; the usage
report over REST, gRPC and the command line; and the per-key queue bound."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from imagejobs.client import AsyncClient, BudgetExceeded, Client
from imagejobs.domain.budget import micro, usd
from imagejobs.testing import Samples, Stack, free_port_run, require_binary, scrape, wait_until

from tests.conftest import assert_error_body, submit, wait_terminal
from tests.e2e.test_openapi import validate
from tests.fakes.openai import FakeOpenAI, FakeXAI

pytestmark = pytest.mark.e2e

KEYS = {n: f"sk-bf-{n}-{uuid.uuid4().hex}" for n in ("edge", "settle", "track", "bounded", "busy")}
EDGE_BUDGET, PRICE = 0.10, 0.01  # the edge key affords exactly ten priced images a day
TOKEN_IN, TOKEN_OUT = 1000.0, 2000.0  # mock/tokens-*: USD per million tokens
OPENAI_KEY, XAI_KEY = "sk-gov-openai-0123456789", "xai-gov-key-0123456789"
SLOTS = 4


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def gov(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    with FakeOpenAI(api_key=OPENAI_KEY) as openai, FakeXAI(api_key=XAI_KEY) as xai:
        config: dict[str, Any] = {
            "metrics_port": free_port_run(3),  # 2 APIs, then the worker
            "worker_concurrency": SLOTS,
            "providers": {
                "mock": {},
                "openai": {"base_url": openai.url, "keys": [{"env": "GOV_OPENAI"}]},
                "xai": {"base_url": xai.url, "keys": [{"env": "GOV_XAI"}]},
            },
            "pricing": [
                {"model": "mock/priced-*", "per_image_usd": PRICE},
                {
                    "model": "mock/tokens-*",
                    "input_token_usd_per_1m": TOKEN_IN,
                    "output_token_usd_per_1m": TOKEN_OUT,
                    "per_image_usd": 0.05,
                },
            ],
            "virtual_keys": {
                "edge": {
                    "key_sha256": sha(KEYS["edge"]),
                    "budget_usd": EDGE_BUDGET,
                    "budget_period": "day",
                },
                "settle": {"key_sha256": sha(KEYS["settle"]), "budget_usd": 5.0},
                "track": {"key_sha256": sha(KEYS["track"])},
                "bounded": {"key_sha256": sha(KEYS["bounded"]), "max_queued_jobs": 2},
                "busy": {"key_sha256": sha(KEYS["busy"])},
            },
        }
        env = {"GOV_OPENAI": OPENAI_KEY, "GOV_XAI": XAI_KEY}
        s = Stack(tmp_path_factory.mktemp("governance"), config, apis=2, env=env)
        try:
            s.start()
            yield s
        finally:
            s.stop()


def rest(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, timeout=30, headers={"x-bf-vk": KEYS[key]})


def done(c: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = submit(c, {"prompt": "a b c", "size": "64x64", **body})
    assert r.status_code == 202, r.text
    job: dict[str, Any] = wait_terminal(c, r.json()["id"], timeout_s=60).json()
    return job


def usage(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/v1/async/images/usage")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    validate(doc, "UsageResponse")
    return doc


# --- cost ---------------------------------------------------------------------------------


def test_an_image_priced_job_costs_its_images_everywhere_it_is_shown(gov: Stack) -> None:
    with rest(gov, "track") as c:
        job = done(c, {"model": "mock/priced-a", "n": 2})
        assert job["status"] == "completed"
        assert job["result"]["extra_fields"]["cost_usd"] == 2 * PRICE
        page = c.get("/v1/async/images/jobs").json()["jobs"]
        listed = next(j for j in page if j["id"] == job["id"])
        assert listed["result"]["extra_fields"]["cost_usd"] == 2 * PRICE
    with Client(gov.grpc_gateway, key=KEYS["track"]) as client:
        typed = client.get(job["id"])
        assert typed.result is not None and typed.result.cost_usd == 2 * PRICE


def test_a_token_priced_job_costs_its_reported_usage(gov: Stack) -> None:
    with rest(gov, "track") as c:
        job = done(c, {"model": "mock/tokens-a"})
        usage_ = job["result"]["usage"]
        expected = usage_["input_tokens"] * TOKEN_IN + usage_["output_tokens"] * TOKEN_OUT
        assert usage_["output_tokens"] > 0
        assert job["result"]["extra_fields"]["cost_usd"] == usd(round(expected))


def test_the_openai_and_xai_fakes_cost_the_shipped_list_prices(gov: Stack) -> None:
    with rest(gov, "track") as c:
        openai = done(c, {"model": "openai/gpt-image-2.6-sunburst", "size": "1024x1024"})
        # the fake reports 10 text + 40 image input tokens, 1,056 output: $5 / $8 / $30 per 1M
        assert openai["result"]["extra_fields"]["cost_usd"] == usd(10 * 5 + 40 * 8 + 1056 * 30)
        xai = done(c, {"model": "xai/grok-imagine-image-2.0", "n": 2, "size": None})
        assert xai["result"]["extra_fields"]["cost_usd"] == 0.14  # what xAI reported billing


def test_a_model_without_a_price_has_no_cost_at_all(gov: Stack) -> None:
    with rest(gov, "track") as c:
        job = done(c, {"model": "mock/m"})
        assert job["status"] == "completed"
        assert "cost_usd" not in job["result"]["extra_fields"]


def test_the_worker_counts_cost_by_provider_model_and_key(gov: Stack) -> None:
    with rest(gov, "track") as c:
        done(c, {"model": "mock/priced-metric", "n": 3})
    port = gov.settings.metrics_port + 2  # API 0, API 1, then the worker

    def counted() -> Samples | None:
        samples = scrape(port)
        labels = frozenset({"provider": "mock", "model": "priced-metric", "key": "track"}.items())
        return samples if samples.get(("imagejobs_cost_usd_total", labels)) else None

    samples = wait_until(counted, 10, "the cost metric")
    labels = frozenset({"provider": "mock", "model": "priced-metric", "key": "track"}.items())
    assert samples[("imagejobs_cost_usd_total", labels)] == pytest.approx(3 * PRICE)


# --- budgets --------------------------------------------------------------------------------


async def _race(stack: Stack, submits: int) -> tuple[int, int]:
    """`submits` priced submits of the edge key at once, alternating between the two API
    processes (directly, so both really race): (accepted, refused with 402)."""
    clients = [AsyncClient(f"127.0.0.1:{p}", key=KEYS["edge"]) for p in stack.api_ports]

    async def one(i: int) -> bool:
        try:
            await clients[i % 2].submit(
                "generations", "mock/priced-edge", "p", params={"size": "8x8"}
            )
        except BudgetExceeded:
            return False
        return True

    try:
        outcomes = await asyncio.gather(*(one(i) for i in range(submits)))
    finally:
        for client in clients:
            await client.close()
    return sum(outcomes), sum(not o for o in outcomes)


def test_two_api_processes_racing_at_the_budget_admit_exactly_what_it_affords(
    gov: Stack,
) -> None:
    accepted, refused = asyncio.run(_race(gov, 30))
    assert (accepted, refused) == (10, 20)
    with rest(gov, "edge") as c:
        r = submit(c, {"model": "mock/priced-edge", "prompt": "p"})
        body = assert_error_body(r, 402)
        assert (body["type"], body["error"]["code"]) == ("budget_exceeded", "budget_exceeded")
        assert "per day" in body["error"]["message"] and "resets at" in body["error"]["message"]

        def settled() -> dict[str, Any] | None:
            doc = usage(c)
            return doc if doc["reserved_usd"] == 0 else None

        doc = wait_until(settled, 30, "the edge key's jobs to settle")
        assert (doc["spent_usd"], doc["remaining_usd"], doc["budget_usd"]) == (0.1, 0.0, 0.1)
        assert doc["period"] == "day" and doc["resets_at"].endswith("T00:00:00.000Z")


def test_completion_settles_the_real_cost_and_failure_and_cancel_release(gov: Stack) -> None:
    with rest(gov, "settle") as c:
        before = usage(c)["spent_usd"]
        job = done(c, {"model": "mock/tokens-settle"})  # reserves $0.05, costs far less
        cost = job["result"]["extra_fields"]["cost_usd"]
        assert 0 < cost < 0.05
        after = usage(c)
        assert after["spent_usd"] == usd(micro(before) + micro(cost))
        assert after["reserved_usd"] == 0
        failed = done(c, {"model": "mock/tokens-settle", "mock_fail_status": 400})
        assert failed["status"] == "failed"
        r = submit(c, {"model": "mock/tokens-settle", "prompt": "p", "mock_latency_ms": 30_000})
        assert usage(c)["reserved_usd"] == 0.05
        c.delete(f"/v1/async/images/generations/{r.json()['id']}")
        final = usage(c)
        assert (final["spent_usd"], final["reserved_usd"]) == (after["spent_usd"], 0)
        assert final["remaining_usd"] == usd(micro(5.0) - micro(final["spent_usd"]))


def test_usage_over_grpc_and_the_command_line_match_rest(gov: Stack) -> None:
    with rest(gov, "settle") as c:
        doc = usage(c)
    with Client(gov.grpc_gateway, key=KEYS["settle"]) as client:
        typed = client.usage()
    assert typed.to_dict() == doc
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEJOBS_")}
    env |= {"IMAGEJOBS_SERVER": gov.grpc_gateway, "IMAGEJOBS_KEY": KEYS["settle"]}
    cli = [sys.executable, "-m", "imagejobs", "usage"]
    out = subprocess.run([*cli, "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == doc
    text = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=60)
    assert text.returncode == 0 and "remaining $" in text.stdout and "month" in text.stdout
    with httpx.Client(base_url=gov.url, timeout=30) as anonymous:
        assert_error_body(anonymous.get("/v1/async/images/usage"), 401)


# --- the per-key queue bound ----------------------------------------------------------------


def test_a_key_past_max_queued_jobs_is_429_for_that_key_only(gov: Stack) -> None:
    blockers: list[str] = []
    with rest(gov, "busy") as busy, rest(gov, "bounded") as bounded:
        try:
            for _ in range(SLOTS):  # every worker slot taken by another key's long jobs
                r = submit(busy, {"model": "mock/m", "prompt": "p", "mock_latency_ms": 30_000})
                blockers.append(r.json()["id"])
            wait_until(lambda: usage(busy)["queued_jobs"] == 0, 20, "the blockers to run")
            waiting = [
                submit(bounded, {"model": "mock/m", "prompt": "p"}).json()["id"] for _ in range(2)
            ]
            blockers += waiting
            assert usage(bounded)["queued_jobs"] == 2
            r = submit(bounded, {"model": "mock/m", "prompt": "p"})
            body = assert_error_body(r, 429)
            assert body["error"]["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
            other = submit(busy, {"model": "mock/m", "prompt": "p"})  # another key: accepted
            assert other.status_code == 202, other.text
            blockers.append(other.json()["id"])
        finally:
            for job_id in blockers:
                busy.delete(f"/v1/async/images/generations/{job_id}")
                bounded.delete(f"/v1/async/images/generations/{job_id}")
