"""Quota state in JetStream against a real nats-server: concurrent submits never overfill
a key's concurrency slots, a slot whose releaser died is reclaimed, the rate bucket holds
across callers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from imagejobs.config import load_settings
from imagejobs.domain.errors import RateLimited
from imagejobs.domain.jobs import Job, StoredRequest
from imagejobs.domain.keys import KeyPolicy
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.store import jetstream as connector
from imagejobs.store.factory import jetstream_backend
from imagejobs.store.protocols import JobStore, Quotas
from imagejobs.testing import Stack


@pytest.fixture
async def quotas(nats_server: Stack, tmp_path: Path) -> AsyncIterator[tuple[Quotas, JobStore]]:
    settings = load_settings(nats_server.config_path)
    nc, js = await connector.connect(settings, "test-quotas")
    await connector.declare(js, settings)
    backend = jetstream_backend(nc, js, settings)
    try:
        yield backend.quotas, backend.records
    finally:
        await nc.close()


def job(job_id: str) -> Job:
    return Job(
        id=job_id,
        kind=Kind.GENERATION,
        request_id="r",
        created_at=time.time(),
        ttl_s=60,
        request=StoredRequest(model=ModelRef.parse("mock/m"), prompt="p"),
    )


async def test_concurrent_acquires_never_exceed_the_limit(
    quotas: tuple[Quotas, JobStore],
) -> None:
    q, store = quotas
    policy = KeyPolicy(id="race", max_concurrent_jobs=5)
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(20)]
    for i in ids:
        await store.create(job(i))  # live (pending) jobs: nothing to reclaim
    results = await asyncio.gather(*(q.acquire(policy, i) for i in ids), return_exceptions=True)
    slots = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(slots) == 5 and len(set(slots)) == 5
    assert len(refused) == 15
    assert all(e.code == "concurrency_limited" and e.retry_after_s for e in refused)


async def test_release_frees_and_a_dead_releasers_slot_is_reclaimed(
    quotas: tuple[Quotas, JobStore],
) -> None:
    q, store = quotas
    policy = KeyPolicy(id="reclaim", max_concurrent_jobs=1)
    a, b, c = (f"00000000-0000-4000-9000-{i:012d}" for i in range(3))
    for i in (a, b, c):
        await store.create(job(i))
    slot = await q.acquire(policy, a)
    with pytest.raises(RateLimited):
        await q.acquire(policy, b)
    await q.release(slot, a)
    slot_b = await q.acquire(policy, b)
    assert slot_b == slot
    await q.release(slot, a)  # a stale release does not free b's slot
    with pytest.raises(RateLimited):
        await q.acquire(policy, c)
    # b ends, but whoever ended it died before releasing: c reclaims the slot
    found = await store.get(b)
    assert found is not None
    record, revision = found
    await store.update(record.cancel(time.time()), revision)
    assert await q.acquire(policy, c) == slot


async def test_rate_limit_is_exact_under_concurrency(quotas: tuple[Quotas, JobStore]) -> None:
    q, _ = quotas
    policy = KeyPolicy(id="rate", requests_per_minute=600)  # 10 per second
    outcomes = await asyncio.gather(
        *(q.take_request(policy) for _ in range(650)), return_exceptions=True
    )
    taken = sum(1 for o in outcomes if o is None)
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert taken + len(refused) == 650  # nothing else went wrong
    assert 595 <= taken <= 605  # exactly 600, unless the run straddled a minute boundary
    assert all(e.retry_after_s is not None and 1 <= e.retry_after_s <= 60 for e in refused)
    other = KeyPolicy(id="rate-other", requests_per_minute=600)
    await q.take_request(other)  # per key
