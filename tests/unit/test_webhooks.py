"""Webhook parts in isolation: the `[[webhooks]]` settings, Standard Webhooks signatures
(verified with the `standardwebhooks` library), the retry schedule, the payload, and the
signed POST through the SSRF guard on an httpx mock transport that fails the test if a
refused target is ever sent to."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from imagejobs.config import Settings
from imagejobs.domain.errors import ConfigError
from imagejobs.domain.jobs import (
    Job,
    ObjectRef,
    ResultImage,
    StoredError,
    StoredRequest,
    StoredResult,
)
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.safefetch import IPAddress
from imagejobs.store.clock import FakeClock
from imagejobs.store.memory import MemoryObjects
from imagejobs.webhooks.delivery import AttemptResult, DeliveryRecord, DeliveryStatus, Outcome
from imagejobs.webhooks.endpoints import MAX_BACKOFF_S, Endpoint, Event, WebhookSettings
from imagejobs.webhooks.payload import build_body
from imagejobs.webhooks.sender import USER_AGENT, HttpSender
from imagejobs.webhooks.signing import new_secret, parse_secret
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

NEW, OLD = new_secret(), new_secret()


def hook(**changes: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "name": "orders",
        "url": "https://hooks.example.com/in",
        "secret_env": "ORDERS_SECRET",
        **changes,
    }
    return WebhookSettings.model_validate(values)


def done_job(*, ttl_s: int = 600, b64_size: int = 10, fmt: str = "b64_json") -> Job:
    now = time.time()
    job = Job(
        id="5b7c2c7e-1f0e-4a55-9d8e-0d5c8a1e9f00",
        kind=Kind.GENERATION,
        request_id="req-9",
        owner="alice",
        webhook="orders",
        created_at=now - 5,
        ttl_s=ttl_s,
        request=StoredRequest(
            model=ModelRef.parse("mock/m"), prompt="p", params={"response_format": fmt}
        ),
    ).claim("w", now - 4)
    ref = ObjectRef(object_id="obj-1", content_type="image/png", size=b64_size)
    result = StoredResult(
        created=int(now),
        images=(ResultImage(ref=ref),),
        provider="mock",
        model="m",
        latency_ms=3,
    )
    return job.complete(result, now - 1)


# --- settings ----------------------------------------------------------------------------


def test_the_issue_keys_are_read_exactly_and_bad_endpoints_refused() -> None:
    full = hook(
        previous_secret_env="OLD",
        events=["async_job.completed", "async_job.cancelled"],
        headers={"X-Tenant": "t1"},
        include_response=True,
        max_response_payload_kbs=64,
        allow_private_network=False,
        disabled=False,
        max_retries=2,
        initial_backoff_s=0.5,
        timeout_s=3,
    )
    assert full.events == (Event.COMPLETED, Event.CANCELLED)
    bad: dict[str, Any]
    for bad in (
        {"url": "http://hooks.example.com/in"},  # https unless allow_private_network
        {"url": "ftp://hooks.example.com/in"},
        {"name": "has space"},
        {"headers": {"webhook-signature": "forged"}},
        {"headers": {"Content-Type": "text/plain"}},
        {"events": ["async_job.started"]},
        {"events": []},
        {"unknown_key": 1},
        {"max_response_payload_kbs": 4096},
    ):
        with pytest.raises(ValidationError):
            hook(**bad)
    assert hook(url="http://127.0.0.1:9/in", allow_private_network=True).url.startswith("http:")
    with pytest.raises(ValidationError, match="two"):
        Settings(webhooks=(hook(), hook()))


def test_secrets_come_from_the_environment_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        webhooks=(hook(previous_secret_env="ORDERS_OLD"), hook(name="off", disabled=True))
    )
    with pytest.raises(ConfigError, match="ORDERS_SECRET is not set"):
        settings.webhook_endpoints()
    monkeypatch.setenv("ORDERS_SECRET", NEW)
    monkeypatch.setenv("ORDERS_OLD", "not-a-secret")
    with pytest.raises(ConfigError, match="ORDERS_OLD is not a webhook secret") as info:
        settings.webhook_endpoints()
    assert "not-a-secret" not in str(info.value)
    monkeypatch.setenv("ORDERS_OLD", OLD)
    endpoints = settings.webhook_endpoints()
    assert list(endpoints) == ["orders"]  # a disabled endpoint needs no secret
    assert endpoints["orders"].secrets == (parse_secret(NEW), parse_secret(OLD))


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    settings = hook(initial_backoff_s=30)
    rng = random.Random(1)
    for retry, nominal in ((1, 30), (2, 60), (3, 120), (4, 240)):
        for _ in range(50):
            assert nominal * 0.8 <= settings.backoff_s(retry, rng) <= nominal * 1.2
    assert settings.backoff_s(10, rng) == MAX_BACKOFF_S
    assert settings.retry_window_s() == pytest.approx(450 * 1.2 + 5 * 10)


# --- the state machine -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (301, Outcome.FAILED),
        (400, Outcome.FAILED),
        (404, Outcome.FAILED),
        (408, Outcome.RETRY),
        (410, Outcome.GONE),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (None, Outcome.RETRY),  # timeout or connection error
    ],
)
def test_outcome_classes(status: int | None, outcome: Outcome) -> None:
    assert AttemptResult(status).outcome is outcome
    assert AttemptResult(None, "refused", refused=True).outcome is Outcome.FAILED


def test_retry_after_only_on_429_and_503_and_never_past_the_cap() -> None:
    record = DeliveryRecord.owed(done_job(), Event.COMPLETED, "{}")
    rng = random.Random(3)
    settings = hook(initial_backoff_s=1)
    for status, after, least in ((429, 90.0, 90.0), (503, 9999.0, MAX_BACKOFF_S), (500, 90.0, 0)):
        moved = record.attempted(AttemptResult(status, retry_after_s=after), settings, 0.0, rng)
        assert moved.next_attempt_at is not None
        assert least <= moved.next_attempt_at <= max(least, 1.2)
    gone = record.attempted(AttemptResult(410), settings, 0.0, rng)
    assert gone.status is DeliveryStatus.PENDING and gone.gone and gone.tries == 0


# --- signatures --------------------------------------------------------------------------


def test_signatures_verify_with_the_reference_library_and_rotation_signs_with_both() -> None:
    endpoint = Endpoint(hook(), secrets=(parse_secret(NEW), parse_secret(OLD)))
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    body = json.dumps({"event": "async_job.completed", "data": {"job_id": "j"}})
    record = DeliveryRecord.owed(done_job(), Event.COMPLETED, body)
    result = asyncio.run(_send(endpoint, record, answer, {"hooks.example.com": ["93.184.216.34"]}))
    assert result.outcome is Outcome.DELIVERED
    [request] = seen
    headers = dict(request.headers)
    assert headers["webhook-id"] == record.webhook_id
    assert headers["x-bifrost-event"] == "async_job.completed"
    assert headers["user-agent"] == USER_AGENT and headers["content-type"] == "application/json"
    assert headers["host"] == "hooks.example.com" and request.url.host == "93.184.216.34"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (NEW, OLD):
        assert Webhook(secret).verify(request.content, headers) == json.loads(body)
        # each signature verifies alone, with its own secret
        single = [
            s for s in headers["webhook-signature"].split(" ") if _verifies(secret, request, s)
        ]
        assert len(single) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(request.content, headers)


def _verifies(secret: str, request: httpx.Request, signature: str) -> bool:
    headers = {**dict(request.headers), "webhook-signature": signature}
    try:
        Webhook(secret).verify(request.content, headers)
    except WebhookVerificationError:
        return False
    return True


# --- the guarded POST --------------------------------------------------------------------


async def _send(
    endpoint: Endpoint,
    record: DeliveryRecord,
    answer: Any,
    dns: dict[str, list[str]] | None = None,
) -> AttemptResult:
    async def resolver(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address(a) for a in (dns or {})[host]]

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        return await HttpSender(http, resolver).send(endpoint, record, int(time.time()))


def never_sent(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a refused target was sent to: {request.url}")


@pytest.mark.parametrize(
    ("url", "dns", "why"),
    [
        ("https://127.0.0.1:8443/in", None, "a loopback address"),
        ("https://10.1.2.3/in", None, "a private address"),
        ("https://169.254.169.254/latest", None, "the cloud metadata address"),
        ("https://[::1]/in", None, "a loopback address"),
        (
            "https://rebind.example/in",
            {"rebind.example": ["93.184.216.34", "192.168.1.9"]},
            "private",
        ),
        ("https://meta.example/in", {"meta.example": ["169.254.169.254"]}, "metadata"),
    ],
)
async def test_private_loopback_and_metadata_targets_are_refused_before_sending(
    url: str, dns: dict[str, list[str]] | None, why: str
) -> None:
    endpoint = Endpoint(hook(url=url), secrets=(parse_secret(NEW),))
    record = DeliveryRecord.owed(done_job(), Event.COMPLETED, "{}")
    result = await _send(endpoint, record, never_sent, dns)
    assert result.refused and result.outcome is Outcome.FAILED and result.status_code is None
    assert why in result.error and result.error.startswith("webhook URL host")


async def test_allow_private_network_delivers_to_loopback_over_http() -> None:
    endpoint = Endpoint(
        hook(url="http://127.0.0.1:9/in", allow_private_network=True), secrets=(parse_secret(NEW),)
    )
    record = DeliveryRecord.owed(done_job(), Event.COMPLETED, "{}")
    result = await _send(endpoint, record, lambda r: httpx.Response(200))
    assert result.outcome is Outcome.DELIVERED


async def test_a_redirect_is_never_followed() -> None:
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(307, headers={"location": "https://elsewhere.example/x"})

    endpoint = Endpoint(hook(), secrets=(parse_secret(NEW),))
    record = DeliveryRecord.owed(done_job(), Event.COMPLETED, "{}")
    result = await _send(endpoint, record, answer, {"hooks.example.com": ["93.184.216.34"]})
    assert result.status_code == 307 and result.outcome is Outcome.FAILED and len(calls) == 1


async def test_a_slow_receiver_times_out_and_a_dead_one_is_a_connection_error() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    def dead(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    dns = {"hooks.example.com": ["93.184.216.34"]}
    endpoint = Endpoint(hook(timeout_s=0.2), secrets=(parse_secret(NEW),))
    record = DeliveryRecord.owed(done_job(), Event.COMPLETED, "{}")
    timed_out = await _send(endpoint, record, slow, dns)
    assert timed_out.outcome is Outcome.RETRY and "0.2 s" in timed_out.error
    unreachable = await _send(endpoint, record, dead, dns)
    assert unreachable.outcome is Outcome.RETRY and not unreachable.refused


# --- the payload -------------------------------------------------------------------------


async def test_the_payload_inlines_a_small_response_and_omits_a_large_one() -> None:
    clock = FakeClock(start=time.time())
    objects = MemoryObjects(clock)
    await objects.put("obj-1", b"\x89PNG" * 4, "image/png", 600)
    settings = hook(include_response=True, max_response_payload_kbs=1)
    small = json.loads(
        await build_body(done_job(), Event.COMPLETED, settings, objects, "https://gw", clock.time())
    )
    data = small["data"]
    assert data["response"]["data"][0]["b64_json"] and data["response_omitted"] is False
    assert data["result_expires_at"].endswith("Z") and data["completed_at"].endswith("Z")
    large = done_job(b64_size=5000)  # measured from its size: never read
    body = json.loads(
        await build_body(
            large, Event.COMPLETED, settings, MemoryObjects(clock), "https://gw", clock.time()
        )
    )
    assert "response" not in body["data"] and body["data"]["response_omitted"] is True
    expired = json.loads(
        await build_body(
            done_job(ttl_s=1), Event.COMPLETED, settings, objects, "https://gw", clock.time() + 10
        )
    )
    assert expired["data"]["result_expired"] is True and "response" not in expired["data"]


async def test_a_failed_jobs_error_is_inlined_in_the_contracts_shape() -> None:
    job = done_job()
    failed = job.model_copy(
        update={
            "status": job.status.FAILED,
            "result": None,
            "status_code": 422,
            "error": StoredError(
                status_code=422, type="invalid_request_error", message="bad prompt"
            ),
        }
    )
    clock = FakeClock(start=time.time())
    body = json.loads(
        await build_body(
            failed,
            Event.FAILED,
            hook(include_response=True),
            MemoryObjects(clock),
            "https://gw",
            clock.time(),
        )
    )
    error = body["data"]["error"]
    assert body["event"] == "async_job.failed" and body["data"]["status_code"] == 422
    assert error["is_bifrost_error"] is True and error["error"]["message"] == "bad prompt"
    assert body["data"]["error_omitted"] is False
