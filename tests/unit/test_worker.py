"""The worker on the in-memory store and a fake clock, run in-process (`burst=True` runs
it until the queue has nothing to deliver): every state transition, redelivery after a
crash, a frozen worker's late result, the cancel-vs-complete race both ways, the give-up
rules, store errors and shutdown. Nothing sleeps for real."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import httpx
import pytest
from imagejobs.api.service import JobService
from imagejobs.config import Settings
from imagejobs.domain.constants import RECORD_GRACE_S
from imagejobs.domain.errors import JobConflict, StoreUnavailable
from imagejobs.domain.jobs import Job, Status, StoredError
from imagejobs.domain.kinds import Kind
from imagejobs.store.clock import FakeClock, settle
from imagejobs.store.memory import memory_backend
from imagejobs.store.protocols import Backend, Closeable, Delivery
from imagejobs.worker.handler import (
    RECORD_RETRY_FIRST_S,
    RECORD_RETRY_MAX_S,
    record_retry_delay_s,
)
from imagejobs.worker.runner import JobRunner
from imagejobs.worker.worker import Worker

from tests.unit.conftest import (
    ACK_WAIT_S,
    ANONYMOUS,
    MAX_ATTEMPTS,
    MAX_JOB_AGE_S,
    QUEUE_MAX,
    ScriptedRunner,
    limited,
    make_worker,
    request,
    submit,
)

GEN = Kind.GENERATION


async def record(backend: Backend, job_id: str) -> Job:
    found = await backend.records.get(job_id)
    assert found is not None
    return found[0]


async def vanish_with_next_job(backend: Backend, clock: FakeClock) -> None:
    """A worker takes the next job, claims it and dies: nothing is acked."""
    [delivery] = await backend.work.fetch(1, 0)
    job = await record(backend, delivery.job_id)
    found = await backend.records.get(job.id)
    assert found is not None
    await backend.records.update(job.claim("dead-worker", clock.time()), found[1])


class _FrozenDelivery:
    """A delivery whose heartbeats never arrive."""

    def __init__(self, inner: Delivery) -> None:
        self._inner = inner
        self.job_id = inner.job_id
        self.num_delivered = inner.num_delivered
        self.record = inner.record
        self.submitted = inner.submitted
        self.trace = inner.trace
        self.ack = inner.ack
        self.ack_sync = inner.ack_sync
        self.nak = inner.nak
        self.term = inner.term

    async def in_progress(self) -> None:
        pass


class FrozenWork:
    """The work queue as a frozen worker sees it: its heartbeats are lost and it hears no
    cancel notices."""

    def __init__(self, backend: Backend) -> None:
        self._inner = backend.work

    async def fetch(self, batch: int, timeout_s: float) -> list[Delivery]:
        return [_FrozenDelivery(d) for d in await self._inner.fetch(batch, timeout_s)]

    async def on_cancel(self, callback: Callable[[str], None]) -> Closeable:
        return await self._inner.on_cancel(lambda job_id: None)

    async def depth(self) -> tuple[int, int]:
        return await self._inner.depth()


def frozen(backend: Backend) -> Backend:
    return dataclasses.replace(backend, work=FrozenWork(backend))


# --- the transitions -------------------------------------------------------------------


async def test_a_job_goes_pending_processing_completed(
    service: JobService, backend: Backend, worker: Worker, runner: ScriptedRunner
) -> None:
    job = await submit(service)
    await worker.run(burst=True)
    [started] = runner.started
    assert started.status is Status.PROCESSING and started.worker == "w1"
    done = await record(backend, job.id)
    assert done.status is Status.COMPLETED and done.status_code == 200 and done.deliveries == 1
    assert not await backend.queue.contains(job.id)


async def test_a_failed_provider_call_fails_the_job(
    service: JobService, backend: Backend, worker: Worker, runner: ScriptedRunner
) -> None:
    runner.fail = StoredError(status_code=400, type="invalid_request_error", message="no")
    job = await submit(service)
    await worker.run(burst=True)
    failed = await record(backend, job.id)
    assert failed.status is Status.FAILED and failed.error == runner.fail
    assert not await backend.queue.contains(job.id)


async def test_an_adapter_bug_fails_the_job_at_once(
    service: JobService, backend: Backend, worker: Worker, runner: ScriptedRunner
) -> None:
    runner.raises = RuntimeError("bug")
    job = await submit(service)
    await worker.run(burst=True)
    failed = await record(backend, job.id)
    assert failed.status is Status.FAILED and failed.error is not None
    assert failed.error.code == "internal_error"
    assert not await backend.queue.contains(job.id)  # not redelivered


async def test_a_job_cancelled_while_pending_is_never_run(
    service: JobService, backend: Backend, worker: Worker, runner: ScriptedRunner
) -> None:
    job = await submit(service)
    await service.cancel(GEN, job.id, ANONYMOUS)
    await worker.run(burst=True)
    assert runner.started == []
    assert (await record(backend, job.id)).status is Status.CANCELLED
    assert not await backend.queue.contains(job.id)


# --- the cancel-vs-complete race -------------------------------------------------------


async def test_cancel_during_processing_aborts_the_run(
    service: JobService, backend: Backend, worker: Worker, runner: ScriptedRunner
) -> None:
    runner.gate = asyncio.Event()
    job = await submit(service)
    working = asyncio.create_task(worker.run(burst=True))
    await settle()
    assert len(runner.started) == 1
    await service.cancel(GEN, job.id, ANONYMOUS)
    await settle()
    assert working.done() and runner.finished == []  # the provider call was aborted
    assert (await record(backend, job.id)).status is Status.CANCELLED
    assert not await backend.queue.contains(job.id)


async def test_cancel_first_then_the_workers_result_is_discarded(
    service: JobService,
    backend: Backend,
    runner: ScriptedRunner,
    clock: FakeClock,
    settings: Settings,
) -> None:
    runner.gate = asyncio.Event()
    worker = make_worker(frozen(backend), runner, clock, settings)  # misses the notice
    job = await submit(service)
    working = asyncio.create_task(worker.run(burst=True))
    await settle()
    cancelled = await service.cancel(GEN, job.id, ANONYMOUS)
    runner.gate.set()
    await settle()
    assert working.done() and len(runner.finished) == 1  # it did finish, and lost
    assert await record(backend, job.id) == cancelled
    assert not await backend.queue.contains(job.id)


async def test_a_missed_cancel_notice_is_caught_by_the_next_heartbeat(
    service: JobService,
    backend: Backend,
    runner: ScriptedRunner,
    clock: FakeClock,
    settings: Settings,
) -> None:
    runner.seconds = 100
    worker = make_worker(frozen(backend), runner, clock, settings)
    job = await submit(service)
    working = asyncio.create_task(worker.run(burst=True))
    await settle()
    await service.cancel(GEN, job.id, ANONYMOUS)
    await clock.advance(ACK_WAIT_S / 3 + 0.1)  # one heartbeat: the record says cancelled
    assert working.done() and runner.finished == []
    assert (await record(backend, job.id)).status is Status.CANCELLED


async def test_complete_first_then_cancel_is_409(
    service: JobService, backend: Backend, worker: Worker
) -> None:
    job = await submit(service)
    await worker.run(burst=True)
    with pytest.raises(JobConflict) as conflict:
        await service.cancel(GEN, job.id, ANONYMOUS)
    assert conflict.value.code == "job_not_cancellable"
    assert (await record(backend, job.id)).status is Status.COMPLETED


# --- redelivery ------------------------------------------------------------------------


async def test_a_worker_that_vanished_is_replaced_after_ack_wait(
    service: JobService,
    backend: Backend,
    worker: Worker,
    runner: ScriptedRunner,
    clock: FakeClock,
) -> None:
    job = await submit(service)
    await vanish_with_next_job(backend, clock)
    await worker.run(burst=True)
    assert runner.started == []  # still held by the vanished worker
    await clock.advance(ACK_WAIT_S + 1)
    await worker.run(burst=True)
    [started] = runner.started  # re-claimed: processing -> processing, once
    assert started.status is Status.PROCESSING and started.deliveries == 2
    done = await record(backend, job.id)
    assert done.status is Status.COMPLETED and done.deliveries == 2 and done.worker == "w1"
    assert not await backend.queue.contains(job.id)


async def test_a_frozen_workers_late_result_is_rejected(
    service: JobService,
    backend: Backend,
    clock: FakeClock,
    settings: Settings,
) -> None:
    slow, quick = ScriptedRunner(clock, backend), ScriptedRunner(clock, backend)
    slow.gate = asyncio.Event()
    late = make_worker(frozen(backend), slow, clock, settings, name="late")
    job = await submit(service)
    frozen_run = asyncio.create_task(late.run(burst=True))
    await clock.advance(ACK_WAIT_S + 1)  # its heartbeats never arrive: redelivered
    await make_worker(backend, quick, clock, settings, name="quick").run(burst=True)
    winner = await record(backend, job.id)
    assert winner.status is Status.COMPLETED and winner.worker == "quick"
    slow.gate.set()  # the frozen worker wakes and tries to write its own result
    await settle()
    assert frozen_run.done() and len(slow.finished) == 1
    assert await record(backend, job.id) == winner
    assert not await backend.queue.contains(job.id)


async def test_a_job_past_max_attempts_fails_with_max_deliveries_exceeded(
    service: JobService,
    backend: Backend,
    worker: Worker,
    runner: ScriptedRunner,
    clock: FakeClock,
) -> None:
    caller = limited("gil", jobs=1)
    job = await submit(service, caller)
    for _ in range(MAX_ATTEMPTS):
        await vanish_with_next_job(backend, clock)
        await clock.advance(ACK_WAIT_S + 1)
    await worker.run(burst=True)
    assert runner.started == []
    failed = await record(backend, job.id)
    assert failed.status is Status.FAILED and failed.error is not None
    assert failed.error.code == "max_deliveries_exceeded"
    assert not await backend.queue.contains(job.id)
    assert (await submit(service, caller)).status is Status.PENDING  # the slot was freed


async def test_a_job_past_max_job_age_fails_on_delivery(
    service: JobService,
    backend: Backend,
    worker: Worker,
    runner: ScriptedRunner,
    clock: FakeClock,
) -> None:
    job = await submit(service)
    await clock.advance(MAX_JOB_AGE_S + 1)
    await worker.run(burst=True)
    assert runner.started == []
    failed = await record(backend, job.id)
    assert failed.error is not None and failed.error.code == "job_expired"


async def test_a_message_whose_record_is_gone_is_terminated(
    backend: Backend, worker: Worker, runner: ScriptedRunner
) -> None:
    await backend.queue.publish("00000000-0000-4000-8000-000000000001")
    await worker.run(burst=True)
    assert runner.started == []
    assert not await backend.queue.contains("00000000-0000-4000-8000-000000000001")


async def test_the_records_of_one_fetch_are_read_together(
    service: JobService, backend: Backend, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message written together with its record cannot carry the record's revision:
    the worker reads the records of the jobs it fetched in one request, not one each."""
    jobs = [await submit(service) for _ in range(QUEUE_MAX)]
    reads: list[object] = []
    get, any_copies = backend.records.get, backend.records.any_copies

    async def one(job_id: str, **kwargs: bool) -> tuple[Job, int] | None:
        reads.append(job_id)
        return await get(job_id, **kwargs)

    async def together(job_ids: list[str]) -> dict[str, tuple[Job, int]]:
        reads.append(sorted(job_ids))
        return await any_copies(job_ids)

    monkeypatch.setattr(backend.records, "get", one)
    monkeypatch.setattr(backend.records, "any_copies", together)
    await worker.run(burst=True)
    assert reads == [sorted(j.id for j in jobs)]
    for job in jobs:
        assert (await record(backend, job.id)).status is Status.COMPLETED


async def test_a_claim_on_a_stale_prefetched_record_reads_the_record_again(
    service: JobService, backend: Backend, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await submit(service)
    stale = await backend.records.any_copies([job.id])
    found = await backend.records.get(job.id)
    assert found is not None
    await backend.records.update(found[0], found[1])  # changed since: a new revision

    async def old(job_ids: list[str]) -> dict[str, tuple[Job, int]]:
        return stale

    monkeypatch.setattr(backend.records, "any_copies", old)
    await worker.run(burst=True)
    done = await record(backend, job.id)
    assert done.status is Status.COMPLETED and done.deliveries == 1


async def test_a_message_that_comes_before_its_record_waits_for_it(
    service: JobService, backend: Backend, worker: Worker, clock: FakeClock
) -> None:
    """A submit writes the record and the message together, to different streams: a
    worker may get the message first. It is delivered again shortly, and runs."""
    job = await submit(service)
    await backend.records.delete(job.id)  # as if its record were still on its way
    await worker.run(burst=True)
    assert await backend.queue.contains(job.id)  # not dropped: nak'ed, to come back
    await backend.records.recreate(job)
    await clock.advance(RECORD_RETRY_FIRST_S)
    await worker.run(burst=True)
    done = await record(backend, job.id)
    assert done.status is Status.COMPLETED and done.deliveries == 1


async def test_a_message_whose_record_never_came_is_dropped_after_the_grace(
    service: JobService, backend: Backend, worker: Worker, runner: ScriptedRunner, clock: FakeClock
) -> None:
    job = await submit(service)
    await backend.records.delete(job.id)  # its submit was taken back after publishing
    deliveries = 0
    while await backend.queue.contains(job.id) and deliveries < 100:
        await worker.run(burst=True)
        await clock.advance(RECORD_RETRY_MAX_S)
        deliveries += 1
    assert not await backend.queue.contains(job.id) and runner.started == []
    assert RECORD_GRACE_S / RECORD_RETRY_MAX_S <= deliveries < 100  # kept for the grace
    assert record_retry_delay_s(1) == RECORD_RETRY_FIRST_S
    assert record_retry_delay_s(100) == RECORD_RETRY_MAX_S


async def test_a_store_error_naks_and_the_job_runs_later(
    service: JobService,
    backend: Backend,
    worker: Worker,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    update = backend.records.update
    failures = [StoreUnavailable("job store write failed: NoRespondersError")]

    async def flaky(job: Job, expected_revision: int) -> int:
        if failures:
            raise failures.pop()
        return await update(job, expected_revision)

    monkeypatch.setattr(backend.records, "update", flaky)
    job = await submit(service)
    await worker.run(burst=True)
    assert (await record(backend, job.id)).status is Status.PENDING
    assert await backend.queue.contains(job.id)  # nak'ed, to come back
    await clock.advance(2.0)
    await worker.run(burst=True)
    done = await record(backend, job.id)
    assert done.status is Status.COMPLETED and done.deliveries == 1


# --- bounds and shutdown ---------------------------------------------------------------


async def test_a_worker_fetches_only_what_it_can_run(
    service: JobService,
    backend: Backend,
    runner: ScriptedRunner,
    clock: FakeClock,
    settings: Settings,
) -> None:
    two = settings.model_copy(update={"worker_concurrency": 2})
    runner.gate = asyncio.Event()
    jobs = [await submit(service) for _ in range(4)]
    working = asyncio.create_task(make_worker(backend, runner, clock, two).run(burst=True))
    await settle()
    assert len(runner.started) == 2
    assert await backend.queue.depth() == (4, 2)  # the rest waits in the queue
    runner.gate.set()
    await settle()
    assert working.done()
    assert [(await record(backend, j.id)).status for j in jobs] == [Status.COMPLETED] * 4


async def test_shutdown_drains_then_leaves_the_rest_to_another_worker(
    service: JobService,
    backend: Backend,
    runner: ScriptedRunner,
    clock: FakeClock,
    settings: Settings,
) -> None:
    runner.seconds = 3600  # far beyond the drain deadline (5 s)
    stopping = make_worker(backend, runner, clock, settings, name="stopping")
    job = await submit(service)
    running = asyncio.create_task(stopping.run())
    await settle()
    assert stopping.in_flight == 1
    stopping.stop()
    await clock.advance(1.0)  # its fetch ends; it drains
    assert not running.done()
    await clock.advance(settings.worker_drain_s)
    assert running.done() and runner.finished == []
    assert (await record(backend, job.id)).status is Status.PROCESSING  # not acked
    await clock.advance(ACK_WAIT_S)
    quick = ScriptedRunner(clock, backend)
    await make_worker(backend, quick, clock, settings, name="next").run(burst=True)
    assert (await record(backend, job.id)).status is Status.COMPLETED


async def test_the_real_runner_with_the_mock_provider(settings: Settings) -> None:
    clock = FakeClock(start=time.time())  # the runner stamps records with real time
    backend = memory_backend(clock, settings)
    service = JobService(backend, clock=clock)
    async with httpx.AsyncClient() as http:
        runner = JobRunner(settings, backend.objects, http, backend.providers)
        job = await service.submit(
            request(size="16x16"), ttl_s=60, request_id="r", caller=ANONYMOUS
        )
        await asyncio.wait_for(make_worker(backend, runner, clock, settings).run(burst=True), 30)
    done = await service.get(GEN, job.id, ANONYMOUS)
    assert done.status is Status.COMPLETED, done.error
    image = await service.image(GEN, job.id, 0, ANONYMOUS)
    assert image.data.startswith(b"\x89PNG") and image.content_type == "image/png"
