"""The job lifecycle beyond submit/poll, through the real stack: idempotent submits,
cancel in each state, long-poll wait, watch (gRPC stream and SSE), list with pagination.
Each test uses its own random virtual key, so list results are its own jobs only."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from imagejobs.testing import Stack, wait_until
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

from tests.conftest import (
    assert_error_body,
    mock_request,
    png,
    status_word,
    submit,
    wait_terminal,
)

pytestmark = pytest.mark.e2e

ORDER = {"pending": 0, "processing": 1, "completed": 2, "failed": 2, "cancelled": 2}


@pytest.fixture
def vk() -> str:
    return f"sk-bf-test-{uuid.uuid4().hex}"


@pytest.fixture
def api(stack: Stack, vk: str) -> Iterator[httpx.Client]:
    """A REST client through Envoy that sends its own virtual key."""
    with httpx.Client(base_url=stack.url, timeout=30, headers={"x-bf-vk": vk}) as c:
        yield c


def status_of(client: httpx.Client, job_id: str, kind: str = "generations") -> str:
    return str(client.get(f"/v1/async/images/{kind}/{job_id}").json()["status"])


# --- idempotency -------------------------------------------------------------------------


def test_same_idempotency_key_and_body_returns_the_same_job(api: httpx.Client) -> None:
    body = mock_request("idem", ms=0)
    first = submit(api, body, **{"Idempotency-Key": "k-1"})
    second = submit(api, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    wait_terminal(api, first.json()["id"])
    third = submit(api, body, **{"Idempotency-Key": "k-1"})  # after completion: still it
    assert third.status_code == 202 and third.json()["id"] == first.json()["id"]
    assert third.json()["status"] == "completed"
    other = submit(api, body, **{"Idempotency-Key": "k-2"})
    assert other.json()["id"] != first.json()["id"]
    without = submit(api, body)
    assert without.json()["id"] not in (first.json()["id"], other.json()["id"])


def test_same_idempotency_key_with_another_body_is_409(api: httpx.Client) -> None:
    first = submit(api, mock_request("one", ms=0), **{"Idempotency-Key": "k"})
    assert first.status_code == 202
    r = submit(api, mock_request("two", ms=0), **{"Idempotency-Key": "k"})
    body = assert_error_body(r, 409)
    assert body["error"]["code"] == "idempotency_key_reused"
    r = submit(api, mock_request("one", ms=0), kind="edits", **{"Idempotency-Key": "k"})
    assert r.status_code in (400, 409)  # an edit without an image is invalid anyway


def test_idempotency_keys_are_scoped_per_caller(stack: Stack, api: httpx.Client) -> None:
    mine = submit(api, mock_request("scoped", ms=0), **{"Idempotency-Key": "shared"}).json()["id"]
    with httpx.Client(base_url=stack.url, timeout=30) as anonymous:
        theirs = submit(anonymous, mock_request("scoped", ms=0), **{"Idempotency-Key": "shared"})
    assert theirs.status_code == 202 and theirs.json()["id"] != mine


def test_concurrent_duplicates_make_one_job(stack: Stack, vk: str, api: httpx.Client) -> None:
    ids: list[str] = []
    statuses: list[int] = []
    barrier = threading.Barrier(12)

    def post() -> None:
        with httpx.Client(base_url=stack.url, timeout=30, headers={"x-bf-vk": vk}) as c:
            barrier.wait()
            r = submit(c, mock_request("race", ms=200), **{"Idempotency-Key": "race"})
            statuses.append(r.status_code)
            ids.append(r.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [202] * 12
    assert len(set(ids)) == 1
    wait_terminal(api, ids[0])
    listed = api.get("/v1/async/images/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == ids[:1]  # exactly one job was recorded


def test_multipart_idempotency_ignores_the_boundary(api: httpx.Client) -> None:
    image = png(20, 20, (9, 9, 9))
    ids = []
    for _ in range(2):  # httpx picks a fresh random boundary per request
        r = api.post(
            "/v1/async/images/edits",
            data={"model": "mock/m", "prompt": "p"},
            files=[("image", ("a.png", image, "image/png"))],
            headers={"Idempotency-Key": "mp"},
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    assert ids[0] == ids[1]
    r = api.post(
        "/v1/async/images/edits",
        data={"model": "mock/m", "prompt": "p"},
        files=[("image", ("a.png", png(20, 20, (1, 2, 3)), "image/png"))],
        headers={"Idempotency-Key": "mp"},
    )
    assert_error_body(r, 409)


def test_grpc_idempotency_key_field(stack: Stack) -> None:
    with grpc.insecure_channel(stack.grpc_direct) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        key = uuid.uuid4().hex
        request = jobs_pb2.SubmitImageJobRequest(
            kind=jobs_pb2.JOB_KIND_GENERATION,
            request=jobs_pb2.ImageRequest(model="mock/m", prompt="g", size="16x16"),
            idempotency_key=key,
        )
        a, b = stub.SubmitImageJob(request), stub.SubmitImageJob(request)
        assert a.id == b.id
        request.request.prompt = "other"
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitImageJob(request)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_invalid_idempotency_key_is_400(api: httpx.Client) -> None:
    r = submit(api, mock_request("slow", ms=0), **{"Idempotency-Key": "x" * 300})
    assert assert_error_body(r, 400)["error"]["param"] == "idempotency_key"


# --- cancel ------------------------------------------------------------------------------


def test_cancel_processing_job_aborts_the_provider_call(stack: Stack, api: httpx.Client) -> None:
    job_id = submit(api, mock_request("long", ms=20_000)).json()["id"]
    wait_until(lambda: status_of(api, job_id) == "processing", 15, "processing")
    r = api.delete(f"/v1/async/images/generations/{job_id}")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "cancelled" and job["status_code"] == 499
    assert job["error"]["error"]["code"] == "cancelled"
    wait_until(
        lambda: f"job {job_id} cancelled; its provider call was aborted" in stack.log("worker-1"),
        10,
        "the worker to abort the provider call",
    )
    got = api.get(f"/v1/async/images/generations/{job_id}")
    assert got.status_code == 200 and got.json()["status"] == "cancelled"
    again = api.delete(f"/v1/async/images/generations/{job_id}")
    assert assert_error_body(again, 409)["error"]["code"] == "job_not_cancellable"


def test_cancel_completed_job_is_409(api: httpx.Client) -> None:
    job_id = submit(api, mock_request("slow", ms=0)).json()["id"]
    wait_terminal(api, job_id)
    assert_error_body(api.delete(f"/v1/async/images/generations/{job_id}"), 409)


def test_cancel_someone_elses_or_unknown_job_is_404(stack: Stack, api: httpx.Client) -> None:
    job_id = submit(api, mock_request("slow", ms=5_000)).json()["id"]
    with httpx.Client(base_url=stack.url, timeout=30) as anonymous:
        assert_error_body(anonymous.delete(f"/v1/async/images/generations/{job_id}"), 404)
    assert_error_body(api.delete(f"/v1/async/images/edits/{job_id}"), 404)  # wrong kind
    assert_error_body(api.delete(f"/v1/async/images/generations/{uuid.uuid4()}"), 404)
    assert api.delete(f"/v1/async/images/generations/{job_id}").status_code == 200


def test_grpc_cancel(stack: Stack) -> None:
    with grpc.insecure_channel(stack.grpc_gateway) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        job = stub.SubmitImageJob(
            jobs_pb2.SubmitImageJobRequest(
                kind=jobs_pb2.JOB_KIND_GENERATION,
                request=jobs_pb2.ImageRequest(
                    model="mock/m",
                    prompt="g",
                    size="16x16",
                    extra=json_format.ParseDict({"mock_latency_ms": 20_000}, Struct()),
                ),
            )
        )
        done = stub.CancelJob(
            jobs_pb2.CancelJobRequest(kind=jobs_pb2.JOB_KIND_GENERATION, job_id=job.id)
        )
        assert status_word(done) == "cancelled"
        with pytest.raises(grpc.RpcError) as info:
            stub.CancelJob(
                jobs_pb2.CancelJobRequest(kind=jobs_pb2.JOB_KIND_GENERATION, job_id=job.id)
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- wait ----------------------------------------------------------------------------------


def test_wait_returns_as_soon_as_the_job_is_terminal(api: httpx.Client) -> None:
    job_id = submit(api, mock_request("slow", ms=1_000)).json()["id"]
    started = time.monotonic()
    r = api.get(f"/v1/async/images/generations/{job_id}", params={"wait": 20})
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert elapsed < 10  # far below the 20 s asked for: woken by the state change


def test_wait_answers_202_at_its_deadline(api: httpx.Client) -> None:
    job_id = submit(api, mock_request("slow", ms=8_000)).json()["id"]
    started = time.monotonic()
    r = api.get(f"/v1/async/images/generations/{job_id}", params={"wait": 1.5})
    elapsed = time.monotonic() - started
    assert r.status_code == 202 and r.json()["status"] in ("pending", "processing")
    assert 1.4 <= elapsed < 6
    api.delete(f"/v1/async/images/generations/{job_id}")


def test_wait_on_a_terminal_job_answers_at_once(api: httpx.Client) -> None:
    job_id = submit(api, mock_request("slow", ms=0)).json()["id"]
    wait_terminal(api, job_id)
    started = time.monotonic()
    r = api.get(f"/v1/async/images/generations/{job_id}", params={"wait": 30})
    assert r.status_code == 200 and time.monotonic() - started < 3


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_bad_wait_is_400(api: httpx.Client, value: str) -> None:
    job_id = submit(api, mock_request("slow", ms=0)).json()["id"]
    r = api.get(f"/v1/async/images/generations/{job_id}", params={"wait": value})
    assert_error_body(r, 400)


def test_wait_is_woken_by_cancel(api: httpx.Client) -> None:
    job_id = submit(api, mock_request("slow", ms=20_000)).json()["id"]
    result: dict[str, Any] = {}

    def waiter() -> None:
        result["r"] = api.get(f"/v1/async/images/generations/{job_id}", params={"wait": 30})

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.5)
    api.delete(f"/v1/async/images/generations/{job_id}")
    t.join(10)
    assert not t.is_alive()
    assert result["r"].status_code == 200 and result["r"].json()["status"] == "cancelled"


# --- watch and SSE -------------------------------------------------------------------------


def test_grpc_watch_sends_each_state_in_order(stack: Stack) -> None:
    with grpc.insecure_channel(stack.grpc_gateway) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        job = stub.SubmitImageJob(
            jobs_pb2.SubmitImageJobRequest(
                kind=jobs_pb2.JOB_KIND_GENERATION,
                request=jobs_pb2.ImageRequest(
                    model="mock/m",
                    prompt="w",
                    size="16x16",
                    extra=json_format.ParseDict({"mock_latency_ms": 700}, Struct()),
                ),
            )
        )
        seen = [
            status_word(j)
            for j in stub.WatchJob(
                jobs_pb2.WatchJobRequest(kind=jobs_pb2.JOB_KIND_GENERATION, job_id=job.id),
                timeout=30,
            )
        ]
    assert seen[-1] == "completed"
    assert "processing" in seen
    assert [ORDER[s] for s in seen] == sorted(ORDER[s] for s in seen)
    assert seen.count("completed") == 1


def test_grpc_watch_of_unknown_job_is_not_found(stack: Stack) -> None:
    with grpc.insecure_channel(stack.grpc_direct) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(
                stub.WatchJob(
                    jobs_pb2.WatchJobRequest(kind=jobs_pb2.JOB_KIND_GENERATION, job_id="nope")
                )
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = value


def test_sse_streams_every_state_until_terminal(api: httpx.Client) -> None:
    job_id = submit(api, mock_request("sse", ms=700)).json()["id"]
    with api.stream("GET", f"/v1/async/images/generations/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r))
    assert all(e["event"] == "job" for e in events)
    assert [e["id"] for e in events] == [str(i + 1) for i in range(len(events))]
    jobs = [json.loads(e["data"]) for e in events]
    statuses = [j["status"] for j in jobs]
    assert statuses[-1] == "completed" and "processing" in statuses
    assert [ORDER[s] for s in statuses] == sorted(ORDER[s] for s in statuses)
    assert all(j["id"] == job_id for j in jobs)
    assert jobs[-1]["result"]["data"][0]["b64_json"]  # the terminal event is the full job


def test_sse_of_unknown_job_is_404_error_body(api: httpx.Client) -> None:
    r = api.get(f"/v1/async/images/generations/{uuid.uuid4()}/events")
    assert_error_body(r, 404)


# --- list ----------------------------------------------------------------------------------


def test_list_paginates_newest_first(api: httpx.Client) -> None:
    ids = []
    for i in range(5):
        ids.append(submit(api, mock_request(f"list {i}", ms=0)).json()["id"])
        time.sleep(0.005)  # distinct creation milliseconds
    for job_id in ids:
        wait_terminal(api, job_id)
    pages: list[list[str]] = []
    token = ""
    while True:
        params: dict[str, Any] = {"limit": 2}
        if token:
            params["page_token"] = token
        r = api.get("/v1/async/images/jobs", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([j["id"] for j in body["jobs"]])
        token = body.get("next_page_token", "")
        if not token:
            break
        assert len(pages) < 10
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    first = api.get("/v1/async/images/jobs", params={"limit": 1}).json()["jobs"][0]
    assert first["status"] == "completed"
    assert "b64_json" not in first["result"]["data"][0]  # lists link images, never inline
    assert first["result"]["data"][0]["url"].endswith(f"/{first['id']}/images/0")


def test_list_filters_by_status_and_kind(api: httpx.Client) -> None:
    done = submit(api, mock_request("done", ms=0)).json()["id"]
    running = submit(api, mock_request("running", ms=20_000)).json()["id"]
    wait_terminal(api, done)
    edit = api.post(
        "/v1/async/images/edits",
        data={"model": "mock/m", "prompt": "p"},
        files=[("image", ("a.png", png(20, 20, (9, 9, 9)), "image/png"))],
    ).json()["id"]

    def listed(**params: Any) -> list[str]:
        r = api.get("/v1/async/images/jobs", params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["jobs"]]

    assert listed(kind="edits") == [edit]
    assert set(listed(kind="generations")) == {done, running}
    api.delete(f"/v1/async/images/generations/{running}")
    assert listed(status="cancelled") == [running]
    assert done in listed(status="completed")
    assert_error_body(api.get("/v1/async/images/jobs", params={"status": "weird"}), 400)
    assert_error_body(api.get("/v1/async/images/jobs", params={"kind": "weird"}), 400)
    assert_error_body(api.get("/v1/async/images/jobs", params={"limit": -1}), 400)
    assert_error_body(api.get("/v1/async/images/jobs", params={"page_token": "!!"}), 400)


def test_list_shows_only_the_callers_jobs(stack: Stack, api: httpx.Client) -> None:
    mine = submit(api, mock_request("mine", ms=0)).json()["id"]
    with httpx.Client(
        base_url=stack.url, timeout=30, headers={"x-bf-vk": f"sk-bf-{uuid.uuid4().hex}"}
    ) as other:
        assert other.get("/v1/async/images/jobs").json()["jobs"] == []
    assert [j["id"] for j in api.get("/v1/async/images/jobs").json()["jobs"]] == [mine]


def test_an_empty_list_has_both_keys(stack: Stack) -> None:
    """Clients index `jobs`: an empty page is `{"jobs": [], "next_page_token": ""}`, not
    `{}`; and a last page says its token is empty."""
    key = f"sk-bf-{uuid.uuid4().hex}"
    with httpx.Client(base_url=stack.url, timeout=30, headers={"x-bf-vk": key}) as c:
        r = c.get("/v1/async/images/jobs")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert r.json() == {"jobs": [], "next_page_token": ""}
        assert c.get("/v1/async/images/jobs", params={"status": "failed"}).json() == {
            "jobs": [],
            "next_page_token": "",
        }
        job_id = submit(c, mock_request("one", ms=0)).json()["id"]
        page = c.get("/v1/async/images/jobs").json()
        assert [j["id"] for j in page["jobs"]] == [job_id] and page["next_page_token"] == ""


def test_grpc_list(stack: Stack) -> None:
    key = f"sk-bf-{uuid.uuid4().hex}"
    md = (("x-bf-vk", key),)
    with grpc.insecure_channel(stack.grpc_direct) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        job = stub.SubmitImageJob(
            jobs_pb2.SubmitImageJobRequest(
                kind=jobs_pb2.JOB_KIND_GENERATION,
                request=jobs_pb2.ImageRequest(model="mock/m", prompt="g", size="16x16"),
            ),
            metadata=md,
        )
        page = stub.ListJobs(jobs_pb2.ListJobsRequest(limit=5), metadata=md)
    assert [j.id for j in page.jobs] == [job.id] and page.next_page_token == ""
