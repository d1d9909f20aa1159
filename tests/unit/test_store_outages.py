"""The job service when the store is in trouble, on the in-memory store: while it cannot
accept jobs a submit fails at once and keeps nothing; while it has no leader a terminal
job is still read and anything else is 503, never a 404; a submit whose index write or
queue publish fails leaves nothing half-made (or, when even the take-back fails, a key
that resumes the same job), and one past its deadline answers 503 at once; an idempotent
retry finishes what a submit that died left undone. Parts of the twin are wrapped to
fail or hang on demand (`Failing`)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import pytest
from imagejobs.api.service import JobService, ServiceLimits
from imagejobs.config import Settings
from imagejobs.domain.errors import JobNotFound, RevisionConflict, StoreUnavailable
from imagejobs.domain.jobs import Job, Status
from imagejobs.domain.kinds import Kind
from imagejobs.store.clock import FakeClock
from imagejobs.store.health import MemoryHealth, stream_problem
from imagejobs.store.jetstream import nats_errors
from imagejobs.store.protocols import Backend
from imagejobs.worker.worker import Worker
from nats.js import api as js_api
from nats.js.errors import APIError

from tests.unit.conftest import ALICE, ScriptedRunner, make_worker, submit

GEN = Kind.GENERATION


class Failing:
    """Wraps a store part: the methods named in `failing` raise StoreUnavailable, those in
    `hanging` never answer, the rest pass through."""

    def __init__(self, part: Any) -> None:
        self._part = part
        self.failing: set[str] = set()
        self.hanging: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._part, name)
        if name in self.hanging:

            async def hang(*args: Any, **kwargs: Any) -> Any:
                await asyncio.Event().wait()

            return hang
        if name not in self.failing:
            return attr

        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable(f"{name} failed: TimeoutError")

        return fail


@dataclasses.dataclass
class Degraded:
    service: JobService
    backend: Backend
    health: MemoryHealth
    index: Failing
    queue: Failing
    records: Failing


@pytest.fixture
def degraded(backend: Backend, clock: FakeClock, settings: Settings) -> Degraded:
    index, queue, records = Failing(backend.index), Failing(backend.queue), Failing(backend.records)
    wrapped = dataclasses.replace(backend, index=index, queue=queue, records=records)
    service = JobService(wrapped, limits=ServiceLimits.from_settings(settings), clock=clock)
    assert isinstance(backend.health, MemoryHealth)
    return Degraded(service, wrapped, backend.health, index, queue, records)


async def listed(service: JobService) -> list[str]:
    page = await service.list(ALICE, status=None, kind=None, limit=50, page_token="")
    return [j.id for j in page.jobs]


async def test_a_submit_while_the_store_cannot_accept_jobs_fails_at_once_and_keeps_nothing(
    degraded: Degraded,
) -> None:
    degraded.health.set("KV_JOBS has no leader")
    with pytest.raises(StoreUnavailable) as refused:
        await submit(degraded.service, ALICE, idempotency_key="k")
    assert "KV_JOBS has no leader" in str(refused.value)
    assert await degraded.backend.queue.depth() == (0, 0)
    assert await listed(degraded.service) == []
    degraded.health.set("")
    job = await submit(degraded.service, ALICE, idempotency_key="k")  # the key is unused
    assert await listed(degraded.service) == [job.id]


async def test_without_a_leader_a_terminal_job_is_read_and_any_other_is_503_never_404(
    degraded: Degraded, settings: Settings, clock: FakeClock
) -> None:
    service, backend = degraded.service, degraded.backend
    done = await submit(service, ALICE)
    worker: Worker = make_worker(backend, ScriptedRunner(clock, backend), clock, settings)
    await worker.run(burst=True)
    waiting = await submit(service, ALICE)
    degraded.health.set("KV_JOBS has no leader")
    assert (await service.get(GEN, done.id, ALICE)).status is Status.COMPLETED
    for job_id in (waiting.id, str(uuid.uuid4())):  # pending, and one that never existed
        with pytest.raises(StoreUnavailable):
            await service.get(GEN, job_id, ALICE)
    degraded.health.set("")
    with pytest.raises(JobNotFound):  # said only once the latest write can be read
        await service.get(GEN, str(uuid.uuid4()), ALICE)


async def test_a_read_whose_leader_read_fails_falls_back_to_a_terminal_copy_only(
    degraded: Degraded, settings: Settings, clock: FakeClock
) -> None:
    backend = degraded.backend
    done = await submit(degraded.service, ALICE)
    worker = make_worker(backend, ScriptedRunner(clock, backend), clock, settings)
    await worker.run(burst=True)
    waiting = await submit(degraded.service, ALICE)
    records = backend.records._part._subjects  # type: ignore[attr-defined]
    original = records.last

    async def no_leader(subject: str) -> tuple[bytes, int]:
        raise StoreUnavailable("job store read failed: TimeoutError")

    records.last = no_leader
    try:
        found = await backend.records.get(done.id)
        assert found is not None and found[0].status is Status.COMPLETED
        with pytest.raises(StoreUnavailable):
            await backend.records.get(waiting.id)
    finally:
        records.last = original


async def test_a_submit_whose_index_write_fails_is_taken_back_whole(degraded: Degraded) -> None:
    """An accepted job is always in its owner's list: a submit whose list entry was not
    acknowledged is not accepted, and leaves no record or bound key. Its message, in
    flight together with the record, did land: with no record behind it, a worker drops
    it (test_worker.py::test_a_message_whose_record_never_came_is_dropped_after_the_grace)."""
    degraded.index.failing = {"add"}
    with pytest.raises(StoreUnavailable):
        await submit(degraded.service, ALICE, idempotency_key="k")
    [left] = await degraded.backend.work.fetch(2, 0)
    assert await degraded.backend.records.get(left.job_id) is None
    degraded.index.failing = set()
    assert await listed(degraded.service) == []
    job = await submit(degraded.service, ALICE, idempotency_key="k")
    assert await listed(degraded.service) == [job.id]


async def test_a_failed_publish_whose_take_back_fails_keeps_the_key_for_the_same_job(
    degraded: Degraded,
) -> None:
    """A publish that timed out, and a store too far gone to delete the record: the key
    stays bound to the job, and the client's retry resumes it (queued, listed), instead
    of making a second job."""
    recorded: list[Job] = []
    degraded.service.hooks.after_record = recorded.append
    degraded.queue.failing = {"publish"}
    degraded.records.failing = {"delete"}
    with pytest.raises(StoreUnavailable):
        await submit(degraded.service, ALICE, idempotency_key="k")
    degraded.queue.failing = set()
    degraded.records.failing = set()
    [first] = recorded
    again = await submit(degraded.service, ALICE, idempotency_key="k")
    assert again.id == first.id
    assert await degraded.backend.queue.contains(first.id)
    assert await listed(degraded.service) == [first.id]


async def test_a_retry_makes_the_job_again_when_its_take_back_deleted_it_but_kept_the_key(
    degraded: Degraded, settings: Settings, clock: FakeClock
) -> None:
    """A publish that failed, a record deleted by the take-back, and a key whose release
    failed: the key's retry writes the same job again over the delete marker (not a 503
    until the key's grace runs out, then a 409)."""
    idempotency = Failing(degraded.backend.idempotency)
    backend = dataclasses.replace(degraded.backend, idempotency=idempotency)
    service = JobService(backend, limits=ServiceLimits.from_settings(settings), clock=clock)
    recorded: list[Job] = []
    service.hooks.after_record = recorded.append
    degraded.queue.failing = {"publish"}
    idempotency.failing = {"release"}
    with pytest.raises(StoreUnavailable):
        await submit(service, ALICE, idempotency_key="k")
    [first] = recorded
    assert await backend.records.get(first.id) is None  # taken back; the key still bound
    degraded.queue.failing = set()
    idempotency.failing = set()
    again = await submit(service, ALICE, idempotency_key="k")
    assert again.id == first.id and again.status is Status.PENDING
    assert await backend.queue.contains(first.id, owner=first.owner)
    assert await listed(service) == [first.id]


async def test_an_idempotent_retry_at_once_resumes_a_submit_that_died_before_publishing(
    degraded: Degraded,
) -> None:
    """No REPAIR_AFTER_S wait: the retry itself publishes the job (and lists it)."""

    class Crash(BaseException):
        pass

    def die(job: Job) -> None:
        raise Crash

    degraded.service.hooks.after_record = die
    with pytest.raises(Crash):
        await submit(degraded.service, ALICE, idempotency_key="k")
    degraded.service.hooks.after_record = None
    again = await submit(degraded.service, ALICE, idempotency_key="k")
    assert again.status is Status.PENDING
    assert await degraded.backend.queue.contains(again.id)
    assert await listed(degraded.service) == [again.id]


async def test_a_submit_past_its_deadline_is_a_fast_503_and_takes_back_what_it_made(
    degraded: Degraded,
) -> None:
    """Each request is bounded, but a submit makes several: the whole answers within its
    deadline (here a publish never answers), and what it made goes in the background."""
    degraded.service.limits = dataclasses.replace(degraded.service.limits, submit_timeout_s=0.2)
    degraded.queue.hanging = {"publish"}
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"within 0\.2 s"):
        await asyncio.wait_for(submit(degraded.service, ALICE, idempotency_key="k"), 5.0)
    assert time.monotonic() - started < 1.0
    for _ in range(100):  # the cancelled submit unwinds: its record and key go
        if not degraded.service._unwinding:
            break
        await asyncio.sleep(0.01)
    assert not degraded.service._unwinding
    assert await listed(degraded.service) == []
    degraded.queue.hanging = set()
    again = await submit(degraded.service, ALICE, idempotency_key="k")  # the key is free
    assert await degraded.backend.queue.contains(again.id)
    assert await listed(degraded.service) == [again.id]


def stream_info(
    leader: str, replicas: list[tuple[str, bool]] | None, wanted: int
) -> js_api.StreamInfo:
    response: dict[str, Any] = {
        "config": {"name": "KV_JOBS", "num_replicas": wanted},
        "state": {"messages": 0, "bytes": 0, "first_seq": 0, "last_seq": 0, "consumer_count": 0},
    }
    if replicas is not None:
        response["cluster"] = {
            "leader": leader,
            "replicas": [{"name": n, "current": c, "active": 0} for n, c in replicas],
        }
    info: js_api.StreamInfo = js_api.StreamInfo.from_response(response)
    return info


def test_a_stream_accepts_writes_with_a_leader_and_a_quorum_of_current_replicas() -> None:
    assert stream_problem(stream_info("", None, 1)) == ""  # one server: no cluster
    assert stream_problem(stream_info("n1", [("n2", True), ("n3", False)], 3)) == ""
    assert "no leader" in stream_problem(stream_info("", [("n2", True), ("n3", True)], 3))
    assert "no quorum" in stream_problem(stream_info("n1", [("n2", False), ("n3", False)], 3))
    assert "no quorum" in stream_problem(
        stream_info("n1", [("n2", True), ("n3", False), ("n4", False), ("n5", False)], 5)
    )


@pytest.mark.parametrize(
    ("code", "description"),
    [(10071, "wrong last sequence: 7"), (10164, "wrong last sequence")],
)
def test_a_lost_compare_and_set_is_a_revision_conflict_alone_or_on_a_cluster(
    code: int, description: str
) -> None:
    """A replicated stream refuses a compare-and-set whose subject has another one in
    flight with 10164 (no sequence to name): a lost race like 10071, not an outage."""
    with pytest.raises(RevisionConflict), nats_errors("slot write"):
        raise APIError(code=400, err_code=code, description=description)


def test_any_other_refusal_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="slot write failed"), nats_errors("slot write"):
        raise APIError(code=503, err_code=10163, description="temporarily unavailable")
