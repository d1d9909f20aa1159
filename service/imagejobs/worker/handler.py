"""One delivery of a job's message, handled to its end (at-least-once delivery,
exactly-once completion):

  1. read the record (a first delivery carries it, with its revision, when the submit
     queued the job after writing it); a terminal job is acked; a missing one is
     terminated, unless the message is young enough for its record to be on its way;
  2. claim it with a compare-and-set write (`processing`, deliveries + 1); past
     `max_attempts` deliveries (or `max_job_age_s` after submit) the job is failed
     instead, so a job that kills its workers cannot loop forever;
  3. heartbeat `in_progress()` every ack_wait/3 while the runner works (and check the
     record: a cancel notice may have been missed);
  4. write the terminal state with compare-and-set, publish the webhook intent the job
     owes (if any), then ack. A worker whose terminal write loses (it was frozen past
     ack_wait and the job was re-claimed, or the job was cancelled) discards its work.

Every path that acks the message of a terminal job pays what it owes first
(`pay_debts`: its webhook intent, its budget settlement), also when the job was made
terminal by someone else (a cancel) or by an earlier delivery that died before paying:
the message is what keeps an owed delivery or settlement from being lost
(worker/finish.py).

A store error anywhere naks the message for a later redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.trace import SpanKind

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import (
    ErrorCode,
    ErrorType,
    RevisionConflict,
    StoreError,
)
from imagejobs.domain.jobs import Job, Status, StoredError, age_limit_error
from imagejobs.runtime import logs, tracing
from imagejobs.store.clock import Clock
from imagejobs.store.protocols import Backend, Delivery
from imagejobs.worker.finish import job_ended, pay_debts

log = logging.getLogger(__name__)

STORE_RETRY_DELAY_S = 2.0  # a delivery that hit a store error comes back after this
MIN_HEARTBEAT_S = 0.2
RECORD_RETRY_FIRST_S = 0.02  # a message whose record is not there yet comes back after this,
RECORD_RETRY_MAX_S = 5.0  # doubling at each delivery up to this


def record_retry_delay_s(num_delivered: int) -> float:
    """When a message whose record is not there yet is delivered again (s)."""
    return min(RECORD_RETRY_FIRST_S * 2.0 ** min(num_delivered - 1, 16), RECORD_RETRY_MAX_S)


CRASH_EXIT_CODE = 137  # what a kill -9 leaves


@dataclass(frozen=True)
class WorkerOptions:
    """A worker's limits, named as their settings. `worker_concurrency`: jobs in flight
    at most; `worker_drain_s`: how long a stopping worker lets them finish (s);
    `ack_wait_s`: the consumer's ack_wait (s), a third of which is the heartbeat
    interval; `max_attempts`: deliveries before a job is failed; `max_job_age_s`: seconds
    after submit a job not terminal is failed."""

    worker_concurrency: int
    worker_drain_s: float
    ack_wait_s: float = constants.ACK_WAIT_S
    max_attempts: int = constants.MAX_DELIVERIES
    max_job_age_s: float = constants.MAX_JOB_AGE_S
    # fault tests only: constants.FAILPOINT_AFTER_TERMINAL_WRITE: the worker dies right after a
    # job's terminal write, before its debts (webhook intent, budget settlement) are paid
    failpoint: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerOptions:
        """The options as set; ConfigError for a `failpoint` no process knows."""
        settings.checked_failpoint()
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


class Runner(Protocol):
    async def run(self, job: Job) -> Job:
        """The terminal record for a claimed job (completed or failed); StoreError when
        the store failed it (the delivery is then retried)."""
        ...


class DeliveryHandler:
    """Handles deliveries for one worker (`worker_id` goes into the records it claims)
    and aborts a running job when its cancel notice arrives (`abort`)."""

    def __init__(
        self, backend: Backend, runner: Runner, worker_id: str, options: WorkerOptions, clock: Clock
    ) -> None:
        self._records = backend.records
        self._quotas = backend.quotas
        self._outbox = backend.outbox
        self._budgets = backend.budgets  # governance: a terminal job's hold is settled
        self._runner = runner
        self._id = worker_id
        self._options = options
        self._clock = clock
        self._running: dict[str, asyncio.Task[Job]] = {}  # job id -> its runner work
        self._aborted: set[str] = set()  # job ids whose work was cancelled with the job

    async def prefetch(self, deliveries: list[Delivery]) -> dict[str, tuple[Job, int]]:
        """The records of the first deliveries among `deliveries` that carry none, read
        together from any copy (one request instead of one each); {} if that failed
        (each is then read on its own)."""
        ids = [d.job_id for d in deliveries if d.num_delivered == 1 and d.record() is None]
        if not ids:
            return {}
        try:
            return await self._records.any_copies(ids)
        except StoreError as exc:
            log.debug("records not prefetched: %s", exc)
            return {}

    async def handle(self, delivery: Delivery, known: tuple[Job, int] | None = None) -> None:
        """Take the delivery to its end; never raises a store error (it naks). `known`:
        its record as prefetched (maybe older than the latest: the claim's
        compare-and-set decides). The whole of it is one trace span, a child of the
        submit's (the message carries it)."""
        attributes: tracing.Attributes = {
            tracing.PREFIX + "job_id": delivery.job_id,
            tracing.PREFIX + "delivery": delivery.num_delivered,
        }
        with (
            logs.about(job_id=delivery.job_id),
            tracing.span(
                tracing.PREFIX + "job",
                parent=delivery.trace,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            ),
        ):
            try:
                await self._process(delivery, known)
            except StoreError as exc:  # the job store hiccuped: let the queue redeliver
                log.warning("job %s: store error, will be redelivered: %s", delivery.job_id, exc)
                with contextlib.suppress(StoreError):
                    await delivery.nak(STORE_RETRY_DELAY_S)

    async def _process(self, delivery: Delivery, known: tuple[Job, int] | None) -> None:
        # first delivery: the message carries the record as submitted and its revision,
        # or it was prefetched, so the claim needs no read of its own; if the record
        # changed since, decide on the record
        submitted = delivery.record() or (
            known if known is not None and known[0].status is Status.PENDING else None
        )
        if submitted is not None:
            job, revision = submitted
            logs.tag(job)
            if self._give_up(job) is None and await self._claim_and_run(delivery, job, revision):
                return
        found = await self._records.get(delivery.job_id)
        if found is None:
            await self._unrecorded(delivery)
            return
        job, revision = found
        logs.tag(job)
        if job.status.terminal:  # made so elsewhere, or by a delivery that died after it
            await self._settle_ended(delivery, job)
            return
        give_up = self._give_up(job)
        if give_up is not None:
            await self._finish(delivery, job.fail(give_up, self._clock.time()), revision)
            return
        # a lost claim: someone else moved it (a cancel); the redelivery sees the state
        await self._claim_and_run(delivery, job, revision)

    async def _unrecorded(self, delivery: Delivery) -> None:
        """A message whose record is not there: expired, or taken back by its submit
        (dropped), or, younger than `RECORD_GRACE_S`, published together with a record
        that is not stored yet (the two go to different streams): it comes back soon."""
        carried = delivery.submitted()
        age_s = self._clock.time() - carried.created_at if carried is not None else math.inf
        if age_s < constants.RECORD_GRACE_S:
            await delivery.nak(record_retry_delay_s(delivery.num_delivered))
            return
        await delivery.term()

    def _give_up(self, job: Job) -> StoredError | None:
        """Why this delivery must fail the job instead of running it, if it must."""
        if job.deliveries >= self._options.max_attempts:
            return StoredError(
                status_code=500,
                type=ErrorType.API,
                code=ErrorCode.MAX_DELIVERIES_EXCEEDED,
                message=f"job abandoned after {job.deliveries} deliveries",
            )
        if self._clock.time() - job.created_at > self._options.max_job_age_s:
            return age_limit_error(self._options.max_job_age_s)
        return None

    async def _claim_and_run(self, delivery: Delivery, job: Job, revision: int) -> bool:
        """Claim the job and run it to its end; False if the claim lost the race."""
        now = self._clock.time()
        tracing.annotate(job)
        try:
            with tracing.span(tracing.PREFIX + "claim"):
                claimed = job.claim(self._id, now)
                revision = await self._records.update(claimed, revision)
        except RevisionConflict:
            return False
        if job.deliveries == 0:  # its first claim: the wait since the submit
            tracing.queue_wait(job, now, delivery.trace)
        final = await self._run_with_heartbeat(delivery, claimed)
        if final is None:  # cancelled meanwhile: the record already says so
            log.info("job %s cancelled; its provider call was aborted", job.id)
            found = await self._records.get(job.id)
            if found is not None:
                await self._settle_ended(delivery, found[0])
            else:
                await delivery.ack_sync()
        else:
            await self._finish(delivery, final, revision)
        return True

    async def _run_with_heartbeat(self, delivery: Delivery, job: Job) -> Job | None:
        """The terminal record to write, or None if the job was cancelled meanwhile (its
        provider call is then aborted at once)."""
        interval = max(self._options.ack_wait_s / 3, MIN_HEARTBEAT_S)
        run = asyncio.create_task(self._run_safely(job))

        async def beat() -> None:
            while True:
                await self._clock.sleep(interval)
                with contextlib.suppress(StoreError):
                    await delivery.in_progress()
                # the backstop for a missed cancel notice: is the job still ours to run?
                with contextlib.suppress(StoreError):
                    found = await self._records.get(job.id)
                    if found is None or found[0].status.terminal:
                        self.abort(job.id)

        self._running[job.id] = run
        heartbeat = asyncio.create_task(beat())
        try:
            return await run
        except asyncio.CancelledError:
            if job.id in self._aborted and not _current_cancelling():
                return None
            raise
        finally:
            heartbeat.cancel()
            self._running.pop(job.id, None)
            self._aborted.discard(job.id)

    async def _run_safely(self, job: Job) -> Job:
        """Run the job; an adapter bug fails it at once instead of every redelivery."""
        try:
            return await self._runner.run(job)
        except (StoreError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("job %s: unexpected error in the provider adapter", job.id)
            error = StoredError(
                status_code=500,
                type=ErrorType.API,
                code=ErrorCode.INTERNAL_ERROR,
                message="internal error while calling the provider",
            )
            return job.fail(error, self._clock.time())

    def abort(self, job_id: str) -> None:
        """Cancel the job's running work, if this worker runs it (a cancel notice)."""
        run = self._running.get(job_id)
        if run is not None and not run.done():
            self._aborted.add(job_id)
            run.cancel()

    async def _finish(self, delivery: Delivery, final: Job, revision: int) -> None:
        tracing.annotate(final)
        with tracing.span(tracing.PREFIX + "finish", attributes=tracing.job_attributes(final)):
            await self._write_final(delivery, final, revision)

    async def _write_final(self, delivery: Delivery, final: Job, revision: int) -> None:
        """Write the terminal record; then the webhook intent, then ack (or, if the write
        lost, settle as the record now says)."""
        try:
            # shielded: a shutdown must not lose a result whose write is under way
            await asyncio.shield(self._records.update(final, revision))
        except RevisionConflict:
            found = await self._records.get(final.id)
            if found is not None and found[0].status.terminal:
                log.info(
                    "job %s was finished elsewhere (%s); discarding this result",
                    final.id,
                    found[0].status.value,
                )
                await self._settle_ended(delivery, found[0])
            else:
                log.info("job %s: lost the race to finish it; discarding this result", final.id)
            return
        if self._options.failpoint == constants.FAILPOINT_AFTER_TERMINAL_WRITE:
            log.critical("failpoint %s: exiting, job %s unpaid", self._options.failpoint, final.id)
            os._exit(CRASH_EXIT_CODE)
        # the webhook intent before the ack (a StoreError naks: the redelivery owes it)
        await job_ended(final, self._quotas, self._outbox, self._budgets)
        # no need to wait, nor to fail over it: a lost ack redelivers a terminal job,
        # which is then acked
        with contextlib.suppress(StoreError):
            await delivery.ack()
        log.info("job %s %s (%s)", final.id, final.status.value, final.status_code)

    async def _settle_ended(self, delivery: Delivery, job: Job) -> None:
        """Ack the message of a job found terminal, after paying what it owes (its webhook
        delivery, its budget settlement)."""
        await pay_debts(job, self._outbox, self._budgets)
        await delivery.ack_sync()


def _current_cancelling() -> bool:
    """Whether the running task itself is being cancelled (shutdown), not just its job."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
