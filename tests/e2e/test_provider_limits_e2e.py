"""A provider's `concurrency` holds across workers: two worker processes, one fake
upstream that counts the requests it is serving at once. Its peak never exceeds the
provider's `concurrency`, and every job completes, even those that waited for a slot
longer than their whole `job_timeout_s` (waiting is not the job's time)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from imagejobs.testing import Stack, require_binary

from tests.conftest import submit, wait_terminal
from tests.fakes.openai import FakeOpenAI
from tests.fakes.upstream import FakeRequest, FakeResponse

pytestmark = pytest.mark.e2e

CONCURRENCY = 2
JOBS = 12
CALL_S = 0.6  # each upstream call takes this long
JOB_TIMEOUT_S = 2.0  # shorter than the last jobs' wait for a slot (12 * 0.6 / 2 = 3.6 s)


class CountingOpenAI(FakeOpenAI):
    """FakeOpenAI whose generations take CALL_S and count how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        super().__init__()

    def _generations(self, req: FakeRequest) -> FakeResponse:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(CALL_S)
            return super()._generations(req)
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture(scope="module")
def upstream() -> Iterator[CountingOpenAI]:
    with CountingOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: CountingOpenAI) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    config: dict[str, Any] = {
        "worker_concurrency": 8,
        "job_timeout_s": JOB_TIMEOUT_S,
        "providers": {
            "openai-compatible": {
                "base_url": upstream.url,
                "concurrency": CONCURRENCY,
                "max_retries": 0,
            }
        },
    }
    s = Stack(tmp_path_factory.mktemp("provider-limits"), config, workers=2)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_two_workers_never_exceed_the_providers_concurrency_and_every_job_completes(
    stack: Stack, upstream: CountingOpenAI
) -> None:
    body = {"model": "openai-compatible/flux-dev", "prompt": "a fox", "size": "256x256"}
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        ids = []
        for _ in range(JOBS):
            r = submit(client, body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        finals = [wait_terminal(client, job_id, timeout_s=60).json() for job_id in ids]
    assert [j["status"] for j in finals] == ["completed"] * JOBS, [
        j.get("error") for j in finals if j["status"] != "completed"
    ]
    assert upstream.peak == CONCURRENCY  # reached, never exceeded
    assert len(upstream.requests_to("/v1/images/generations")) == JOBS  # no call repeated
