"""Fair share between keys, on the in-memory twin with a fake clock: the weighted rotation
itself, lanes in the queue, and the issue's measurement in fake time. Key A queues 2,000
jobs of 0.5 s against a worker with 4 slots; key B then submits 4: B's jobs finish within
a few seconds, while A's backlog would take about 250 s. With `fair_share = false` (one
FIFO queue, as before lanes) B waits behind the backlog, so the test shows the rule."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from imagejobs.api.service import JobService
from imagejobs.config import Settings
from imagejobs.domain.jobs import Job, Status
from imagejobs.domain.keys import Caller, owner_of
from imagejobs.store.clock import FakeClock, settle
from imagejobs.store.fairshare import (
    Rotation,
    lane_consumer,
    lane_filter,
    lane_of_consumer,
    lane_of_notice,
    lane_subject,
    notice_subject,
)
from imagejobs.store.memory import memory_backend
from imagejobs.worker.handler import WorkerOptions
from imagejobs.worker.worker import Worker

from tests.unit.conftest import ScriptedRunner, request

KEY_A, KEY_B = Caller(owner=owner_of("a")), Caller(owner=owner_of("b"))
LATENCY_S = 0.5
SLOTS = 4


def picks(rotation: Rotation, available: dict[str, int], n: int) -> list[str]:
    """`n` single picks, as a worker refilling one free slot at a time makes them."""
    out: list[str] = []
    for _ in range(n):
        [(lane, _count)] = rotation.plan(available, 1)
        out.append(lane)
    return out


def test_equal_lanes_alternate_and_a_weight_takes_its_share() -> None:
    assert picks(Rotation(), {"a": 99, "b": 99}, 6) == ["a", "b"] * 3
    weighted = picks(Rotation({"a": 3}), {"a": 99, "b": 99}, 8)
    assert Counter(weighted) == {"a": 6, "b": 2}
    assert weighted[:4].count("b") == 1  # interleaved, not a burst of a then b


def test_a_plan_respects_what_each_lane_can_give_and_groups_its_picks() -> None:
    plan = Rotation().plan({"a": 1, "b": 10, "c": 0}, 5)
    assert dict(plan) == {"a": 1, "b": 4}
    assert Rotation().plan({}, 3) == []
    assert sum(n for _, n in Rotation().plan({"a": 2}, 5)) == 2


def test_a_lane_that_returns_starts_level_instead_of_with_a_burst() -> None:
    rotation = Rotation()
    picks(rotation, {"a": 99, "b": 99}, 3)
    picks(rotation, {"a": 99}, 10)  # b was away
    assert picks(rotation, {"a": 99, "b": 99}, 4).count("b") == 2


def test_lane_names_subjects_and_notices() -> None:
    assert lane_subject("", "j") == "imagejobs.run.j"  # the layout before lanes
    assert lane_subject("vk-a", "j") == "imagejobs.run.vk-a.j"
    assert (lane_filter(""), lane_filter("vk-a")) == ("imagejobs.run.*", "imagejobs.run.vk-a.>")
    for lane in ("", "vk-a"):
        assert lane_of_consumer(lane_consumer(lane)) == lane
        assert lane_of_notice(notice_subject(lane)) == lane
    assert lane_of_consumer("hooks-x") is None


async def test_the_queue_hands_out_lanes_in_turns_each_in_submit_order() -> None:
    clock = FakeClock()
    backend = memory_backend(clock, Settings(queue_max_jobs=100))
    for i in range(6):
        await backend.queue.publish(f"a{i}", owner=KEY_A.owner)
    await backend.queue.publish("b0", owner=KEY_B.owner)
    await backend.queue.publish("b1", owner=KEY_B.owner)
    first = [d.job_id for d in await backend.work.fetch(4, 0)]
    assert sorted(first) == ["a0", "a1", "b0", "b1"]
    assert [d.job_id for d in await backend.work.fetch(4, 0)] == ["a2", "a3", "a4", "a5"]
    assert await backend.queue.queued(KEY_A.owner) == 0
    assert await backend.queue.contains("a0", owner=KEY_A.owner)
    assert not await backend.queue.contains("a0", owner=KEY_B.owner)
    assert await backend.queue.contains("a0")  # any lane


async def measure(*, fair_share: bool, backlog: int) -> tuple[float, int]:
    """A queues `backlog` jobs of 0.5 s, then B queues 4; a worker with 4 slots runs them.
    (fake seconds from B's submit until B's last job completed, A's jobs done by then)."""
    clock = FakeClock()
    settings = Settings(queue_max_jobs=backlog + 10, fair_share=fair_share, worker_drain_s=0)
    backend = memory_backend(clock, settings)
    service = JobService(backend, clock=clock)
    runner = ScriptedRunner(clock, backend)
    runner.seconds = LATENCY_S
    for _ in range(backlog):
        await service.submit(request(), ttl_s=600, request_id="a", caller=KEY_A)
    worker = Worker(
        backend,
        runner,
        options=WorkerOptions(worker_concurrency=SLOTS, worker_drain_s=0),
        clock=clock,
        worker_id="w",
    )
    running = asyncio.create_task(worker.run())
    await clock.advance(1.0)  # the worker is busy with A's backlog
    b_jobs: list[Job] = [
        await service.submit(request(), ttl_s=600, request_id="b", caller=KEY_B) for _ in range(4)
    ]
    started = clock.monotonic()
    try:
        for _ in range(2 * backlog):  # bounded: the backlog's whole run, twice over
            done = [await backend.records.get(j.id) for j in b_jobs]
            if all(d is not None and d[0].status is Status.COMPLETED for d in done):
                break
            await clock.advance(LATENCY_S / 2)
        elapsed = clock.monotonic() - started
        a_done = sum(1 for j in runner.finished if j.request_id == "a")
    finally:
        worker.stop()
        await clock.advance(1.0)
        await settle()
        await running
    return elapsed, a_done


async def test_a_keys_few_jobs_finish_within_seconds_behind_another_keys_backlog() -> None:
    elapsed, a_done = await measure(fair_share=True, backlog=2000)
    # B's 4 jobs take 2 of every 4 slot refills: about 1 s, a few refills more at most
    assert elapsed <= 3.0, elapsed
    assert a_done < 100  # A's backlog (2,000 x 0.5 s / 4 slots = 250 s) is far from done


@pytest.mark.parametrize("backlog", [200])
async def test_without_fair_share_the_same_jobs_wait_behind_the_whole_backlog(
    backlog: int,
) -> None:
    elapsed, a_done = await measure(fair_share=False, backlog=backlog)
    assert a_done == backlog  # FIFO: every job of A's backlog first
    assert elapsed >= backlog * LATENCY_S / SLOTS - 2.0
