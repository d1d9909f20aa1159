"""The SDK across API processes that go away: a submit whose API is killed in the middle
of the call is retried with the idempotency key the client chose, so exactly one job
exists afterwards (and it completes); a watch whose API shuts down re-attaches through the
gateway and still sees the job end."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import uuid

import pytest
from imagejobs.client import Client, Job, Kind, RetryPolicy, Status
from imagejobs.testing import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Stack,
    free_port,
    terminate,
    wait_until,
)

pytestmark = pytest.mark.e2e

# generous enough to span an API process starting again on the same port
PATIENT = RetryPolicy(attempts=40, initial_backoff_s=0.2, max_backoff_s=1.0, max_elapsed_s=60)


def test_a_submit_whose_api_dies_mid_call_makes_exactly_one_job(stack: Stack) -> None:
    port = free_port()
    name = f"api-{port}"
    # dies (as kill -9 would) after recording the job, before queueing it or answering
    dying = stack.start_api(port, {"IMAGEJOBS_FAILPOINT": "submit.before_publish"})
    replaced: list[subprocess.Popen[bytes]] = []

    def replace_once_dead() -> None:
        dying.wait(timeout=START_TIMEOUT_S)
        replaced.append(stack.start_api(port))  # a healthy API on the same address

    replacer = threading.Thread(target=replace_once_dead)
    replacer.start()
    request_id = f"retried-{uuid.uuid4().hex}"
    try:
        with Client(f"127.0.0.1:{port}", key=f"sk-bf-{uuid.uuid4().hex}", retry=PATIENT) as client:
            job = client.submit(
                Kind.GENERATION, "mock/m", "once", params={"size": "8x8"}, request_id=request_id
            )
            replacer.join(START_TIMEOUT_S)
            assert dying.returncode == 137  # it really died mid-call
            orphan = re.search(r"exiting before publishing job (\S+)", stack.log(name))
            assert orphan, stack.log(name)
            assert job.id == orphan.group(1)  # the retry got the job the first try recorded
            assert job.request_id == request_id
            assert [j.id for j in client.list()] == [job.id]  # exactly one job

            def ended() -> Job | None:
                # a read of the unqueued job after 10 s queues it (orphan repair)
                now = client.get(job.id)
                return now if now.terminal else None

            done = wait_until(ended, 60, "the retried job to complete", interval_s=0.5)
            assert done.status is Status.COMPLETED and done.result is not None
            assert [j.id for j in client.list()] == [job.id]
    finally:
        replacer.join(START_TIMEOUT_S)
        terminate(replaced)


def test_a_watch_outlives_the_api_process_it_was_on(stack: Stack) -> None:
    """Two API processes behind an Envoy of their own; each in turn gets SIGTERM (which ends
    its watches) and comes back, so whichever held the watch let it go."""
    ports = [free_port(), free_port()]
    apis = {port: stack.start_api(port) for port in ports}
    gateway = stack.start_envoy(f"gateway-watch-{ports[0]}", ports)
    seen: list[Job] = []
    try:
        with Client(f"127.0.0.1:{gateway}", key=f"sk-bf-{uuid.uuid4().hex}", retry=PATIENT) as c:
            job = c.submit(Kind.GENERATION, "mock/m", "watched", params={"mock_latency_ms": 8000})
            follower = threading.Thread(target=lambda: seen.extend(c.watch(job.id)))
            follower.start()
            wait_until(lambda: seen, 30, "the watch's first state")
            for port in ports:
                apis[port].send_signal(signal.SIGTERM)
                assert apis[port].wait(timeout=STOP_TIMEOUT_S) == 0
                apis[port] = stack.start_api(port)
            follower.join(60)
            assert not follower.is_alive()
    finally:
        terminate(apis.values())
        terminate([stack.procs[f"gateway-watch-{ports[0]}"]])
    assert seen[-1].status is Status.COMPLETED and seen[-1].result is not None
    assert seen[-1].result.images[0].data  # fetched at the end, as ever
    statuses = [j.status for j in seen]
    assert statuses.count(Status.COMPLETED) == 1  # a re-attach repeats nothing
