"""The job service on the in-memory store and a fake clock: what a submit leaves behind,
who may read what, cancel, expiry, orphan repair, a full queue, idempotent resubmits, and
wait/watch wake-ups. Nothing here sleeps for real: time moves with `clock.advance`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from imagejobs.api.server import hooks_for
from imagejobs.api.service import JobService
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import (
    ConfigError,
    IdempotencyConflict,
    JobConflict,
    JobNotFound,
    QueueFull,
    RateLimited,
    StoreUnavailable,
)
from imagejobs.domain.jobs import Job, Status
from imagejobs.domain.keys import Caller
from imagejobs.domain.kinds import Kind
from imagejobs.store.clock import FakeClock, settle
from imagejobs.store.protocols import Backend
from imagejobs.worker.worker import Worker

from tests.unit.conftest import (
    ALICE,
    ANONYMOUS,
    BOB,
    MAX_JOB_AGE_S,
    QUEUE_MAX,
    ScriptedRunner,
    limited,
    submit,
)

GEN = Kind.GENERATION


async def listed(service: JobService, caller: Caller) -> list[str]:
    page = await service.list(caller, status=None, kind=None, limit=50, page_token="")
    return [j.id for j in page.jobs]


async def cancel_notices(backend: Backend) -> list[str]:
    heard: list[str] = []
    await backend.work.on_cancel(heard.append)
    return heard


# --- submit and read -------------------------------------------------------------------


async def test_a_submit_records_indexes_and_queues_a_pending_job(
    service: JobService, backend: Backend
) -> None:
    job = await submit(service, ALICE)
    assert job.status is Status.PENDING and job.owner == "alice"
    assert await service.get(GEN, job.id, ALICE) == job
    assert await backend.queue.contains(job.id)
    [delivery] = await backend.work.fetch(1, 0)
    # written together with the record, the message carries the job but not the
    # record's revision (unknown until the record is acknowledged): the worker reads it
    assert delivery.submitted() == job and delivery.record() is None
    assert await listed(service, ALICE) == [job.id]


async def test_a_caller_reads_its_own_and_public_jobs_and_lists_only_its_own(
    service: JobService,
) -> None:
    mine = await submit(service, ALICE)
    public = await submit(service, ANONYMOUS)
    assert await service.get(GEN, public.id, ALICE) == public
    assert await service.get(GEN, public.id, BOB) == public
    for kind, job_id, caller in [
        (GEN, mine.id, BOB),  # another caller's
        (GEN, mine.id, ANONYMOUS),
        (Kind.EDIT, mine.id, ALICE),  # another kind
        (GEN, "not-a-job-id", ALICE),
        (GEN, str(uuid.uuid4()), ALICE),  # never existed
    ]:
        with pytest.raises(JobNotFound):
            await service.get(kind, job_id, caller)
    with pytest.raises(JobNotFound):
        await service.cancel(GEN, mine.id, BOB)
    assert await listed(service, ALICE) == [mine.id]  # never the public ones
    assert await listed(service, ANONYMOUS) == [public.id]


async def test_a_job_is_read_cancelled_and_watched_by_its_id_alone(service: JobService) -> None:
    """Job ids are unique: no kind (None) reads any kind; a kind given and wrong is still
    JobNotFound, as REST's wrong-kind path is."""
    job = await submit(service, ALICE)
    assert await service.get(None, job.id, ALICE) == job
    assert (await service.wait(None, job.id, ALICE, 0.0)).id == job.id
    async for seen in service.watch(None, job.id, ALICE):
        assert seen == job
        break
    with pytest.raises(JobNotFound):
        await service.get(Kind.EDIT, job.id, ALICE)
    with pytest.raises(JobNotFound):
        await service.cancel(Kind.VARIATION, job.id, ALICE)
    with pytest.raises(JobNotFound):
        await service.get(None, job.id, BOB)  # the id alone does not pass ownership
    assert (await service.cancel(None, job.id, ALICE)).status is Status.CANCELLED


# --- cancel ----------------------------------------------------------------------------


async def test_cancel_of_a_pending_job_tells_workers_and_frees_its_slot(
    service: JobService, backend: Backend
) -> None:
    caller = limited("carol", jobs=1)
    heard = await cancel_notices(backend)
    job = await submit(service, caller)
    with pytest.raises(RateLimited) as limited_info:
        await submit(service, caller)
    assert limited_info.value.code == "concurrency_limited"
    cancelled = await service.cancel(GEN, job.id, caller)
    assert cancelled.status is Status.CANCELLED and cancelled.status_code == 499
    assert cancelled.error is not None and cancelled.error.code == "cancelled"
    assert (await service.get(GEN, job.id, caller)).status is Status.CANCELLED
    await settle()
    assert heard == [job.id]
    assert (await submit(service, caller)).status is Status.PENDING  # the slot is free
    with pytest.raises(JobConflict) as conflict:
        await service.cancel(GEN, job.id, caller)
    assert conflict.value.code == "job_not_cancellable" and conflict.value.http_status == 409


async def test_a_cancel_whose_notice_cannot_be_sent_still_cancels_and_frees_the_slot(
    service: JobService, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(job_id: str) -> None:
        raise StoreUnavailable("cancel notice failed: ConnectionClosedError")

    monkeypatch.setattr(backend.queue, "announce_cancel", unreachable)
    caller = limited("dave", jobs=1)
    job = await submit(service, caller)
    assert (await service.cancel(GEN, job.id, caller)).status is Status.CANCELLED
    assert (await submit(service, caller)).status is Status.PENDING


# --- expiry ----------------------------------------------------------------------------


async def test_a_finished_job_and_its_images_are_gone_after_the_result_ttl(
    service: JobService, worker: Worker, clock: FakeClock
) -> None:
    job = await submit(service, ttl_s=60)
    await worker.run(burst=True)
    done = await service.get(GEN, job.id, ANONYMOUS)
    assert done.status is Status.COMPLETED
    assert done.completed_at is not None and done.expires_at == done.completed_at + 60
    assert (await service.image(GEN, job.id, 0, ANONYMOUS)).data.startswith(b"PNG!")
    await clock.advance(59)
    assert (await service.get(GEN, job.id, ANONYMOUS)).status is Status.COMPLETED
    await clock.advance(2)
    with pytest.raises(JobNotFound):
        await service.get(GEN, job.id, ANONYMOUS)
    with pytest.raises(JobNotFound):
        await service.image(GEN, job.id, 0, ANONYMOUS)


async def test_a_job_not_terminal_within_max_job_age_is_failed_by_a_read(
    service: JobService, backend: Backend, clock: FakeClock
) -> None:
    caller = limited("erin", jobs=1)
    heard = await cancel_notices(backend)
    job = await submit(service, caller)
    await clock.advance(MAX_JOB_AGE_S + 1)
    failed = await service.get(GEN, job.id, caller)
    assert failed.status is Status.FAILED and failed.status_code == 500
    assert failed.error is not None
    assert (failed.error.type, failed.error.code) == ("timeout_error", "job_expired")
    await settle()
    assert heard == [job.id]  # wherever it runs, it is aborted
    assert (await submit(service, caller)).status is Status.PENDING  # its slot was freed


# --- orphans, a full queue -------------------------------------------------------------


class Crash(BaseException):
    """What the API process dying looks like to the code after it: nothing runs."""


async def test_an_orphaned_record_is_queued_by_a_read_after_repair_after_s(
    service: JobService, backend: Backend, clock: FakeClock
) -> None:
    recorded: list[Job] = []

    def die(job: Job) -> None:
        recorded.append(job)
        raise Crash

    service.hooks.after_record = die
    with pytest.raises(Crash):
        await submit(service, ALICE)
    service.hooks.after_record = None
    [orphan] = recorded
    assert await listed(service, ALICE) == [orphan.id]
    assert not await backend.queue.contains(orphan.id)
    assert await service.get(GEN, orphan.id, ALICE) == orphan  # too young to repair
    assert not await backend.queue.contains(orphan.id)
    await clock.advance(constants.REPAIR_AFTER_S + 1)
    assert (await service.get(GEN, orphan.id, ALICE)).status is Status.PENDING
    assert await backend.queue.contains(orphan.id)
    [delivery] = await backend.work.fetch(1, 0)
    assert delivery.record() == (orphan, (await backend.records.get(orphan.id) or (0, 0))[1])


async def test_without_a_hook_set_a_submit_just_queues(service: JobService) -> None:
    assert service.hooks.after_record is None
    seen: list[Job] = []
    service.hooks.after_record = seen.append
    job = await submit(service)
    assert seen == [job]


async def test_the_record_its_list_entry_and_its_message_are_written_together(
    service: JobService, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One acknowledged round trip per submit: none of the three writes waits for
    another (each here waits until all three have started; one after another would
    never get past the first)."""
    together = asyncio.Barrier(3)

    def waits(write: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            await together.wait()
            return await write(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(backend.records, "create", waits(backend.records.create))
    monkeypatch.setattr(backend.index, "add", waits(backend.index.add))
    monkeypatch.setattr(backend.queue, "publish", waits(backend.queue.publish))
    job = await asyncio.wait_for(submit(service, ALICE), 5.0)
    assert await backend.queue.contains(job.id) and await listed(service, ALICE) == [job.id]


async def test_a_full_queue_is_429_and_takes_back_the_record_key_and_slot(
    service: JobService, backend: Backend
) -> None:
    caller = limited("fay", jobs=QUEUE_MAX + 1)
    accepted = [(await submit(service, caller)).id for _ in range(QUEUE_MAX)]
    with pytest.raises(QueueFull) as full:
        await submit(service, caller, idempotency_key="k")
    assert full.value.http_status == 429 and full.value.retry_after_s == 5
    assert sorted(await listed(service, caller)) == sorted(accepted)  # no record kept
    [delivery] = await backend.work.fetch(1, 0)
    await delivery.ack()  # room for one more
    again = await submit(service, caller, idempotency_key="k")  # the key was released,
    assert again.status is Status.PENDING and again.id not in accepted  # and the slot too


# --- idempotency -----------------------------------------------------------------------


async def test_an_idempotent_resubmit_returns_the_same_job_in_its_current_state(
    service: JobService, worker: Worker
) -> None:
    first = await submit(service, ALICE, idempotency_key="k")
    second = await submit(service, ALICE, idempotency_key=" k ")
    assert second == first
    await worker.run(burst=True)
    third = await submit(service, ALICE, idempotency_key="k")
    assert third.id == first.id and third.status is Status.COMPLETED
    with pytest.raises(IdempotencyConflict) as conflict:
        await submit(service, ALICE, idempotency_key="k", prompt="another picture")
    assert conflict.value.code == "idempotency_key_reused" and conflict.value.http_status == 409
    assert (await submit(service, BOB, idempotency_key="k")).id != first.id  # per caller
    assert (await submit(service, ALICE, idempotency_key="k2")).id != first.id


async def test_concurrent_duplicates_converge_on_one_job(
    service: JobService, backend: Backend
) -> None:
    jobs = await asyncio.gather(*(submit(service, ALICE, idempotency_key="same") for _ in range(6)))
    assert len({j.id for j in jobs}) == 1
    assert await listed(service, ALICE) == [jobs[0].id]
    assert await backend.queue.depth() == (1, 1)


# --- wait and watch --------------------------------------------------------------------


async def test_wait_answers_when_the_job_ends(service: JobService, clock: FakeClock) -> None:
    job = await submit(service)
    waiting = asyncio.create_task(service.wait(GEN, job.id, ANONYMOUS, 10))
    await clock.advance(5)
    assert not waiting.done()
    await service.cancel(GEN, job.id, ANONYMOUS)
    await settle()
    assert waiting.done() and waiting.result().status is Status.CANCELLED


async def test_wait_answers_at_its_deadline_capped_at_max_wait(
    service: JobService, clock: FakeClock
) -> None:
    job = await submit(service)
    waiting = asyncio.create_task(service.wait(GEN, job.id, ANONYMOUS, 10))
    await clock.advance(9.9)
    assert not waiting.done()
    await clock.advance(0.2)
    assert waiting.done() and waiting.result().status is Status.PENDING
    capped = asyncio.create_task(service.wait(GEN, job.id, ANONYMOUS, 10_000))
    await clock.advance(service.limits.max_wait_s + 0.1)
    assert capped.done() and capped.result().status is Status.PENDING


async def test_shutdown_answers_every_wait_at_once(service: JobService, backend: Backend) -> None:
    job = await submit(service)
    waiting = asyncio.create_task(service.wait(GEN, job.id, ANONYMOUS, 30))
    await settle()
    await backend.changes.stop()
    await settle()
    assert waiting.done() and waiting.result().status is Status.PENDING


async def test_watch_yields_every_state_in_order(
    service: JobService, worker: Worker, runner: ScriptedRunner, clock: FakeClock
) -> None:
    runner.seconds = 5
    job = await submit(service)
    seen: list[Status | None] = []

    async def follow() -> None:
        async for j in service.watch(GEN, job.id, ANONYMOUS):
            seen.append(j.status if j is not None else None)

    following = asyncio.create_task(follow())
    working = asyncio.create_task(worker.run(burst=True))
    await clock.advance(5)
    assert working.done() and following.done()
    assert seen == [Status.PENDING, Status.PROCESSING, Status.COMPLETED]


async def test_an_idle_watch_sends_keep_alives_until_the_job_ends(
    service: JobService, clock: FakeClock
) -> None:
    job = await submit(service)
    seen: list[Status | None] = []

    async def follow() -> None:
        async for j in service.watch(GEN, job.id, ANONYMOUS):
            seen.append(j.status if j is not None else None)

    following = asyncio.create_task(follow())
    await clock.advance(constants.WATCH_KEEPALIVE_S + 0.1)
    assert seen == [Status.PENDING, None]
    await service.cancel(GEN, job.id, ANONYMOUS)
    await settle()
    assert following.done() and seen == [Status.PENDING, None, Status.CANCELLED]


def test_only_the_failpoint_setting_installs_the_crash_hook() -> None:
    assert hooks_for(Settings()).after_record is None
    assert hooks_for(Settings(failpoint="submit.before_publish")).after_record is not None
    with pytest.raises(ConfigError, match="unknown failpoint"):
        hooks_for(Settings(failpoint="submit.after_publish"))
