"""The counted fault run: several hundred slow jobs through two API processes and two
workers while a worker is killed with kill -9, nats-server is restarted on its store, an
API process is killed with kill -9, and another dies between recording a job and
publishing it. Afterwards every job
that got a 202 is terminal (completed), none completed twice, none stuck.

Clients behave as the README tells them to: a submit that fails with 503 or a dropped
connection is retried with the same Idempotency-Key, so a retry never makes a second job.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from imagejobs.testing import Stack, require_binary

from tests.conftest import orphan_via_failpoint

pytestmark = pytest.mark.e2e

JOBS = 400
SUBMIT_THREADS = 8
SUBMIT_SPREAD_S = 9.0
DEADLINE_S = 150.0
RETRIES: Counter[str] = Counter()  # submits a fault made the client retry, by cause


@pytest.fixture(scope="module")
def fault_run_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    config = {"ack_wait_s": 2.0, "worker_concurrency": 64, "max_attempts": 10}
    s = Stack(tmp_path_factory.mktemp("fault-run"), config, apis=2, workers=2)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def submit_with_retries(client: httpx.Client, n: int, start: float, stop_at: float) -> str:
    """Submit job `n` (not before `start`) until it is accepted, as a careful client does;
    returns its id."""
    time.sleep(max(0.0, start - time.monotonic()))
    body = {
        "model": "mock/m",
        "prompt": f"fault run {n}",
        "size": "16x16",
        "mock_latency_ms": random.randint(1000, 3000),
    }
    key = f"fault-run-{n}"
    while time.monotonic() < stop_at:
        try:
            r = client.post(
                "/v1/async/images/generations", json=body, headers={"Idempotency-Key": key}
            )
        except httpx.TransportError:
            RETRIES["transport"] += 1
            time.sleep(0.2)
            continue
        if r.status_code == 202:
            return str(r.json()["id"])
        assert r.status_code in (429, 502, 503), r.text  # transient only; never a 4xx/500
        RETRIES[str(r.status_code)] += 1
        time.sleep(0.2)
    raise AssertionError(f"job {n} was never accepted")


def test_fault_run_loses_nothing_and_completes_each_job_once(fault_run_stack: Stack) -> None:
    stack = fault_run_stack
    stop_at = time.monotonic() + DEADLINE_S
    ids: dict[int, str] = {}
    faults_done = threading.Event()

    def faults() -> None:
        time.sleep(1.5)
        victim = stack.procs["worker-1"]  # kill -9 a worker with jobs in hand
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        stack.start_worker()
        time.sleep(1.0)
        stack.restart_nats()  # on its store: the streams and records survive
        time.sleep(1.0)
        port = stack.api_ports[1]  # kill -9 an API process in the gateway's cluster
        api = stack.procs[f"api-{port}"]
        api.send_signal(signal.SIGKILL)
        api.wait()
        time.sleep(0.5)
        stack.start_api(port)
        faults_done.set()

    chaos = threading.Thread(target=faults)
    chaos.start()
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            begin = time.monotonic()  # paced over SUBMIT_SPREAD_S, so the faults hit submits too
            futures = {
                n: pool.submit(
                    submit_with_retries, client, n, begin + n * SUBMIT_SPREAD_S / JOBS, stop_at
                )
                for n in range(JOBS)
            }
            key, orphan = orphan_via_failpoint(stack)
            for n, future in futures.items():
                ids[n] = future.result()
        chaos.join(60)
        assert faults_done.is_set()

        # the orphan's client retries through the gateway and learns the id
        r = client.post(
            "/v1/async/images/generations",
            json={"model": "mock/m", "prompt": "orphan", "size": "16x16"},
            headers={"Idempotency-Key": key},
        )
        assert r.status_code == 202 and r.json()["id"] == orphan
        submitted = set(ids.values()) | {orphan}
        assert len(submitted) == JOBS + 1  # no retry made a second job

        final: dict[str, dict[str, Any]] = {}
        while len(final) < len(submitted) and time.monotonic() < stop_at:
            for job_id in submitted - set(final):
                got = client.get(f"/v1/async/images/generations/{job_id}")
                if got.status_code == 200:
                    final[job_id] = got.json()
            time.sleep(0.5)
    print(f"submit retries caused by the faults: {dict(RETRIES)}")
    stuck = submitted - set(final)
    assert not stuck, f"{len(stuck)} jobs never became terminal"
    statuses = Counter(job["status"] for job in final.values())
    assert statuses == {"completed": len(submitted)}, statuses
    logs = "".join(stack.log(n) for n in stack.procs if n.startswith("worker"))
    done = Counter(re.findall(r"job (\S+) completed", logs))
    assert max(done.values()) == 1, [j for j, c in done.items() if c > 1]
    assert set(done) <= submitted
    deliveries = Counter(int(r["deliveries"]) for r in records(stack, submitted))
    assert sum(c for d, c in deliveries.items() if d >= 2) > 0, deliveries  # faults hit jobs


def records(stack: Stack, ids: set[str]) -> list[dict[str, Any]]:
    """The raw job records, read straight from the KV stream."""
    import asyncio
    import json

    import nats

    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(f"nats://127.0.0.1:{stack.nats_port}")
        try:
            js = nc.jetstream()
            out = []
            for job_id in ids:
                msg = await js.get_msg("KV_JOBS", subject=f"$KV.JOBS.{job_id}", direct=True)
                assert msg.data is not None
                out.append(json.loads(msg.data))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())
