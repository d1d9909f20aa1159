"""Budgets across a worker's crash, on real processes.

- A budgeted key's jobs are in a worker's hands when it is killed with SIGKILL; another
  worker takes them over. Counted: every job completes once and costs its price, and the
  key's usage ends with exactly their sum spent and nothing left reserved.
- A worker dies right after a job's terminal write, before settling its hold (the
  `worker.after_terminal_write` failpoint), three times: the job reads completed while its
  reservation is still held; the next worker gets the job's message again, finds it
  terminal, and settles the hold once, to the job's cost."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from imagejobs.domain import constants
from imagejobs.domain.budget import micro, usd
from imagejobs.testing import Stack, require_binary, wait_until

from tests.conftest import submit, wait_terminal
from tests.faults.test_faults import completions, job_record

pytestmark = pytest.mark.e2e

KEY = f"sk-bf-budget-crash-{uuid.uuid4().hex}"
PRICE = 0.01
JOBS = 24
SLOTS = 4
LATENCY_MS = 1200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    config: dict[str, Any] = {
        "ack_wait_s": 2.0,
        "worker_concurrency": SLOTS,
        "providers": {"mock": {}},
        "pricing": [{"model": "mock/priced-*", "per_image_usd": PRICE}],
        "virtual_keys": {
            "team": {
                "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                "budget_usd": 1.0,
                "budget_period": "total",
            }
        },
    }
    s = Stack(tmp_path_factory.mktemp("budget-faults"), config, workers=1)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def usage(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/v1/async/images/usage")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_holds_a_killed_worker_left_are_settled_once_by_the_next(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30, headers={"x-bf-vk": KEY}) as c:
        body = {"model": "mock/priced-1", "size": "16x16", "mock_latency_ms": LATENCY_MS}
        ids = []
        for i in range(JOBS):
            r = submit(c, {**body, "prompt": f"crash {i}"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        assert usage(c)["reserved_usd"] > 0

        # kill the worker once it holds a full set of running jobs
        def running() -> bool:
            statuses = [
                c.get(f"/v1/async/images/generations/{j}").json().get("status") for j in ids
            ]
            return statuses.count("processing") >= SLOTS

        wait_until(running, 30, "the worker to hold its slots")
        stack.procs["worker-1"].send_signal(signal.SIGKILL)
        stack.procs["worker-1"].wait(timeout=10)
        time.sleep(0.5)
        stack.start_worker()

        jobs = [wait_terminal(c, j, timeout_s=120).json() for j in ids]
        assert [j["status"] for j in jobs] == ["completed"] * JOBS
        assert [j["result"]["extra_fields"]["cost_usd"] for j in jobs] == [PRICE] * JOBS
        redelivered = [j for j in ids if int(str(job_record(stack, j)["deliveries"])) > 1]
        assert redelivered, "no job was in the killed worker's hands"
        assert all(completions(stack, j) == 1 for j in ids), [completions(stack, j) for j in ids]

        expected = usd(micro(PRICE) * JOBS)

        def settled() -> dict[str, Any] | None:
            doc = usage(c)
            return doc if doc["reserved_usd"] == 0 else None

        doc = wait_until(settled, 30, "every hold to be settled")
        assert doc["spent_usd"] == expected, (doc, len(redelivered))
        assert doc["remaining_usd"] == usd(micro(1.0) - micro(expected))
        print(f"\n{len(redelivered)} of {JOBS} jobs redelivered after the kill; spent {expected}")


def held(stack: Stack, job_id: str) -> str | None:
    """The job's budget hold as stored (None when there is none), read straight from the
    store: a usage read would sweep it."""
    import asyncio

    import nats
    from imagejobs.store.budgets import hold_subject
    from nats.js.errors import NotFoundError

    async def read() -> str | None:
        nc = await nats.connect(f"nats://127.0.0.1:{stack.nats_port}")
        try:
            msg = await nc.jetstream().get_msg(
                constants.LIMIT_STREAM, subject=hold_subject("team", job_id)
            )
        except NotFoundError:
            return None
        finally:
            await nc.close()
        return (msg.data or b"").decode() or None

    return asyncio.run(read())


def live_workers(stack: Stack) -> list[subprocess.Popen[bytes]]:
    return [p for n, p in stack.procs.items() if n.startswith("worker") and p.poll() is None]


def test_a_hold_left_by_a_worker_that_died_after_the_terminal_write_is_settled_once(
    stack: Stack,
) -> None:
    for proc in live_workers(stack):
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    dying = {"IMAGEJOBS_FAILPOINT": constants.FAILPOINT_AFTER_TERMINAL_WRITE}
    body = {"model": "mock/priced-1", "size": "16x16", "mock_latency_ms": 0}
    with httpx.Client(base_url=stack.url, timeout=30, headers={"x-bf-vk": KEY}) as c:
        for round_ in range(3):
            before = usage(c)
            assert before["reserved_usd"] == 0, before
            _, proc = stack.start_worker(dying)
            r = submit(c, {**body, "prompt": f"unpaid {round_}"})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            assert proc.wait(timeout=30) == 137  # died at the failpoint
            job = c.get(f"/v1/async/images/generations/{job_id}").json()
            assert job["status"] == "completed", job
            hold = held(stack, job_id)  # the crash left the reservation held, not settled
            assert hold is not None and json.loads(hold)["settling"] is False, hold

            _, healthy = stack.start_worker()

            def settled() -> dict[str, Any] | None:
                doc = usage(c)
                return doc if doc["reserved_usd"] == 0 else None

            after = wait_until(settled, 30, "the next worker to settle the hold")
            assert after["spent_usd"] == usd(micro(before["spent_usd"]) + micro(PRICE)), after
            # the redelivery found the job terminal: paid its debt, did not run it again
            assert c.get(f"/v1/async/images/generations/{job_id}").json() == job
            assert job_record(stack, job_id)["deliveries"] == 1
            healthy.send_signal(signal.SIGTERM)
            healthy.wait(timeout=20)
        final = usage(c)
        assert final["remaining_usd"] == usd(micro(1.0) - micro(final["spent_usd"]))
