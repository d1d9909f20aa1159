"""The store contract: the semantics the service, the worker and the webhook dispatcher
rely on, checked against BOTH implementations of the store Protocols: JetStream on a real
nats-server (started here on a free loopback port, its streams declared afresh for every
test) and the in-memory twin the unit tests use (`store/memory.py`, on a fake clock).

Time: `elapse(s)` advances the fake clock, or really sleeps on JetStream (TTLs, ack_wait
and nak delays are server timers there). `eventually` polls a check with a deadline on
JetStream, where some writes (the index, cancel notices) are fire-and-forget; the twin
applies them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import BudgetExceeded, QueueFull, RateLimited, RevisionConflict
from imagejobs.domain.jobs import Job, StoredRequest
from imagejobs.domain.keys import KeyPolicy, owner_of
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.store import jetstream
from imagejobs.store import objects as object_store
from imagejobs.store.clock import FakeClock, settle
from imagejobs.store.deliveries import GoneMarker
from imagejobs.store.factory import jetstream_backend
from imagejobs.store.memory import memory_backend
from imagejobs.store.notifier import JetStreamNotifier
from imagejobs.store.protocols import Backend, Delivery, OutboxMessage
from imagejobs.testing import Stack
from imagejobs.webhooks.delivery import DeliveryRecord
from imagejobs.webhooks.endpoints import Event

ACK_WAIT_S = 1.5
QUEUE_MAX = 3
SHORT_S = 0.1  # a fetch that should find nothing


@dataclass
class Store:
    """A backend under test and how time passes for it."""

    backend: Backend
    elapse: Callable[[float], Awaitable[None]]
    now: Callable[[], float]
    real: bool  # JetStream

    async def fetch(self, batch: int, timeout_s: float) -> list[Delivery]:
        """A fetch that may wait `timeout_s`: on the fake clock, that time is made to pass."""
        fetching = asyncio.ensure_future(self.backend.work.fetch(batch, timeout_s))
        if not self.real:
            await settle()
            if not fetching.done():
                await self.elapse(timeout_s)
        return await fetching

    async def eventually(self, check: Callable[[], Awaitable[Any]], timeout_s: float = 5) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            result = await check()
            if result or not self.real:
                return result
            if time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.02)


HEAVY = owner_of("heavy")  # a key whose lane weighs 3 (fair share)


def settings_for(nats_port: int = 4222) -> Settings:
    return Settings.model_validate(
        {
            "nats_port": nats_port,
            "ack_wait_s": ACK_WAIT_S,
            "queue_max_jobs": QUEUE_MAX,
            "virtual_keys": {"heavy": {"key_sha256": "a" * 64, "weight": 3}},
        }
    )


@pytest.fixture(params=["memory", "jetstream"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        clock = FakeClock()
        yield Store(memory_backend(clock, settings_for()), clock.advance, clock.time, real=False)
        return
    server: Stack = request.getfixturevalue("nats_server")
    settings = settings_for(server.nats_port)
    nc, js = await jetstream.connect(settings, "test-contract")
    for config in jetstream.stream_configs(settings):  # a clean slate for every test
        with contextlib.suppress(Exception):  # absent before the first test
            await js.delete_stream(str(config.name))
    await jetstream.declare(js, settings)
    notifier = JetStreamNotifier(nc)
    await notifier.start()
    try:
        yield Store(
            jetstream_backend(nc, js, settings, notifier), asyncio.sleep, time.time, real=True
        )
    finally:
        await nc.close()


def new_job(store: Store, *, ttl_s: int = 60, owner: str = "") -> Job:
    return Job(
        id=str(uuid.uuid4()),
        kind=Kind.GENERATION,
        request_id="r",
        owner=owner,
        created_at=store.now(),
        ttl_s=ttl_s,
        request=StoredRequest(model=ModelRef.parse("mock/m"), prompt="p"),
    )


# --- records ---------------------------------------------------------------------------


async def test_records_create_only_and_compare_and_set(store: Store) -> None:
    records = store.backend.records
    job = new_job(store)
    first = await records.create(job)
    assert await records.get(job.id) == (job, first)
    with pytest.raises(RevisionConflict):
        await records.create(job)
    claimed = job.claim("w", store.now())
    second = await records.update(claimed, first)
    assert second > first
    with pytest.raises(RevisionConflict):
        await records.update(claimed.cancel(store.now()), first)  # stale revision
    assert await records.get(job.id) == (claimed, second)
    assert await records.get(str(uuid.uuid4())) is None


async def test_a_deleted_record_is_gone_and_its_marker_blocks_a_create(store: Store) -> None:
    records = store.backend.records
    job = new_job(store)
    await records.create(job)
    await records.delete(job.id)
    assert await records.get(job.id) is None
    with pytest.raises(RevisionConflict):
        await records.create(job)
    revision = await records.recreate(job)  # over the marker (a kept key's retry)
    assert await records.get(job.id) == (job, revision)
    with pytest.raises(RevisionConflict):
        await records.recreate(job)  # a record is there now


async def test_the_records_of_many_jobs_are_read_in_one_go(store: Store) -> None:
    records = store.backend.records
    jobs = [new_job(store) for _ in range(300)]  # more than one request's worth
    revisions = [await records.create(job) for job in jobs]
    gone = jobs.pop()
    await records.delete(gone.id)
    revisions.pop()
    found = await records.any_copies([j.id for j in jobs] + [gone.id, str(uuid.uuid4())])
    assert found == {j.id: (j, r) for j, r in zip(jobs, revisions, strict=True)}


async def test_terminal_record_and_objects_expire_on_their_ttl(store: Store) -> None:
    records, objects = store.backend.records, store.backend.objects
    job = new_job(store, ttl_s=1)
    revision = await records.create(job)
    await records.update(job.cancel(store.now()), revision)  # terminal: lives ttl_s
    big = bytes(range(256)) * 5000  # 1.28 MB: several chunks on JetStream
    assert await objects.put("obj-short", big, "image/png", ttl_s=1) == len(big)
    await objects.put("obj-long", b"kept", "image/webp", ttl_s=60)
    got = await objects.get("obj-short")
    assert got is not None and got.data == big and got.content_type == "image/png"
    await store.elapse(2.0)
    assert await records.get(job.id) is None
    await records.create(job)  # nothing left behind: the id is free again
    assert await objects.get("obj-short") is None
    kept = await objects.get("obj-long")
    assert kept is not None and kept.data == b"kept"
    assert await objects.get("never-written") is None


@pytest.mark.parametrize(
    "size",
    [0, 1, object_store.INLINE_BYTES, object_store.INLINE_BYTES + 1, constants.CHUNK_BYTES + 1],
)
async def test_an_object_of_any_size_reads_back_whole(store: Store, size: int) -> None:
    """Small objects are one message on JetStream (inline), larger ones chunks + meta."""
    data = bytes(i % 251 for i in range(size))
    assert await store.backend.objects.put(f"obj-{size}", data, "image/png", ttl_s=60) == size
    got = await store.backend.objects.get(f"obj-{size}")
    assert got is not None and got.data == data and got.content_type == "image/png"


async def test_a_small_object_stored_in_chunks_still_reads(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects a store holds from before inline objects (every one in chunks + meta)."""
    if not store.real:
        pytest.skip("the layout is JetStream's")
    monkeypatch.setattr(object_store, "INLINE_BYTES", -1)  # write the way older versions did
    await store.backend.objects.put("obj-old", b"small", "image/webp", ttl_s=60)
    monkeypatch.undo()
    got = await store.backend.objects.get("obj-old")
    assert got is not None and got.data == b"small" and got.content_type == "image/webp"


async def test_every_record_write_is_announced_in_order(store: Store) -> None:
    records, changes = store.backend.records, store.backend.changes
    job = new_job(store)
    with changes.listen(job.id) as listener:
        r1 = await records.create(job)
        claimed = job.claim("w", store.now())
        r2 = await records.update(claimed, r1)
        got = [await asyncio.wait_for(listener.queue.get(), 5) for _ in range(2)]
    assert got == [(r1, job), (r2, claimed)]


# --- the work queue --------------------------------------------------------------------


async def test_first_delivery_carries_the_record_and_ack_removes_it(store: Store) -> None:
    queue = store.backend.queue
    job = new_job(store)
    await queue.publish(job.id, job.dumps(), 7)
    assert await queue.contains(job.id)
    assert await queue.depth() == (1, 1)
    [delivery] = await store.fetch(5, 2.0)
    assert (delivery.job_id, delivery.num_delivered) == (job.id, 1)
    assert delivery.record() == (job, 7)
    assert await queue.depth() == (1, 0)
    await delivery.ack_sync()
    assert not await queue.contains(job.id)
    assert await store.fetch(5, SHORT_S) == []


async def test_publish_is_deduplicated_by_job_id_within_the_window(store: Store) -> None:
    queue = store.backend.queue
    job = new_job(store)
    await queue.publish(job.id)
    await queue.publish(job.id)
    deliveries = await store.fetch(5, 2.0)
    assert [d.job_id for d in deliveries] == [job.id]
    assert deliveries[0].record() is None  # published without the record
    await deliveries[0].ack_sync()
    await queue.publish(job.id)  # still within the window: dropped although consumed
    assert not await queue.contains(job.id)


async def test_a_full_queue_refuses_new_jobs_but_not_duplicates(store: Store) -> None:
    queue = store.backend.queue
    ids = [str(uuid.uuid4()) for _ in range(QUEUE_MAX)]
    for job_id in ids:
        await queue.publish(job_id)
    with pytest.raises(QueueFull) as info:
        await queue.publish(str(uuid.uuid4()))
    assert info.value.retry_after_s == jetstream.QUEUE_FULL_RETRY_AFTER_S
    await queue.publish(ids[0])  # a repeat is dropped before the bound is checked
    assert await queue.depth() == (QUEUE_MAX, QUEUE_MAX)


async def test_an_unacked_delivery_comes_back_after_ack_wait(store: Store) -> None:
    queue = store.backend.queue
    job = new_job(store)
    await queue.publish(job.id, job.dumps(), 3)
    [first] = await store.fetch(1, 2.0)
    assert await store.fetch(1, SHORT_S) == []  # held by the first delivery
    await store.elapse(ACK_WAIT_S + 0.5)
    [again] = await store.fetch(1, 2.0)
    assert (again.job_id, again.num_delivered) == (job.id, 2)
    assert again.record() is None  # only a first delivery carries the record
    await first.ack_sync()  # the old delivery still settles the message
    assert not await queue.contains(job.id)


async def test_in_progress_restarts_ack_wait(store: Store) -> None:
    queue = store.backend.queue
    await queue.publish(str(uuid.uuid4()))
    [delivery] = await store.fetch(1, 2.0)
    await store.elapse(ACK_WAIT_S * 0.55)
    await delivery.in_progress()
    await store.elapse(ACK_WAIT_S * 0.65)  # past the first ack_wait, not the second
    assert await store.fetch(1, SHORT_S) == []
    await delivery.ack_sync()


async def test_nak_delays_the_redelivery_and_term_ends_it(store: Store) -> None:
    queue = store.backend.queue
    job_id = str(uuid.uuid4())
    await queue.publish(job_id)
    [delivery] = await store.fetch(1, 2.0)
    await delivery.nak(1.0)
    assert await store.fetch(1, SHORT_S) == []
    await store.elapse(1.5)
    [again] = await store.fetch(1, 2.0)
    assert again.num_delivered == 2
    await again.term()  # fire-and-forget, like ack

    async def gone() -> bool:
        return not await queue.contains(job_id)

    assert await store.eventually(gone)
    await store.elapse(ACK_WAIT_S + 0.5)
    assert await store.fetch(1, SHORT_S) == []


async def test_cancel_notices_reach_subscribers(store: Store) -> None:
    queue = store.backend.queue
    heard: list[str] = []
    subscription = await store.backend.work.on_cancel(heard.append)
    job_id = str(uuid.uuid4())
    await queue.announce_cancel(job_id)

    async def arrived() -> bool:
        await asyncio.sleep(0)
        return heard == [job_id]

    assert await store.eventually(arrived)
    await subscription.close()


# --- fair share: a lane per owner, taken in weighted turns -----------------------------


async def publish_lanes(store: Store, counts: dict[str, int]) -> dict[str, list[str]]:
    """Queue `counts[owner]` jobs for each owner (in that order); their ids by owner."""
    ids: dict[str, list[str]] = {}
    for owner, n in counts.items():
        for _ in range(n):
            job_id = str(uuid.uuid4())
            await store.backend.queue.publish(job_id, owner=owner)
            ids.setdefault(owner, []).append(job_id)
    return ids


def by_owner(deliveries: list[Delivery], ids: dict[str, list[str]]) -> dict[str, list[str]]:
    owner_of_id = {j: o for o, js in ids.items() for j in js}
    out: dict[str, list[str]] = {}
    for d in deliveries:
        out.setdefault(owner_of_id[d.job_id], []).append(d.job_id)
    return out


async def test_owners_lanes_are_taken_in_turns_each_in_submit_order(store: Store) -> None:
    ids = await publish_lanes(store, {"vk-a": 2, "vk-b": 1})  # QUEUE_MAX (3) jobs at most
    first = by_owner(await store.fetch(2, 2.0), ids)
    assert first == {"vk-a": ids["vk-a"][:1], "vk-b": ids["vk-b"]}
    rest = await store.fetch(2, 2.0)
    assert [d.job_id for d in rest] == ids["vk-a"][1:]
    for d in rest:
        await d.ack_sync()


async def test_a_heavier_lane_takes_its_weight_in_picks(store: Store) -> None:
    ids = await publish_lanes(store, {HEAVY: 2, "": 1})  # the bound: QUEUE_MAX jobs
    taken = by_owner(await store.fetch(3, 2.0), ids)
    assert {o: len(js) for o, js in taken.items()} == {HEAVY: 2, "": 1}
    assert taken[HEAVY] == ids[HEAVY]  # in submit order within the lane


async def test_a_lanes_unacked_delivery_comes_back_after_ack_wait(store: Store) -> None:
    ids = await publish_lanes(store, {"vk-a": 1})
    [first] = await store.fetch(1, 2.0)
    assert first.job_id == ids["vk-a"][0]
    assert await store.fetch(1, SHORT_S) == []
    await store.elapse(ACK_WAIT_S + 0.5)
    [again] = await store.fetch(1, 2.0)
    assert (again.job_id, again.num_delivered) == (first.job_id, 2)
    await again.ack_sync()


async def test_queued_counts_an_owners_waiting_jobs_and_contains_finds_its_lane(
    store: Store,
) -> None:
    queue = store.backend.queue
    ids = await publish_lanes(store, {"vk-a": 2, "vk-b": 1})

    async def waiting(owner: str) -> int:
        return await queue.queued(owner)

    assert await store.eventually(lambda: _equals(waiting("vk-a"), 2))
    assert await queue.queued("vk-b") == 1 and await queue.queued("vk-none") == 0
    job = ids["vk-a"][0]
    assert await queue.contains(job, owner="vk-a") and await queue.contains(job)
    assert not await queue.contains(job, owner="vk-b")
    taken = await store.fetch(3, 2.0)
    assert len(taken) == 3
    assert await store.eventually(lambda: _equals(waiting("vk-a"), 0))
    assert await queue.contains(job)  # taken, not acked: still in the queue


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_spend_counts_once_per_message_id_and_settles_once(store: Store) -> None:
    budgets = store.backend.budgets
    policy = KeyPolicy(id="spender", budget_usd=1.0)
    hold = await budgets.reserve(policy, "job-1", 30_000)
    assert await budgets.reserve(policy, "job-1", 30_000) == hold  # a retried submit
    spend = await budgets.usage(policy)
    assert (spend.used, spend.reserved) == (30_000, 30_000)
    await budgets.settle(hold, "job-1", 12_345)
    await budgets.settle(hold, "job-1", 12_345)
    spend = await budgets.usage(policy)
    assert (spend.used, spend.reserved, spend.spent) == (12_345, 0, 12_345)
    with pytest.raises(BudgetExceeded):
        await budgets.reserve(policy, "job-2", 1_000_000)
    spend = await budgets.usage(policy)
    assert (spend.used, spend.reserved) == (12_345, 0)  # the refused one holds nothing


# --- index, idempotency, quotas --------------------------------------------------------


async def test_the_index_lists_an_owners_jobs_newest_first(store: Store) -> None:
    index = store.backend.index
    now = store.now()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    await index.add("alice", Kind.GENERATION, now - 3, ids[0])
    await index.add("alice", Kind.EDIT, now - 2, ids[1])
    await index.add("alice", Kind.GENERATION, now - 1, ids[2])
    await index.add("bob", Kind.GENERATION, now, str(uuid.uuid4()))

    async def alices() -> list[str]:
        return [e.job_id for e in (await index.page("alice", None, 0, 10)).entries]

    assert await store.eventually(lambda: _equal(alices(), ids[::-1])) == ids[::-1]
    generations = (await index.page("alice", Kind.GENERATION, 0, 10)).entries
    assert [e.job_id for e in generations] == [ids[2], ids[0]]
    assert [e.job_id for e in (await index.page("", None, 0, 10)).entries] == []


async def _all_pages(store: Store, owner: str, kind: Kind | None, limit: int) -> list[list[str]]:
    """Every page of the owner's index, following each page's position (bounded)."""
    pages: list[list[str]] = []
    before = 0
    for _ in range(100):
        page = await store.backend.index.page(owner, kind, before, limit)
        pages.append([e.job_id for e in page.entries])
        assert all(e.seq < before for e in page.entries) or not before
        if not page.next_before:
            return pages
        assert page.next_before == page.entries[-1].seq  # the last entry's position
        before = page.next_before
    raise AssertionError("the pages never ended")


async def test_index_pages_follow_the_order_of_the_writes_with_a_kind_filter(
    store: Store,
) -> None:
    """Pages are newest write first, each starting below the last one's final entry; the
    kind filter pages the same way; an entry written again (a retried submit) keeps its
    place; the creation time in the subject does not order them."""
    index = store.backend.index
    now = store.now()
    kinds = [Kind.GENERATION, Kind.EDIT, Kind.GENERATION, Kind.VARIATION, Kind.GENERATION]
    ids = [str(uuid.uuid4()) for _ in range(10)]
    for n, job_id in enumerate(ids):  # created times run backwards: sequence order wins
        await index.add("carol", kinds[n % 5], now - n, job_id)
        await index.add(f"other{n}", Kind.GENERATION, now, str(uuid.uuid4()))
    newest_first = ids[::-1]
    assert await _all_pages(store, "carol", None, 3) == [
        newest_first[0:3],
        newest_first[3:6],
        newest_first[6:9],
        newest_first[9:10],
    ]
    assert await _all_pages(store, "carol", None, 5) == [newest_first[0:5], newest_first[5:]]
    generations = [i for n, i in enumerate(ids) if kinds[n % 5] is Kind.GENERATION][::-1]
    assert await _all_pages(store, "carol", Kind.GENERATION, 4) == [
        generations[0:4],
        generations[4:6],
    ]
    await index.add("carol", kinds[0], now, ids[0])  # a retried submit's: keeps its place
    [top] = (await index.page("carol", None, 0, 1)).entries
    assert top.job_id == ids[9] and top.kind == Kind.GENERATION.value
    assert await _all_pages(store, "carol", None, 5) == [newest_first[0:5], newest_first[5:]]
    assert await _all_pages(store, "nobody", None, 3) == [[]]


async def test_an_index_page_spans_other_owners_entries(store: Store) -> None:
    """A caller's entries far apart in the stream (another caller wrote many between)
    are still found, the page widening down to them; a page token's position in that gap
    goes on correctly."""
    index = store.backend.index
    now = store.now()
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    await index.add("dave", Kind.GENERATION, now, old)
    await asyncio.gather(
        *(index.add("erin", Kind.GENERATION, now, str(uuid.uuid4())) for _ in range(600))
    )
    await index.add("dave", Kind.GENERATION, now, new)
    assert await _all_pages(store, "dave", None, 1) == [[new], [old]]
    assert await _all_pages(store, "dave", None, 20) == [[new, old]]
    [entry] = (await index.page("dave", None, 0, 1)).entries
    below = await index.page("dave", None, entry.seq - 300, 5)  # a position in the gap
    assert ([e.job_id for e in below.entries], below.next_before) == ([old], 0)


async def test_index_pages_of_a_caller_buried_under_another_callers_entries(
    store: Store,
) -> None:
    """300 entries of one caller, then 1,100 of another's on top: every page of the first
    is whole and in order (the JetStream index narrows its reads to find them)."""
    index = store.backend.index
    now = store.now()
    ids = [str(uuid.uuid4()) for _ in range(300)]
    for first in range(0, 300, 100):  # concurrent on one connection: sequenced as called
        await asyncio.gather(*(index.add("frank", Kind.EDIT, now, i) for i in ids[first:][:100]))
    for _ in range(11):
        await asyncio.gather(
            *(index.add("gina", Kind.EDIT, now, str(uuid.uuid4())) for _ in range(100))
        )
    pages = await _all_pages(store, "frank", Kind.EDIT, 50)
    assert [len(p) for p in pages] == [50] * 6
    assert [i for p in pages for i in p] == ids[::-1]


async def test_an_index_page_crosses_a_gap_below_a_callers_newest_entries(
    store: Store,
) -> None:
    """100 entries of one caller, 300 of another's, 3 more of the first: its pages of 5
    cross the gap (the JetStream index probes the leader for the newest entry below it,
    the caller having too many below for one read)."""
    index = store.backend.index
    now = store.now()
    ids = [str(uuid.uuid4()) for _ in range(103)]
    await asyncio.gather(*(index.add("hank", Kind.GENERATION, now, i) for i in ids[:100]))
    for _ in range(3):
        await asyncio.gather(
            *(index.add("ivy", Kind.GENERATION, now, str(uuid.uuid4())) for _ in range(100))
        )
    await asyncio.gather(*(index.add("hank", Kind.GENERATION, now, i) for i in ids[100:]))
    pages = await _all_pages(store, "hank", None, 5)
    assert [i for p in pages for i in p] == ids[::-1]
    assert [len(p) for p in pages[:-1]] == [5] * 20 and len(pages[-1]) == 3


async def _equal(value: Awaitable[list[str]], expected: list[str]) -> list[str] | None:
    got = await value
    return got if got == expected else None


async def test_an_idempotency_key_binds_once_per_owner(store: Store) -> None:
    keys = store.backend.idempotency
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    results = await asyncio.gather(*(keys.claim("alice", "k", a, "fp") for _ in range(8)))
    assert results.count(None) == 1
    assert {(c.job_id, c.fingerprint) for c in results if c is not None} == {(a, "fp")}
    assert await keys.claim("bob", "k", b, "fp") is None  # per owner
    await keys.release("alice", "k")
    assert await keys.claim("alice", "k", b, "fp2") is None  # free again after a release
    again = await keys.claim("alice", "k", a, "fp")
    assert again is not None and again.job_id == b


async def test_concurrency_slots_and_the_per_minute_rate(store: Store) -> None:
    quotas, records = store.backend.quotas, store.backend.records
    policy = KeyPolicy(id=f"k{uuid.uuid4().hex[:8]}", max_concurrent_jobs=2, requests_per_minute=3)
    jobs = [new_job(store) for _ in range(3)]
    revisions = [await records.create(j) for j in jobs]
    slots = [await quotas.acquire(policy, j.id) for j in jobs[:2]]
    assert len(set(slots)) == 2
    with pytest.raises(RateLimited) as info:
        await quotas.acquire(policy, jobs[2].id)
    assert info.value.code == "concurrency_limited"
    await records.update(jobs[0].cancel(store.now()), revisions[0])  # ended, not released
    assert await quotas.acquire(policy, jobs[2].id) == slots[0]  # reclaimed
    await quotas.release(slots[1], jobs[1].id)
    assert await quotas.acquire(policy, jobs[0].id) == slots[1]
    for _ in range(3):
        await quotas.take_request(policy)
    with pytest.raises(RateLimited) as info:
        await quotas.take_request(policy)
    assert info.value.retry_after_s is not None and 1 <= info.value.retry_after_s <= 60


# --- the webhook outbox and delivery records ---------------------------------------------


async def test_the_outbox_dedupes_by_message_id_per_endpoint(store: Store) -> None:
    outbox, work = store.backend.outbox, store.backend.outbox_work
    await work.open("a", ACK_WAIT_S)
    await work.open("b", ACK_WAIT_S)
    job_id = str(uuid.uuid4())
    await outbox.publish("a", f"{job_id}.async_job.completed", job_id, b"one")
    await outbox.publish("a", f"{job_id}.async_job.completed", job_id, b"one again")  # dropped
    await outbox.publish("b", f"{job_id}.async_job.failed", job_id, b"other")
    assert await work.owed("a") == 1 and await work.owed("b") == 1
    [message] = await _fetch_outbox(store, "a")
    assert message.data == b"one"
    assert [m.data for m in await _fetch_outbox(store, "b")] == [b"other"]  # its own queue
    assert await work.owed("a") == 1  # in flight is still owed
    await message.ack_sync()
    assert await work.owed("a") == 0
    assert await _fetch_outbox(store, "a", SHORT_S) == []


async def test_an_outbox_message_waits_out_its_nak_and_comes_back_after_ack_wait(
    store: Store,
) -> None:
    outbox, work = store.backend.outbox, store.backend.outbox_work
    await work.open("a", ACK_WAIT_S)
    job_id = str(uuid.uuid4())
    await outbox.publish("a", job_id, job_id, b"x")
    [message] = await _fetch_outbox(store, "a")
    await message.nak(1.0)  # a retry, waiting for its backoff
    assert await _fetch_outbox(store, "a", SHORT_S) == []
    assert await work.owed("a") == 1
    await store.elapse(1.5)
    [again] = await _fetch_outbox(store, "a")  # a dispatcher that takes it and dies:
    assert again.data == b"x"
    await store.elapse(ACK_WAIT_S + 0.5)
    [third] = await _fetch_outbox(store, "a")  # ... is replaced after ack_wait
    await third.ack_sync()
    assert await work.owed("a") == 0


async def _fetch_outbox(store: Store, endpoint: str, timeout_s: float = 2.0) -> list[OutboxMessage]:
    fetching = asyncio.ensure_future(store.backend.outbox_work.fetch(endpoint, 5, timeout_s))
    if not store.real:
        await settle()
        if not fetching.done():
            await store.elapse(timeout_s)
    return await fetching


async def test_delivery_records_are_compare_and_set_with_a_ttl_and_gone_markers(
    store: Store,
) -> None:
    deliveries = store.backend.deliveries
    job = new_job(store, owner="alice").model_copy(update={"webhook": "a"})
    record = DeliveryRecord.owed(job.cancel(store.now()), Event.CANCELLED, '{"b":1}')
    first = await deliveries.put(record, ttl_s=1, expected=0)
    with pytest.raises(RevisionConflict):
        await deliveries.put(record, ttl_s=1, expected=0)
    assert await deliveries.get(job.id) == (record, first)
    moved = record.redelivered(1, store.now())
    second = await deliveries.put(moved, ttl_s=1, expected=first)
    with pytest.raises(RevisionConflict):
        await deliveries.put(moved, ttl_s=1, expected=first)
    assert await deliveries.get(job.id) == (moved, second)
    assert await deliveries.gone("a") is None
    marker = GoneMarker(fingerprint="f", at=store.now(), webhook_id=record.webhook_id)
    await deliveries.mark_gone("a", marker)
    assert await deliveries.gone("a") == marker
    await store.elapse(2.0)
    assert await deliveries.get(job.id) is None
    assert await deliveries.gone("a") == marker
