"""Webhook deliveries under faults, with real processes and a receiver verifying every
request with the `standardwebhooks` library:

- the receiver is down, the whole stack is stopped and started again on its store, then
  the receiver comes back: the delivery still arrives;
- the counted run: 300 jobs, a receiver refusing 30% of attempts, and a dispatcher
  killed with kill -9 mid-run: every job delivered at least once, every webhook-id's
  body the same on each attempt, nothing owed at the end.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from imagejobs.testing import Stack, free_port, free_port_run, require_binary, scrape, wait_until
from imagejobs.webhooks.signing import new_secret

from tests.conftest import mock_request
from tests.fakes.receiver import Received, WebhookReceiver
from tests.fakes.upstream import FakeResponse

pytestmark = pytest.mark.e2e

SECRET = new_secret()
HEADER = "x-bf-async-webhook"
JOBS = 300
REFUSED_SHARE = 0.3
SUBMIT_SPREAD_S = 6.0


def stack_with(root: Any, url: str, dispatchers: int = 1, **hook: Any) -> Stack:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    webhooks = [
        {
            "name": "main",
            "url": url,
            "secret_env": "HOOK_SECRET",
            "allow_private_network": True,
            "timeout_s": 1.0,
            **hook,
        }
    ]
    config: dict[str, Any] = {"webhooks": webhooks, "metrics_port": free_port_run(24)}
    return Stack(root, config, env={"HOOK_SECRET": SECRET}, dispatchers=dispatchers)


def submit(client: httpx.Client, n: int) -> str:
    r = client.post(
        "/v1/async/images/generations",
        json=mock_request(f"hooked {n}"),
        headers={HEADER: "main", "Idempotency-Key": f"hooked-{n}"},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def delivery(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    found = client.get(f"/v1/async/images/generations/{job_id}/deliveries").json()["deliveries"]
    return found[0] if found else None


def test_a_delivery_owed_while_the_receiver_is_down_survives_a_restart_of_the_whole_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    port = free_port()  # nothing listens here yet: the receiver is down
    stack = stack_with(
        tmp_path_factory.mktemp("hooks-restart"),
        f"http://127.0.0.1:{port}/main",
        initial_backoff_s=1.0,
        max_retries=12,
    )
    receiver: WebhookReceiver | None = None
    try:
        stack.start()
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            job_id = submit(client, 0)
            wait_until(
                lambda: (d := delivery(client, job_id)) and d["total_attempts"] >= 1,
                30,
                "a failed attempt while the receiver is down",
            )
        stack.stop()  # every process, nats-server last
        stack.start()  # the same ports and store
        receiver = WebhookReceiver({"main": [SECRET]}, port=port).__enter__()
        webhook_id = f"{job_id}.async_job.completed"
        [got] = wait_until(lambda: receiver.of(webhook_id) if receiver else None, 60, webhook_id)
        assert got.verified_by == (0,) and got.payload()["data"]["job_id"] == job_id
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            record = wait_until(
                lambda: (d := delivery(client, job_id)) and d["status"] == "delivered" and d,
                30,
                "the delivery recorded as delivered",
            )
        *failed, last = record["attempts"]
        assert failed and all(a["outcome"] == "retry" and a["error"] for a in failed)
        assert last["status_code"] == 200
    finally:
        stack.stop()
        if receiver is not None:
            receiver.close()


class Refuser:
    """Answers 503 to a seeded 30% of attempts, 200 to the rest (thread-safe)."""

    def __init__(self) -> None:
        self._rng = random.Random(13)
        self._lock = threading.Lock()
        self.refused = 0

    def __call__(self, received: Received) -> FakeResponse:
        with self._lock:
            refuse = self._rng.random() < REFUSED_SHARE
            self.refused += refuse
        time.sleep(0.02)  # an attempt takes a moment: a kill finds some in flight
        return FakeResponse(503 if refuse else 200)


def test_counted_run_300_jobs_30_percent_refused_and_a_dispatcher_killed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    refuser = Refuser()
    with WebhookReceiver({"main": [SECRET]}) as receiver:
        receiver.answers["main"] = refuser
        stack = stack_with(
            tmp_path_factory.mktemp("hooks-counted"),
            f"{receiver.url}/main",
            initial_backoff_s=0.2,
            max_retries=15,
            dispatchers=2,
        )
        try:
            stack.start()
            with httpx.Client(base_url=stack.url, timeout=30) as client:
                ids = _run(stack, client, receiver)
                _check(stack, client, receiver, ids, refuser)
        finally:
            stack.stop()


def _run(stack: Stack, client: httpx.Client, receiver: WebhookReceiver) -> list[str]:
    """Submit JOBS jobs paced over SUBMIT_SPREAD_S; kill -9 a dispatcher a third in."""
    start = time.monotonic()

    def paced(n: int) -> str:
        time.sleep(max(0.0, start + SUBMIT_SPREAD_S * n / JOBS - time.monotonic()))
        return submit(client, n)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(paced, n) for n in range(JOBS)]
        wait_until(lambda: len(receiver.received) >= JOBS // 3, 60, "a third of the deliveries")
        stack.procs["dispatcher-1"].kill()  # kill -9, attempts in flight
        assert stack.procs["dispatcher-1"].wait(timeout=10) == -9
        return [f.result() for f in futures]


def _check(
    stack: Stack,
    client: httpx.Client,
    receiver: WebhookReceiver,
    ids: list[str],
    refuser: Refuser,
) -> None:
    wanted = {f"{job_id}.async_job.completed" for job_id in ids}

    def all_delivered() -> bool:
        ok = {r.webhook_id for r in list(receiver.received) if r.answered == 200}
        return wanted <= ok

    wait_until(all_delivered, 90, "every job delivered", interval_s=0.5)
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for r in list(receiver.received):
        assert r.verified_by == (0,), r.webhook_id
        bodies[r.webhook_id].add(r.body)
    assert set(bodies) == wanted
    assert all(len(b) == 1 for b in bodies.values())  # one body per webhook-id
    assert refuser.refused >= JOBS * REFUSED_SHARE * 0.5  # the refusals did happen
    for job_id in ids:

        def recorded(job_id: str = job_id) -> dict[str, Any] | None:
            found = delivery(client, job_id)
            return found if found is not None and found["status"] == "delivered" else None

        record = wait_until(recorded, 30, f"{job_id} recorded as delivered")
        assert record["attempts"][-1]["status_code"] == 200
    for name in ("dispatcher-1", "dispatcher-2"):  # the kill hit a working dispatcher
        assert "delivered (200)" in stack.log(name), name
    port = int(re.findall(r"metrics on http://127.0.0.1:(\d+)", stack.log("dispatcher-2"))[-1])

    def nothing_owed() -> bool:
        samples = scrape(port)
        return samples.get(("imagejobs_webhook_owed", frozenset({("endpoint", "main")}))) == 0

    wait_until(nothing_owed, 30, "nothing owed at the end", interval_s=0.5)
