"""Webhooks end to end: real nats-server, API, worker, dispatcher and Envoy, and a real
receiver on loopback that verifies every request with the `standardwebhooks` library.

Backoffs are fractional here (`initial_backoff_s` 0.3) so that retries take moments."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from imagejobs.testing import Stack, require_binary, wait_until
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc
from imagejobs.webhooks.signing import new_secret

from tests.conftest import assert_error_body, mock_request
from tests.e2e.test_openapi import validate
from tests.fakes.receiver import Received, WebhookReceiver
from tests.fakes.upstream import FakeResponse

pytestmark = pytest.mark.e2e

SECRET, OLD_SECRET = new_secret(), new_secret()
ALL_EVENTS = ["async_job.completed", "async_job.failed", "async_job.cancelled"]
WAIT_S = 30.0
HEADER = "x-bf-async-webhook"


def endpoint(name: str, url: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": url,
        "secret_env": "HOOK_SECRET",
        "events": ALL_EVENTS,
        "allow_private_network": True,
        "initial_backoff_s": 0.3,
        "max_retries": 3,
        "timeout_s": 2.0,
        **changes,
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    secrets = {name: [SECRET] for name in ("main", "flaky", "slow", "bad", "gone", "big")}
    secrets["rotating"] = [SECRET, OLD_SECRET]
    with WebhookReceiver(secrets) as r:
        yield r


@pytest.fixture(scope="module")
def hooks_stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver
) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    base = receiver.url
    webhooks = [
        endpoint("main", f"{base}/main", include_response=True),
        endpoint("flaky", f"{base}/flaky"),
        endpoint("slow", f"{base}/slow", timeout_s=0.5),
        endpoint("bad", f"{base}/bad"),
        endpoint("gone", f"{base}/gone"),
        endpoint("big", f"{base}/big", include_response=True, max_response_payload_kbs=1),
        endpoint("rotating", f"{base}/rotating", previous_secret_env="HOOK_OLD_SECRET"),
        endpoint("completions", f"{base}/main", events=["async_job.completed"]),
        endpoint("off", f"{base}/main", disabled=True),
        # no allow_private_network: these must be refused, on every attempt
        endpoint(
            "to-loopback", f"https://127.0.0.1:{receiver.port}/main", allow_private_network=False
        ),
        endpoint("to-private", "https://10.255.255.1/in", allow_private_network=False),
        endpoint("to-metadata", "https://169.254.169.254/latest", allow_private_network=False),
    ]
    stack = Stack(
        tmp_path_factory.mktemp("webhooks"),
        {"webhooks": webhooks},
        env={"HOOK_SECRET": SECRET, "HOOK_OLD_SECRET": OLD_SECRET},
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def api(hooks_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hooks_stack.url, timeout=30) as c:
        c.headers["x-bf-vk"] = f"sk-bf-hooks-{uuid.uuid4().hex}"
        yield c


def submit(api: httpx.Client, hook: str, **body: Any) -> str:
    r = api.post(
        "/v1/async/images/generations", json={**mock_request(), **body}, headers={HEADER: hook}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def arrivals(receiver: WebhookReceiver, webhook_id: str, count: int = 1) -> list[Received]:
    def arrived() -> list[Received] | None:
        got = receiver.of(webhook_id)
        return got if len(got) >= count else None

    return wait_until(arrived, WAIT_S, f"{count} deliveries of {webhook_id}")


def deliveries(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    r = api.get(f"/v1/async/images/generations/{job_id}/deliveries")
    assert r.status_code == 200, r.text
    return list(r.json()["deliveries"])


def settled(api: httpx.Client, job_id: str, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = deliveries(api, job_id)
        return found[0] if found and found[0]["status"] == status else None

    return wait_until(check, WAIT_S, f"delivery of {job_id} {status}")


# --- the three events ----------------------------------------------------------------------


def test_completed_failed_and_cancelled_jobs_are_delivered_signed(
    api: httpx.Client, receiver: WebhookReceiver
) -> None:
    completed = submit(api, "main", response_format="url")
    failed = submit(api, "main", mock_fail_status=422)
    cancelled = submit(api, "main", mock_latency_ms=10_000)
    assert api.delete(f"/v1/async/images/generations/{cancelled}").status_code == 200
    for job_id, event, status, code in (
        (completed, "async_job.completed", "completed", 200),
        (failed, "async_job.failed", "failed", 422),
        (cancelled, "async_job.cancelled", "cancelled", 499),
    ):
        [got] = arrivals(receiver, f"{job_id}.{event}")
        assert got.verified_by == (0,)  # signed with the endpoint's secret
        assert got.headers["x-bifrost-event"] == event
        assert got.headers["content-type"] == "application/json"
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
        payload = got.payload()
        validate(payload, "WebhookPayload")  # as openapi/openapi.yaml documents it
        data = payload["data"]
        assert payload["event"] == event and data["job_id"] == job_id
        assert data["status"] == status and data["status_code"] == code
        assert data["request_type"] == "image_generation" and data["request_id"]
        assert data["result_url"].endswith(f"/v1/async/images/generations/{job_id}")
        assert data["result_expires_at"] and data["completed_at"] and data["created_at"]
        assert data["result_expired"] is False
        if status == "completed":
            assert data["response"]["data"][0]["url"].startswith("http")
        else:
            assert data["error"]["status_code"] == code and data["error_omitted"] is False
        record = settled(api, job_id, "delivered")
        validate(record, "WebhookDelivery")
        assert record["webhook_id"] == f"{job_id}.{event}" and record["endpoint"] == "main"
        assert [a["status_code"] for a in record["attempts"]] == [200]


def test_an_unknown_or_disabled_endpoint_is_400_and_an_unsubscribed_event_sends_nothing(
    api: httpx.Client, receiver: WebhookReceiver
) -> None:
    for name, code in (("nosuch", "webhook_not_found"), ("off", "webhook_disabled")):
        r = api.post("/v1/async/images/generations", json=mock_request(), headers={HEADER: name})
        body = assert_error_body(r, 400)
        assert body["error"]["code"] == code and body["error"]["param"] == "webhook"
    assert api.get("/v1/async/images/jobs").json()["jobs"] == []  # nothing was kept
    failed = submit(api, "completions", mock_fail_status=500)  # subscribed to completed only
    done = submit(api, "completions")
    arrivals(receiver, f"{done}.async_job.completed")
    assert receiver.of(f"{failed}.async_job.failed") == []
    assert deliveries(api, failed) == []


# --- retries -------------------------------------------------------------------------------


def test_a_503_then_200_retries_the_same_webhook_id_after_the_backoff(
    api: httpx.Client, receiver: WebhookReceiver
) -> None:
    receiver.answers["flaky"] = lambda r: FakeResponse(503 if r.attempt == 1 else 200)
    job_id = submit(api, "flaky")
    first, second = arrivals(receiver, f"{job_id}.async_job.completed", 2)
    assert first.body == second.body and second.verified_by == (0,)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.at - first.at >= 0.3 * 0.8  # the first backoff, jittered
    record = settled(api, job_id, "delivered")
    assert [(a["status_code"], a["outcome"]) for a in record["attempts"]] == [
        (503, "retry"),
        (200, "delivered"),
    ]


def test_a_slow_receiver_times_out_and_is_retried(
    api: httpx.Client, receiver: WebhookReceiver
) -> None:
    receiver.answers["slow"] = lambda r: FakeResponse(200, delay_s=1.5 if r.attempt == 1 else 0)
    job_id = submit(api, "slow")
    arrivals(receiver, f"{job_id}.async_job.completed", 2)
    record = settled(api, job_id, "delivered")
    first, second = record["attempts"]
    assert first["outcome"] == "retry" and "no answer within 0.5 s" in first["error"]
    assert "status_code" not in first and second["status_code"] == 200


def test_a_400_is_not_retried(api: httpx.Client, receiver: WebhookReceiver) -> None:
    receiver.answers["bad"] = lambda r: FakeResponse(400)
    job_id = submit(api, "bad")
    arrivals(receiver, f"{job_id}.async_job.completed")
    record = settled(api, job_id, "failed")
    assert [a["outcome"] for a in record["attempts"]] == ["failed"]
    time.sleep(1.0)  # longer than the backoff would have been
    assert len(receiver.of(f"{job_id}.async_job.completed")) == 1


def test_a_410_disables_the_endpoint(
    api: httpx.Client, receiver: WebhookReceiver, hooks_stack: Stack
) -> None:
    receiver.answers["gone"] = lambda r: FakeResponse(410)
    job_id = submit(api, "gone")
    arrivals(receiver, f"{job_id}.async_job.completed")
    record = wait_until(
        lambda: (d := deliveries(api, job_id)) and d[0]["endpoint_gone"] and d[0],
        WAIT_S,
        "the delivery held by the 410",
    )
    assert record["status"] == "pending" and record["attempts"][0]["outcome"] == "gone"
    r = api.post("/v1/async/images/generations", json=mock_request(), headers={HEADER: "gone"})
    assert assert_error_body(r, 400)["error"]["code"] == "webhook_disabled"
    assert "answered 410 Gone" in hooks_stack.log("dispatcher-1")
    time.sleep(1.0)
    assert len(receiver.to("gone")) == 1  # held: nothing more is sent


# --- signing, size, SSRF -------------------------------------------------------------------


def test_a_rotation_signs_with_both_secrets(api: httpx.Client, receiver: WebhookReceiver) -> None:
    job_id = submit(api, "rotating")
    [got] = arrivals(receiver, f"{job_id}.async_job.completed")
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert got.verified_by == (0, 1)  # each secret verifies on its own


def test_a_response_over_max_response_payload_kbs_is_omitted(
    api: httpx.Client, receiver: WebhookReceiver
) -> None:
    large = submit(api, "big", size="512x512")  # b64_json: far over 1 KiB
    small = submit(api, "big", response_format="url")
    [got_large] = arrivals(receiver, f"{large}.async_job.completed")
    [got_small] = arrivals(receiver, f"{small}.async_job.completed")
    assert "response" not in got_large.payload()["data"]
    assert got_large.payload()["data"]["response_omitted"] is True
    assert got_small.payload()["data"]["response"]["data"][0]["url"]
    assert got_small.payload()["data"]["response_omitted"] is False
    assert len(got_large.body) < 1024 + 1024


@pytest.mark.parametrize(
    ("hook", "why"),
    [
        ("to-loopback", "a loopback address"),
        ("to-private", "a private address"),
        ("to-metadata", "the cloud metadata address"),
    ],
)
def test_private_loopback_and_metadata_targets_are_refused(
    api: httpx.Client, receiver: WebhookReceiver, hook: str, why: str
) -> None:
    job_id = submit(api, hook)
    record = settled(api, job_id, "failed")
    [attempt] = record["attempts"]
    assert attempt["outcome"] == "failed" and why in attempt["error"]
    assert "status_code" not in attempt
    assert receiver.of(f"{job_id}.async_job.completed") == []


# --- gRPC: the webhook field, ListDeliveries, Redeliver; ownership ------------------------


def test_grpc_submit_list_and_redeliver_with_the_same_webhook_id(
    hooks_stack: Stack, receiver: WebhookReceiver, api: httpx.Client
) -> None:
    key = (("x-bf-vk", f"sk-bf-grpc-{uuid.uuid4().hex}"),)
    with grpc.insecure_channel(hooks_stack.grpc_gateway) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        job = stub.SubmitImageJob(
            jobs_pb2.SubmitImageJobRequest(
                kind=jobs_pb2.JOB_KIND_GENERATION,
                request=jobs_pb2.ImageRequest(model="mock/m", prompt="p", size="16x16"),
                webhook="main",
            ),
            metadata=key,
        )
        webhook_id = f"{job.id}.async_job.completed"
        [first] = arrivals(receiver, webhook_id)

        def delivered() -> jobs_pb2.WebhookDelivery | None:
            listed = stub.ListDeliveries(
                jobs_pb2.ListDeliveriesRequest(job_id=job.id), metadata=key
            ).deliveries
            done = jobs_pb2.WebhookDelivery.STATUS_DELIVERED
            return listed[0] if listed and listed[0].status == done else None

        record = wait_until(delivered, WAIT_S, "a delivered delivery")
        assert record.webhook_id == webhook_id and record.attempts[0].status_code == 200
        again = stub.Redeliver(jobs_pb2.RedeliverRequest(job_id=job.id), metadata=key)
        assert again.status == jobs_pb2.WebhookDelivery.STATUS_PENDING and again.round == 1
        _, second = arrivals(receiver, webhook_id, 2)
        assert second.body == first.body and second.verified_by == (0,)
        with pytest.raises(grpc.RpcError) as info:  # someone else's job
            stub.ListDeliveries(jobs_pb2.ListDeliveriesRequest(job_id=job.id))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitImageJob(
                jobs_pb2.SubmitImageJobRequest(
                    kind=jobs_pb2.JOB_KIND_GENERATION,
                    request=jobs_pb2.ImageRequest(model="mock/m", prompt="p"),
                    webhook="nosuch",
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    other = api.get(f"/v1/async/images/generations/{job.id}/deliveries")
    assert other.status_code == 404  # REST, with another key: as for the job itself
    wrong_kind = httpx.get(
        f"{hooks_stack.url}/v1/async/images/edits/{job.id}/deliveries", headers=dict(key)
    )
    assert wrong_kind.status_code == 404
