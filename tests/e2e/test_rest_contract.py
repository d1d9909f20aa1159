"""The REST contract through real Envoy + API + worker + nats-server (contract.md)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import grpc
import httpx
import pytest
from imagejobs.testing import Stack
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

from tests.conftest import assert_error_body, decode_image, submit, wait_terminal

pytestmark = pytest.mark.e2e


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_submit_answers_202_with_a_pending_job(client: httpx.Client) -> None:
    r = submit(client, {"model": "mock/image-1", "prompt": "a red fox", "mock_latency_ms": 300})
    assert r.status_code == 202
    job = r.json()
    assert uuid.UUID(job["id"]).version == 4
    assert job["status"] == "pending"
    assert job["created_at"].endswith("Z")
    uuid.UUID(job["request_id"])
    for absent in ("completed_at", "expires_at", "status_code", "result", "error"):
        assert absent not in job


def test_poll_202_while_running_then_200_with_the_image(client: httpx.Client) -> None:
    r = submit(
        client,
        {"model": "mock/image-1", "prompt": "a red fox", "size": "320x200", "mock_latency_ms": 800},
    )
    job_id = r.json()["id"]
    running = client.get(f"/v1/async/images/generations/{job_id}")
    assert running.status_code == 202
    assert running.json()["status"] in ("pending", "processing")
    assert "result" not in running.json()

    done = wait_terminal(client, job_id)
    assert done.status_code == 200
    job = done.json()
    assert job["status"] == "completed" and job["status_code"] == 200
    assert "error" not in job
    assert abs(ts(job["expires_at"]) - ts(job["completed_at"]) - 3600) < 0.01
    result = job["result"]
    assert result["extra_fields"]["request_type"] == "image_generation"
    assert result["extra_fields"]["provider"] == "mock"
    assert result["extra_fields"]["model_requested"] == "image-1"
    assert isinstance(result["extra_fields"]["latency"], int | float)
    assert result["data"][0]["index"] == 0
    image = decode_image(result["data"][0]["b64_json"])
    assert image.format == "PNG" and image.size == (320, 200)


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_format_and_n(client: httpx.Client, fmt: str, pil: str) -> None:
    r = submit(
        client,
        {"model": "mock/m", "prompt": "two owls", "n": 2, "size": "64x48", "output_format": fmt},
    )
    job = wait_terminal(client, r.json()["id"]).json()
    assert [d["index"] for d in job["result"]["data"]] == [0, 1]
    for item in job["result"]["data"]:
        image = decode_image(item["b64_json"])
        assert image.format == pil and image.size == (64, 48)


def test_url_response_format_serves_the_bytes(client: httpx.Client) -> None:
    r = submit(
        client, {"model": "mock/m", "prompt": "a kite", "size": "32x32", "response_format": "url"}
    )
    job = wait_terminal(client, r.json()["id"]).json()
    url = job["result"]["data"][0]["url"]
    assert "b64_json" not in job["result"]["data"][0]
    assert url.startswith(str(client.base_url))
    image = client.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


def test_request_id_header_becomes_request_id(client: httpx.Client) -> None:
    r = submit(client, {"model": "mock/m", "prompt": "p"}, **{"x-request-id": "req-42"})
    assert r.json()["request_id"] == "req-42"
    assert (
        client.get(f"/v1/async/images/generations/{r.json()['id']}").json()["request_id"]
        == "req-42"
    )


# --- the contract's error table ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid request format: "),
        (b"[1, 2]", "invalid request format: "),
        (b'{"prompt": "p"}', "model should be in provider/model format"),
        (
            b'{"model": "gpt-image-2.6-sunburst", "prompt": "p"}',
            "model should be in provider/model format",
        ),
        (b'{"model": "nosuch/m", "prompt": "p"}', "model should be in provider/model format"),
        (b'{"model": "mock/", "prompt": "p"}', "model should be in provider/model format"),
        (b'{"model": "mock/m"}', "prompt cannot be empty"),
        (b'{"model": "mock/m", "prompt": "  "}', "prompt cannot be empty"),
        (
            b'{"model": "mock/m", "prompt": "p", "stream": true}',
            "stream is not supported for async image generations",
        ),
        (b'{"model": "mock/m", "prompt": "p", "n": "x"}', "invalid n value: x"),
        (b'{"model": "mock/m", "prompt": "p", "output_format": ["png"]}', "invalid output_format"),
        (b'{"model": "mock/m", "prompt": "p", "response_format": {}}', "invalid response_format"),
        (b'{"model": "mock/m", "prompt": "p", "output_format": "gif"}', "invalid output_format"),
    ],
)
def test_submit_400s(client: httpx.Client, body: bytes, message: str) -> None:
    r = client.post(
        "/v1/async/images/generations", content=body, headers={"content-type": "application/json"}
    )
    assert_error_body(r, 400, message)


def test_404_for_unknown_malformed_wrong_kind_and_other_key(client: httpx.Client) -> None:
    assert_error_body(
        client.get(f"/v1/async/images/generations/{uuid.uuid4()}"), 404, "job not found or expired"
    )
    assert_error_body(client.get("/v1/async/images/generations/not-a-uuid"), 404)
    r = submit(client, {"model": "mock/m", "prompt": "p"}, **{"x-bf-vk": "sk-bf-alice"})
    job_id = r.json()["id"]
    assert_error_body(client.get(f"/v1/async/images/edits/{job_id}"), 404, "job not found")
    assert_error_body(client.get(f"/v1/async/images/variations/{job_id}"), 404)
    assert_error_body(client.get(f"/v1/async/images/generations/{job_id}"), 404)  # no key
    assert_error_body(
        client.get(f"/v1/async/images/generations/{job_id}", headers={"x-bf-vk": "sk-bf-bob"}), 404
    )
    ok = client.get(
        f"/v1/async/images/generations/{job_id}",
        headers={"authorization": "Bearer sk-bf-alice"},
    )
    assert ok.status_code in (200, 202)


def test_envoy_own_errors_carry_the_error_body(client: httpx.Client, stack: Stack) -> None:
    body = assert_error_body(client.get("/v1/nothing/here"), 404)
    assert body["error"]["message"] == "route not found"
    too_big = b"x" * (stack.settings.max_body_bytes + 1024)
    r = client.post(
        "/v1/async/images/generations",
        content=too_big,
        headers={"content-type": "application/json"},
    )
    assert_error_body(r, 413)


# --- TTL ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, 3600),
        ("", 3600),
        ("abc", 3600),
        ("-5", 3600),
        ("0", 3600),
        ("120", 120),
        ("7200", 7200),
    ],
)
def test_ttl_header_rules(client: httpx.Client, header: str | None, ttl: int) -> None:
    headers = {} if header is None else {"x-bf-async-job-result-ttl": header}
    r = submit(client, {"model": "mock/m", "prompt": "p", "size": "16x16"}, **headers)
    assert r.status_code == 202
    job = wait_terminal(client, r.json()["id"]).json()
    assert abs(ts(job["expires_at"]) - ts(job["completed_at"]) - ttl) < 0.01


def test_result_expires_after_its_ttl_counted_from_completion(client: httpx.Client) -> None:
    r = submit(
        client,
        {
            "model": "mock/m",
            "prompt": "p",
            "size": "16x16",
            "response_format": "url",
            "mock_latency_ms": 1500,
        },
        **{"x-bf-async-job-result-ttl": "2"},
    )
    job_id = r.json()["id"]
    job = wait_terminal(client, job_id).json()
    # the TTL started at completion, not at submit: the job outlived submit + 2 s
    assert ts(job["expires_at"]) - ts(job["created_at"]) > 3.0
    url = job["result"]["data"][0]["url"]
    assert client.get(url).status_code == 200
    expires = ts(job["expires_at"])
    time.sleep(max(expires - time.time(), 0) + 0.05)
    assert_error_body(client.get(f"/v1/async/images/generations/{job_id}"), 404)
    assert_error_body(client.get(url), 404)


@pytest.mark.parametrize(
    "bad_id",
    [
        "%20" + "a" * 31,  # Python's UUID parser strips the whitespace: it used to be a 503
        "%09" + "b" * 31,
        "{" + str(uuid.UUID(int=1)) + "}",
        "urn:uuid:" + str(uuid.UUID(int=2)),
        uuid.UUID(int=3).hex,
        str(uuid.UUID(int=4)).upper(),
    ],
    ids=["space", "tab", "braces", "urn", "no-hyphens", "upper-case"],
)
def test_an_id_that_is_not_a_canonical_job_id_is_404(client: httpx.Client, bad_id: str) -> None:
    """Only the canonical form of a job id names a job: anything else a UUID parser might
    accept is 404 on every route, never a 5xx or a retry hint."""
    for method, path in [
        ("GET", f"/v1/async/images/generations/{bad_id}"),
        ("GET", f"/v1/async/images/generations/{bad_id}?wait=0.5"),
        ("DELETE", f"/v1/async/images/generations/{bad_id}"),
        ("GET", f"/v1/async/images/generations/{bad_id}/events"),
        ("GET", f"/v1/async/images/generations/{bad_id}/images/0"),
    ]:
        r = client.request(method, path)
        body = assert_error_body(r, 404, "job not found or expired")
        assert "retry-after" not in r.headers, (method, path)
        assert body["error"]["code"] == "job_not_found"


# --- failures ------------------------------------------------------------------------------


def test_upstream_error_fails_the_job_with_its_status(client: httpx.Client) -> None:
    r = submit(client, {"model": "mock/m", "prompt": "p", "mock_fail_status": 422})
    job = wait_terminal(client, r.json()["id"])
    assert job.status_code == 200
    body = job.json()
    assert body["status"] == "failed" and body["status_code"] == 422
    assert "result" not in body
    assert body["error"]["status_code"] == 422
    assert "mock upstream error" in body["error"]["error"]["message"]
    assert body["error"]["extra_fields"]["provider"] == "mock"


def test_a_failed_or_cancelled_jobs_event_id_is_the_same_on_every_read(
    client: httpx.Client, stack: Stack
) -> None:
    """An error happens once, so it has one event id: every poll (REST, long-poll, list,
    gRPC) shows the one stored with the job."""
    failed = submit(client, {"model": "mock/m", "prompt": "p", "mock_fail_status": 422}).json()
    wait_terminal(client, failed["id"])
    slow = submit(client, {"model": "mock/m", "prompt": "p", "mock_latency_ms": 20_000}).json()
    assert client.delete(f"/v1/async/images/generations/{slow['id']}").status_code == 200
    for job_id in (failed["id"], slow["id"]):
        path = f"/v1/async/images/generations/{job_id}"
        bodies = [client.get(path).json() for _ in range(3)]
        bodies.append(client.get(path, params={"wait": 1}).json())
        event_ids = {b["error"]["event_id"] for b in bodies}
        event_ids |= {b["error"]["error"]["event_id"] for b in bodies}
        with grpc.insecure_channel(stack.grpc_direct) as channel:
            stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
            got = stub.GetJob(
                jobs_pb2.GetJobRequest(kind=jobs_pb2.JOB_KIND_GENERATION, job_id=job_id)
            )
        event_ids.add(got.error.event_id)
        assert len(event_ids) == 1, event_ids
        uuid.UUID(event_ids.pop())


def test_retryable_failures_then_success(client: httpx.Client) -> None:
    r = submit(
        client,
        {
            "model": "mock/m",
            "prompt": "p",
            "size": "16x16",
            "mock_fail_status": 503,
            "mock_fail_times": 1,
        },
    )
    job = wait_terminal(client, r.json()["id"]).json()
    assert job["status"] == "completed", job
