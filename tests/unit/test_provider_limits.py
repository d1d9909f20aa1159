"""Providers' cluster-wide limits on the in-memory store and a fake clock: slots are leases
that their holders renew and give back, and that free themselves when a holder dies;
two workers' gates sharing the store never hold more than `concurrency` calls, and a
call that finds them full waits (it does not fail) and goes on when one is freed; a
cancelled wait takes nothing; requests beyond `requests_per_minute` wait for the window."""

from __future__ import annotations

import asyncio

import pytest
from imagejobs.config import Settings
from imagejobs.store.clock import FakeClock, settle
from imagejobs.store.memory import memory_backend
from imagejobs.store.protocols import ProviderLimits, Subjects
from imagejobs.store.provider_limits import LOWEST_CANDIDATES, ProviderSlots, slots_pattern
from imagejobs.worker.limits import ProviderGate

LEASE_S = 6


@pytest.fixture
def limits(clock: FakeClock) -> ProviderLimits:
    return memory_backend(clock, Settings(ack_wait_s=LEASE_S)).providers


def backend_slots(limits: ProviderLimits) -> Subjects:
    assert isinstance(limits, ProviderSlots)
    return limits._slots


async def test_slots_are_leases_taken_renewed_released_and_lost_by_a_dead_holder(
    limits: ProviderLimits, clock: FakeClock
) -> None:
    assert limits.lease_s == LEASE_S
    a = await limits.take("openai", 2, "job-a")
    b = await limits.take("openai", 2, "job-b")
    assert a is not None and b is not None and a.subject != b.subject
    assert await limits.take("openai", 2, "job-c") is None  # full
    assert await limits.take("gemini", 2, "job-c") is not None  # another provider's own
    await clock.advance(LEASE_S - 1)
    renewed = await limits.renew(a)  # a's holder is alive: good for another lease
    assert renewed is not None
    await clock.advance(2)  # b's holder died: its lease ran out
    assert await limits.renew(b) is None
    c = await limits.take("openai", 2, "job-c")
    assert c is not None and c.subject == b.subject
    await limits.release(renewed)
    assert await limits.take("openai", 2, "job-d") is not None
    await limits.release(b)  # a lost lease's release gives nothing back
    assert await limits.take("openai", 2, "job-e") is None


async def test_a_large_concurrency_writes_only_about_as_many_slots_as_calls_in_flight(
    limits: ProviderLimits,
) -> None:
    """Every take reads every slot ever written (released ones leave a marker for a
    while): with 600 slots and 4 calls at a time, the takes stay on a few low slots."""
    in_flight = 4
    for round_ in range(50):
        leases = [await limits.take("mock", 600, f"job-{round_}-{i}") for i in range(in_flight)]
        for lease in leases:
            assert lease is not None
            await limits.release(lease)
    touched = await backend_slots(limits).any_copies(slots_pattern("mock"))
    slots = {int(subject.rsplit(".", 1)[1]) for subject in touched}
    assert max(slots) < LOWEST_CANDIDATES + in_flight  # the lowest free, while 3 are held


async def test_a_take_reads_every_slot_only_when_it_knows_of_no_free_one(
    limits: ProviderLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 calls at once and 4,096 slots: a take is one compare-and-set on a slot this
    process knows to be free (from its last read, or given back by its own calls), not a
    read of every slot (which made the takes O(calls in flight) each)."""
    slots = backend_slots(limits)
    read = slots.any_copies
    reads: list[str] = []

    async def counted(pattern: str) -> dict[str, tuple[bytes, int]]:
        reads.append(pattern)
        return await read(pattern)

    monkeypatch.setattr(slots, "any_copies", counted)
    for round_ in range(3):
        leases = [await limits.take("mock", 4096, f"job-{round_}-{i}") for i in range(2000)]
        assert all(lease is not None for lease in leases)
        assert len({lease.subject for lease in leases if lease is not None}) == 2000
        for lease in leases:
            assert lease is not None
            await limits.release(lease)
    assert len(reads) == 1  # the first take's; then the free ones it found, and given back
    started = await asyncio.gather(*(limits.take("burst", 4096, f"j-{i}") for i in range(2000)))
    assert None not in started and len(reads) == 2  # 2,000 at once from nothing: one read
    assert isinstance(limits, ProviderSlots)
    other = ProviderSlots(slots, limits._window._counters, lease_s=LEASE_S, clock=FakeClock())
    full = [await other.take("tiny", 2, f"job-{i}") for i in range(2)]
    assert None not in full and await other.take("tiny", 2, "job-x") is None
    assert await limits.take("tiny", 2, "job-y") is None  # another process: read, all held


async def test_two_workers_gates_hold_at_most_concurrency_calls_and_the_rest_wait(
    limits: ProviderLimits, clock: FakeClock
) -> None:
    gates = [ProviderGate("openai", 2, 0, limits, clock) for _ in range(2)]  # two workers
    inside = peak = 0
    waited: list[float] = []

    async def call(n: int) -> None:
        nonlocal inside, peak
        async with gates[n % 2].held(f"job-{n}") as seconds:
            waited.append(seconds)
            inside += 1
            peak = max(peak, inside)
            await clock.sleep(10)  # the provider call
            inside -= 1

    calls = [asyncio.create_task(call(n)) for n in range(6)]
    for _ in range(40):  # 6 calls of 10 s, 2 at a time: 30 s, plus the waiters' backoff
        await clock.advance(1)
        if all(c.done() for c in calls):
            break
    assert all(c.done() and c.exception() is None for c in calls)
    assert peak == 2
    assert sorted(waited)[-1] >= 20  # the last ones waited, and were told how long


async def test_a_call_waiting_for_a_slot_can_be_cancelled_and_takes_nothing(
    limits: ProviderLimits, clock: FakeClock
) -> None:
    gate = ProviderGate("openai", 1, 0, limits, clock)
    holding = asyncio.Event()

    async def hold() -> None:
        async with gate.held("job-a"):
            holding.set()
            await clock.sleep(100)

    first = asyncio.create_task(hold())
    await settle()
    assert holding.is_set()
    other = ProviderGate("openai", 1, 0, limits, clock)  # another worker's
    waiting = asyncio.create_task(other.held("job-b").__aenter__())
    await clock.advance(3)
    assert not waiting.done()
    waiting.cancel()
    first.cancel()
    await settle()
    assert await limits.take("openai", 1, "job-c") is not None  # nothing left held


async def test_a_slot_held_past_its_lease_is_renewed_by_its_call(
    limits: ProviderLimits, clock: FakeClock
) -> None:
    gate = ProviderGate("openai", 1, 0, limits, clock)
    done = asyncio.Event()

    async def long_call() -> None:
        async with gate.held("job-a"):
            await clock.sleep(5 * LEASE_S)
            done.set()

    task = asyncio.create_task(long_call())
    for _ in range(5 * LEASE_S - 1):
        await clock.advance(1)
        assert await limits.take("openai", 1, "intruder") is None  # still held
    await clock.advance(2)
    await task
    assert done.is_set()
    assert await limits.take("openai", 1, "next") is not None  # given back at the end


async def test_requests_beyond_the_per_minute_limit_wait_for_the_window(
    limits: ProviderLimits, clock: FakeClock
) -> None:
    gate = ProviderGate("openai", 10, 3, limits, clock)
    await clock.advance(60 - clock.time() % 60)  # the start of a minute
    for _ in range(3):
        await asyncio.wait_for(gate.request(), 1)  # within the limit: no wait
    fourth = asyncio.create_task(gate.request())
    await clock.advance(30)
    assert not fourth.done()  # the window is full this minute
    for _ in range(60):
        await clock.advance(1)
        if fourth.done():
            break
    assert fourth.done() and fourth.exception() is None
