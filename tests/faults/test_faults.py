"""Crashes and shutdowns with real processes: a worker killed with kill -9 mid-job, a
worker drained by SIGTERM, the backend down. (`imagejobs up`: test_up.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from imagejobs import gateway
from imagejobs.testing import Stack, free_port, require_binary, tcp_open, wait_until

from tests.conftest import assert_error_body, decode_image, png, submit, wait_terminal

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    s = Stack(tmp_path_factory.mktemp("faults"), {"ack_wait_s": 1.5}, workers=0)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def job_record(stack: Stack, job_id: str) -> dict[str, object]:
    """The raw KV record, read through a one-off client process-free NATS call."""
    import asyncio

    import nats

    async def read() -> dict[str, object]:
        nc = await nats.connect(f"nats://127.0.0.1:{stack.nats_port}")
        try:
            msg = await nc.jetstream().get_msg("KV_JOBS", subject=f"$KV.JOBS.{job_id}", direct=True)
            assert msg.data is not None
            record: dict[str, object] = json.loads(msg.data)
            return record
        finally:
            await nc.close()

    return asyncio.run(read())


def completions(stack: Stack, job_id: str) -> int:
    return sum(
        stack.log(n).count(f"job {job_id} completed") for n in stack.procs if n.startswith("worker")
    )


@pytest.mark.parametrize("kind", ["generations", "edits"])
def test_worker_killed_mid_job_still_completes_once(fault_stack: Stack, kind: str) -> None:
    fault_stack.start_worker()
    with httpx.Client(base_url=fault_stack.url, timeout=30) as client:
        if kind == "edits":  # the upload is in the object store; the redelivery re-reads it
            r = client.post(
                "/v1/async/images/edits",
                data={"model": "mock/m", "prompt": "slow", "mock_latency_ms": "3000"},
                files=[("image", ("a.png", png(40, 30, (1, 2, 3)), "image/png"))],
            )
        else:
            body = {"model": "mock/m", "prompt": "slow", "size": "16x16", "mock_latency_ms": 3000}
            r = submit(client, body)
        job_id = r.json()["id"]
        wait_until(lambda: job_record(fault_stack, job_id)["status"] == "processing", 10, "claim")
        pid = int(str(job_record(fault_stack, job_id)["worker"]).rsplit("-", 1)[1])
        holder = next(p for p in fault_stack.procs.values() if p.pid == pid)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        fault_stack.start_worker()
        job = wait_terminal(client, job_id, kind=kind, timeout_s=30).json()
    assert job["status"] == "completed"
    if kind == "edits":
        assert decode_image(job["result"]["data"][0]["b64_json"]).size == (40, 30)
    record = job_record(fault_stack, job_id)
    assert record["deliveries"] == 2
    assert completions(fault_stack, job_id) == 1


def test_worker_sigterm_finishes_in_flight_job_then_exits(fault_stack: Stack) -> None:
    fault_stack.start_worker()
    with httpx.Client(base_url=fault_stack.url, timeout=30) as client:
        r = submit(
            client, {"model": "mock/m", "prompt": "drain", "size": "16x16", "mock_latency_ms": 1500}
        )
        job_id = r.json()["id"]
        wait_until(lambda: job_record(fault_stack, job_id)["status"] == "processing", 10, "claim")
        pid = int(str(job_record(fault_stack, job_id)["worker"]).rsplit("-", 1)[1])
        name, worker = next((n, p) for n, p in fault_stack.procs.items() if p.pid == pid)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        job = client.get(f"/v1/async/images/generations/{job_id}").json()
    assert job["status"] == "completed"  # finished before the worker exited
    assert "stopped" in fault_stack.log(name)


def test_backend_down_is_503_with_error_body_and_health_503(
    fault_stack: Stack, tmp_path: Path
) -> None:
    settings = fault_stack.settings.model_copy(
        update={"gateway_port": free_port(), "gateway_admin_port": free_port()}
    )
    config = gateway.render(settings, tmp_path, api_hosts=[("127.0.0.1", free_port())])
    proc = subprocess.Popen(
        gateway.command(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{settings.gateway_port}"
        wait_until(lambda: tcp_open(settings.gateway_port), 20, "envoy")
        r = httpx.post(
            f"{url}/v1/async/images/generations", json={"model": "mock/m", "prompt": "p"}
        )
        assert_error_body(r, 503)
        assert httpx.get(f"{url}/health").status_code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=10)
