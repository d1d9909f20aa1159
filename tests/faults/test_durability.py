"""Backpressure, cancel of a queued job, orphan repair and shutdown deadlines, on a stack
of its own: a queue bounded at 5 jobs, no worker until a test starts one, a 1 s worker
drain deadline."""

from __future__ import annotations

import itertools
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from imagejobs.testing import Stack, require_binary, wait_until
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

from tests.conftest import (
    assert_error_body,
    mock_request,
    orphan_via_failpoint,
    status_word,
    submit,
    wait_terminal,
)
from tests.faults.test_faults import completions, job_record

pytestmark = pytest.mark.e2e

QUEUE_MAX = 5


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    config = {
        "ack_wait_s": 1.5,
        "queue_max_jobs": QUEUE_MAX,
        "worker_drain_s": 1.0,
        "providers": {"mock": {"concurrency": 1}},  # one mock call at a time per worker
    }
    s = Stack(tmp_path_factory.mktemp("durability"), config, workers=0)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def stop_workers(stack: Stack) -> None:
    for name, proc in stack.procs.items():
        if name.startswith("worker") and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def test_full_queue_is_429_and_nothing_is_kept(small_stack: Stack) -> None:
    vk = f"sk-bf-{uuid.uuid4().hex}"
    with httpx.Client(base_url=small_stack.url, timeout=30, headers={"x-bf-vk": vk}) as api:
        accepted = [submit(api, mock_request(f"q{i}", ms=0)) for i in range(QUEUE_MAX)]
        assert [r.status_code for r in accepted] == [202] * QUEUE_MAX
        ids = [r.json()["id"] for r in accepted]

        refused = submit(api, mock_request("one too many", ms=0), **{"Idempotency-Key": "full"})
        body = assert_error_body(refused, 429)
        assert body["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        listed = api.get("/v1/async/images/jobs", params={"limit": 100}).json()["jobs"]
        assert sorted(j["id"] for j in listed) == sorted(ids)  # the refused one left nothing

        # a pending job is cancelled at once, and no worker ever runs it
        cancelled = api.delete(f"/v1/async/images/generations/{ids[0]}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

        small_stack.start_worker()
        for job_id in ids[1:]:
            assert wait_terminal(api, job_id).json()["status"] == "completed"
        assert api.get(f"/v1/async/images/generations/{ids[0]}").json()["status"] == "cancelled"
        assert completions(small_stack, ids[0]) == 0

        # the queue drained (the cancelled job's message too): the refused key works now
        again = submit(api, mock_request("one too many", ms=0), **{"Idempotency-Key": "full"})
        assert again.status_code == 202, again.text
        assert wait_terminal(api, again.json()["id"]).json()["status"] == "completed"
    stop_workers(small_stack)


def test_provider_concurrency_limit_queues_the_excess(small_stack: Stack) -> None:
    small_stack.start_worker()
    with httpx.Client(base_url=small_stack.url, timeout=30) as api:
        ids = [submit(api, mock_request(f"c{i}", ms=400)).json()["id"] for i in range(3)]
        jobs = [wait_terminal(api, job_id, timeout_s=30).json() for job_id in ids]
    assert [j["status"] for j in jobs] == ["completed"] * 3  # waited, not failed
    done = sorted(float(str(job_record(small_stack, j)["completed_at"])) for j in ids)
    gaps = [b - a for a, b in itertools.pairwise(done)]
    assert all(gap >= 0.35 for gap in gaps), gaps  # one 400 ms call after the other
    stop_workers(small_stack)


def test_worker_stops_within_its_drain_deadline_and_the_job_moves_on(small_stack: Stack) -> None:
    name, worker = small_stack.start_worker()
    with httpx.Client(base_url=small_stack.url, timeout=30) as api:
        job_id = submit(api, mock_request("outlives the drain", ms=6_000)).json()["id"]
        wait_until(lambda: job_record(small_stack, job_id)["status"] == "processing", 10, "claim")
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        assert time.monotonic() - started < 6  # 1 s drain deadline, not the 6 s job
        assert "draining 1 in-flight jobs" in small_stack.log(name)
        small_stack.start_worker()  # the job, left unacked, is redelivered here
        job = wait_terminal(api, job_id, timeout_s=40).json()
    assert job["status"] == "completed"
    assert job_record(small_stack, job_id)["deliveries"] == 2
    assert completions(small_stack, job_id) == 1
    stop_workers(small_stack)


def test_api_killed_between_record_and_publish_loses_nothing(small_stack: Stack) -> None:
    """A failpoint makes a second API process die right after recording a job, before
    publishing it. The client retries with its Idempotency-Key through the gateway and
    learns the job id; the first read of the orphan after REPAIR_AFTER_S queues it."""
    small_stack.start_worker()
    key, orphan = orphan_via_failpoint(small_stack)

    with httpx.Client(base_url=small_stack.url, timeout=30) as api:
        retry = submit(
            api,
            {"model": "mock/m", "prompt": "orphan", "size": "16x16"},
            **{"Idempotency-Key": key},
        )
        assert retry.status_code == 202 and retry.json()["id"] == orphan
        assert retry.json()["status"] == "pending"
        job = wait_terminal(api, orphan, timeout_s=40).json()
    assert job["status"] == "completed"
    assert any(
        "never queued; publishing it now" in small_stack.log(n)
        for n in small_stack.procs
        if n.startswith("api")
    )
    stop_workers(small_stack)


def test_api_shutdown_answers_long_polls_at_once(small_stack: Stack) -> None:
    small_stack.start_worker()
    port = small_stack.api_ports[0]
    api_proc = small_stack.procs[f"api-{port}"]
    with grpc.insecure_channel(small_stack.grpc_direct) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        job = stub.SubmitImageJob(
            jobs_pb2.SubmitImageJobRequest(
                kind=jobs_pb2.JOB_KIND_GENERATION,
                request=jobs_pb2.ImageRequest(
                    model="mock/m",
                    prompt="w",
                    size="16x16",
                    extra=json_format.ParseDict({"mock_latency_ms": 8000}, Struct()),
                ),
            )
        )
        answer: dict[str, Any] = {}

        def long_poll() -> None:
            answer["job"] = stub.GetJob(
                jobs_pb2.GetJobRequest(kind=jobs_pb2.JOB_KIND_GENERATION, job_id=job.id, wait=50),
                timeout=60,
            )

        t = threading.Thread(target=long_poll)
        t.start()
        time.sleep(1.0)
        started = time.monotonic()
        api_proc.send_signal(signal.SIGTERM)
        t.join(15)
        assert not t.is_alive()
        assert status_word(answer["job"]) in ("pending", "processing")
        assert api_proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 8  # the grace period, not the 50 s wait
    small_stack.start_api(port)
    wait_until(small_stack.healthy, 30, "gateway healthy again")
    stop_workers(small_stack)


def test_a_job_left_non_terminal_too_long_is_failed(tmp_path: Path) -> None:
    """No worker runs: past max_job_age_s, a poll fails the job itself, and a worker that
    comes later fails (not runs) the one nobody polled."""
    stack = Stack(tmp_path / "age", {"max_job_age_s": 2.0}, workers=0).start()
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as api:
            polled = submit(api, mock_request("polled", ms=0)).json()["id"]
            unpolled = submit(api, mock_request("unpolled", ms=0)).json()["id"]
            time.sleep(2.5)
            r = api.get(f"/v1/async/images/generations/{polled}")
            assert r.status_code == 200
            job = r.json()
            assert job["status"] == "failed" and job["status_code"] == 500
            assert job["error"]["error"]["code"] == "job_expired"
            name, _ = stack.start_worker()
            wait_until(lambda: f"job {unpolled} failed" in stack.log(name), 20, "worker")
            job = api.get(f"/v1/async/images/generations/{unpolled}").json()
            assert job["error"]["error"]["code"] == "job_expired"
            assert completions(stack, polled) == completions(stack, unpolled) == 0
    finally:
        stack.stop()
