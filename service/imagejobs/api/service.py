"""The job service the API's servicer calls: submit and cancel here, every read in
`api/reads.py`. No provider is ever called here; workers do that.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from imagejobs.api.governance import Governance, KeyUsage
from imagejobs.api.reads import JobReader, Page, ServiceLimits
from imagejobs.api.requests import ImageRequest, check_key, fingerprint
from imagejobs.api.uploads import Upload
from imagejobs.domain import constants
from imagejobs.domain.budget import BudgetHold
from imagejobs.domain.errors import (
    ErrorCode,
    IdempotencyConflict,
    JobConflict,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
    Unauthenticated,
)
from imagejobs.domain.jobs import Job, ObjectRef, Status, StoredRequest
from imagejobs.domain.keys import Caller, KeyPolicy
from imagejobs.domain.kinds import Kind
from imagejobs.providers.pricing import PriceTable
from imagejobs.runtime import logs, tracing
from imagejobs.store.clock import Clock
from imagejobs.store.protocols import Backend
from imagejobs.webhooks.endpoints import WebhookSettings
from imagejobs.webhooks.history import WebhookService

__all__ = ["JobService", "Page", "ServiceHooks", "ServiceLimits"]

IDEMPOTENT_SUBMIT_GRACE_S = 60.0  # a key whose job record never appeared within this: gone
CANCEL_TRIES = 10  # a job that keeps changing under a cancel this often: give up (503)


@dataclass
class ServiceHooks:
    """Points where a test may step in; each does nothing unless a test sets it.

    `after_record(job)`: when set, a submit writes the job's record first, calls this,
    then queues the job (unset, the two writes are in flight together). The fault tests
    make the API process die there: the state a crash leaves when the record landed and
    the message did not."""

    after_record: Callable[[Job], None] | None = None


class JobService(JobReader):
    """Accepts, reads, waits on, watches, cancels and lists image jobs on a `Backend`.

    Submit order (what makes a 202 safe): [key policy: models (403), priced models when it
    has a budget (403), rate (429)] -> [Idempotency-Key claimed] -> [the key's queue bound
    (429), its budget reservation (402), its concurrency slot (429)] -> uploads to the
    object store -> job record created (`pending`, create-only, holding the reservation),
    indexed, and its message published (deduplicated by job id) in the key's lane, the
    three writes together -> 202 once all three are acknowledged. If the queue refuses
    the message (full), the record, the key, the slot and the reservation are taken back
    and the caller gets 429: nothing is accepted that cannot be held. If the API dies
    with the record written and the message not, the record is an orphan no worker will
    see; the first read of it after `REPAIR_AFTER_S` (a poll, a wait, a list, an
    idempotent retry) finds no queue message and publishes it.

    A cancel is a compare-and-set of the record to `cancelled`; then the worker running
    the job is told to abort it. A worker's result that arrives later loses its own
    compare-and-set and is discarded, so a cancel and a completion never both win.

    A job submitted with a webhook owes its delivery from its terminal write on. A cancel
    (or expiry) cannot lose it: before its write, the job's work-queue message is made
    sure to exist (a pending orphan's is published); after it, the intent is published.
    If the API dies in between, that message is still in the queue, and the worker that
    gets it (at once for a pending job; at its next heartbeat or after ack_wait for a
    processing one) finds the job terminal and publishes the intent before it acks.

    :param backend: the store (JetStream in the API process, in-memory in unit tests).
    :param limits: the job age limit and the long-poll cap.
    :param hooks: test hooks (`ServiceHooks`); none in production.
    :param clock: time for records and deadlines (a fake one in tests).
    :param webhooks: the configured `[[webhooks]]` endpoints by name.
    :param prices: the price table budgets reserve by (default: the shipped one).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        limits: ServiceLimits | None = None,
        hooks: ServiceHooks | None = None,
        clock: Clock | None = None,
        webhooks: Mapping[str, WebhookSettings] | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        super().__init__(backend, limits=limits, clock=clock)
        self.idempotency = backend.idempotency
        self.hooks = hooks or ServiceHooks()
        self.webhooks = WebhookService(backend, webhooks or {}, self._clock)
        self._unwinding: set[asyncio.Task[None]] = set()  # clean-ups of cancelled submits
        self.governance = Governance(backend, prices or PriceTable.builtin())

    # --- submit ---------------------------------------------------------------------

    async def submit(
        self,
        request: ImageRequest,
        *,
        ttl_s: int,
        request_id: str,
        caller: Caller,
        idempotency_key: str = "",
        webhook: str = "",
    ) -> Job:
        """Record and enqueue a job; returns it `pending` (or, for a repeated
        Idempotency-Key, the job that key already made, in its current state). The
        webhook endpoint it names is checked first (400), then a virtual key's policy:
        models and prices (403), TTL cap, rate (429), then its queue bound (429), budget
        (402) and concurrency (429).

        Fails fast: StoreUnavailable (503, Retry-After) at once while the store cannot
        accept jobs, and once the submit has taken `limits.submit_deadline_s` (each of its
        requests is bounded, but after an election several may each be slow). A submit
        past its deadline is cancelled and takes back what it made in the background, as
        any failed submit does; a retry with the same Idempotency-Key resumes it."""
        if not self.health.accepting:  # fail fast: a lost quorum or an election
            raise StoreUnavailable(f"the job store cannot accept jobs now: {self.health.reason}")
        uploaded = sum(len(u.data) for u in request.images)
        uploaded += len(request.mask.data) if request.mask is not None else 0
        deadline_s = self.limits.submit_deadline_s(uploaded)
        try:
            async with asyncio.timeout(deadline_s):
                return await self._submit(
                    request,
                    ttl_s=ttl_s,
                    request_id=request_id,
                    caller=caller,
                    idempotency_key=idempotency_key,
                    webhook=webhook,
                )
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"the job store did not take the submit within {deadline_s:g} s"
            ) from exc

    async def _submit(
        self,
        request: ImageRequest,
        *,
        ttl_s: int,
        request_id: str,
        caller: Caller,
        idempotency_key: str,
        webhook: str,
    ) -> Job:
        """`submit`'s work, without its deadline."""
        job_id = str(uuid.uuid4())
        if webhook:
            await self.webhooks.check(webhook)
        policy = caller.policy
        estimate = None
        if policy is not None:
            policy.check_models(request.model, request.fallbacks)
            estimate = self.governance.estimate(policy, request)
            ttl_s = policy.cap_ttl(ttl_s)
            await self.quotas.take_request(policy)
        key = check_key(idempotency_key) if idempotency_key else ""
        if key:
            fp = fingerprint(request, webhook)
            job_id, existing = await self._claim_key(request, fp, caller, key, job_id)
            if existing is not None:
                return existing
        hold, slot = await self._admit(policy, caller.owner, job_id, estimate)
        try:
            job, revision = await self._record(
                job_id, request, ttl_s, request_id, caller, slot, webhook, key, hold=hold
            )
            if not revision:  # an idempotent duplicate recorded it first (and shares the hold)
                await self._release(slot, job_id)
                return job
        except BaseException as exc:
            await self._undo(exc, self._give_back(slot, hold, job_id))
            raise
        return job

    async def _enqueue(self, job: Job, revision: int = 0) -> None:
        """Publish the job's message in its owner's lane. With the record's revision a
        worker claims it without a read; without (published together with the record),
        the worker reads the record first."""
        await self.queue.publish(job.id, job.dumps(), revision, tracing.carrier(), owner=job.owner)

    async def _admit(
        self, policy: KeyPolicy | None, owner: str, job_id: str, estimate: int | None
    ) -> tuple[BudgetHold | None, str]:
        """The key's queue bound, then its budget reservation and its concurrency slot
        (the reservation given back if the slot is refused): (the hold, the slot)."""
        if policy is None:
            return None, ""
        await self.governance.check_queue(policy, owner)
        hold = await self.governance.reserve(policy, job_id, estimate)
        try:
            return hold, await self.quotas.acquire(policy, job_id)
        except BaseException:
            await self.governance.release(hold, job_id)
            raise

    async def usage(self, caller: Caller) -> KeyUsage:
        """The caller's key's spend in its current period and its queue; Unauthenticated
        (401) for a caller without a configured virtual key (nothing is kept for it)."""
        if caller.policy is None:
            raise Unauthenticated(
                "usage is kept per configured virtual key: call with one (x-bf-vk)",
                code=ErrorCode.MISSING_VIRTUAL_KEY,
            )
        return await self.governance.usage(caller.policy, caller.owner)

    async def _claim_key(
        self, request: ImageRequest, fp: str, caller: Caller, key: str, job_id: str
    ) -> tuple[str, Job | None]:
        """Claim the Idempotency-Key for `job_id` (request fingerprint `fp`). (the job id
        to record, None) when this submit goes ahead; (its id, the job) when the key
        already made one."""
        claim = await self.idempotency.claim(caller.owner, key, job_id, fp)
        if claim is None:
            return job_id, None
        if claim.fingerprint != fp:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request",
                param="idempotency_key",
            )
        found = await self.records.get(claim.job_id)
        if found is not None:
            job, revision = await self._maintain(*found)
            await self._resume(job, revision)
            return claim.job_id, job
        if self._clock.time() - claim.created_at > IDEMPOTENT_SUBMIT_GRACE_S:
            raise IdempotencyConflict(
                "the job of this Idempotency-Key has expired; use a new key",
                code=ErrorCode.IDEMPOTENCY_JOB_EXPIRED,
                param="idempotency_key",
            )
        return claim.job_id, None  # its first submit is in flight, or died: finish it

    async def _resume(self, job: Job, revision: int) -> None:
        """An idempotent retry found the key's job: make sure what its first submit may not
        have finished is done (both writes are idempotent). Its list entry is written
        again; a pending job without a queue message (its submit died, or timed out,
        before publishing) is published."""
        await self.index.add(job.owner, job.kind, job.created_at, job.id)
        if job.status is Status.PENDING:
            await self._queue_if_missing(job, revision)

    async def _record(
        self,
        job_id: str,
        request: ImageRequest,
        ttl_s: int,
        request_id: str,
        caller: Caller,
        slot: str,
        webhook: str,
        key: str,
        *,
        hold: BudgetHold | None = None,
    ) -> tuple[Job, int]:
        """Upload, then create the record, index it and queue its message, the three
        writes in flight together (one acknowledged round trip; with a test's
        `after_record` hook set, the message follows the hook). (job, its revision)
        if this call created it; (the existing job, 0) if an idempotent duplicate did
        first. A record whose index write or publish failed is taken back (`_take_back`)
        before the error is raised: an accepted job is always queued and in its owner's
        list. A message that landed for a record that did not is dropped by the worker
        that gets it, once it is older than `RECORD_GRACE_S` (until then the record may
        still be on its way: the two go to different streams)."""
        nonce = secrets.token_hex(4)  # duplicates of one idempotent submit never share objects
        uploads = [(f"{nonce}.in{i}", u) for i, u in enumerate(request.images)]
        if request.mask is not None:
            uploads.append((f"{nonce}.mask", request.mask))
        refs = await asyncio.gather(*(self._upload(job_id, name, u) for name, u in uploads))
        mask = refs.pop() if request.mask is not None else None
        job = Job(
            id=job_id,
            kind=request.kind,
            request_id=request_id or str(uuid.uuid4()),
            owner=caller.owner,
            slot=slot,
            webhook=webhook,
            budget=hold,
            created_at=self._clock.time(),
            ttl_s=ttl_s,
            request=StoredRequest(
                model=request.model,
                prompt=request.prompt,
                params=dict(request.params),
                images=tuple(refs),
                mask=mask,
                fallbacks=request.fallbacks,
                warnings=request.warnings,
            ),
        )
        tracing.annotate(job)  # the submit's span: the job's trace starts here
        logs.tag(job)
        create = asyncio.ensure_future(self.records.create(job))
        try:
            created, indexed, queued = await asyncio.gather(
                create,
                self.index.add(caller.owner, job.kind, job.created_at, job.id),
                # one round trip: the message goes along (a test's hook: it follows)
                self._enqueue(job) if self.hooks.after_record is None else asyncio.sleep(0),
                return_exceptions=True,
            )
        except asyncio.CancelledError as exc:
            # a record this submit made is taken back. One it may have made (its write
            # was cut short) is too when there is no key: its id is this submit's alone,
            # and the 503'd client's retry would make a second job. With a key, the
            # retry resumes it (another submit of the key may own the record).
            made = create.done() and not create.cancelled() and create.exception() is None
            if made or not key:
                await self._undo(exc, self._take_back(job, caller, key))
            raise
        if isinstance(created, RevisionConflict):
            found = await self.records.get(job_id)
            if found is not None:
                return found[0], 0
            if not key:
                raise StoreUnavailable("job record vanished during a submit")
            # an earlier submit of this key was taken back, but its key stayed bound
            created = await self.records.recreate(job)
        if isinstance(created, BaseException):
            raise created  # a message that did land finds no record: the worker drops it
        if self.hooks.after_record is not None and not isinstance(indexed, BaseException):
            self.hooks.after_record(job)  # a test's: the record landed, the message not yet
            queued = await _outcome(self._enqueue(job, created))
        for failed in (indexed, queued):
            if isinstance(failed, BaseException):
                await self._undo(failed, self._take_back(job, caller, key))
                raise failed
        return job, created

    async def _upload(self, job_id: str, name: str, upload: Upload) -> ObjectRef:
        object_id = f"{job_id}.{name}"
        await self.objects.put(object_id, upload.data, upload.mime, constants.UPLOAD_TTL_S)
        return ObjectRef(
            object_id=object_id,
            content_type=upload.mime,
            size=len(upload.data),
            filename=upload.filename,
        )

    async def _take_back(self, job: Job, caller: Caller, key: str) -> None:
        """Undo a submit that was not accepted (the queue refused it, or a write failed),
        so nothing half-made stays: the record goes, then the key (the caller frees the
        slot and the budget reservation). If the record cannot be deleted (the store is
        down), the key stays bound to it, so that the client's retry with that key
        resumes this job instead of making a second one (`_resume`). A message the queue
        did take after all (a publish that timed out) finds no record and is dropped by
        the worker."""
        try:
            await self.records.delete(job.id)
        except StoreError:
            return
        if key:
            with contextlib.suppress(StoreError):
                await self.idempotency.release(caller.owner, key)

    async def _give_back(self, slot: str, hold: BudgetHold | None, job_id: str) -> None:
        """A submit that was not accepted frees its concurrency slot and its budget hold."""
        await self._release(slot, job_id)
        await self.governance.release(hold, job_id)

    async def _undo(self, error: BaseException, undo: Coroutine[Any, Any, None]) -> None:
        """Run a failed submit's clean-up `undo`: at once, or, when the submit was
        cancelled (past its deadline, or its caller gone), in the background, so the 503
        is not held up by a store that is slow right now."""
        if not isinstance(error, asyncio.CancelledError):
            await undo
            return
        task = asyncio.create_task(undo)
        self._unwinding.add(task)  # referenced until it ends
        task.add_done_callback(self._unwinding.discard)

    async def _release(self, slot: str, job_id: str) -> None:
        """Free a concurrency slot (best effort: a slot left behind is reclaimed)."""
        with contextlib.suppress(StoreError):
            await self.quotas.release(slot, job_id)

    # --- cancel ---------------------------------------------------------------------

    async def cancel(self, kind: Kind | None, job_id: str, caller: Caller) -> Job:
        """Cancel a pending or processing job (its provider call is aborted); JobConflict
        for a terminal one."""
        for _ in range(CANCEL_TRIES):
            job, revision = await self._read(kind, job_id, caller)
            if job.status.terminal:
                raise JobConflict(
                    f"job is already {job.status.value}; only pending or processing jobs "
                    "can be cancelled",
                    code=ErrorCode.JOB_NOT_CANCELLABLE,
                )
            cancelled = job.cancel(self._clock.time())
            await self._keep_message(job, revision)
            try:
                await self.records.update(cancelled, revision)
            except RevisionConflict:
                continue  # a worker moved it meanwhile: decide again on the new state
            await self._ended(cancelled)
            return cancelled
        raise StoreUnavailable(f"job {job_id} kept changing while being cancelled")


async def _outcome(write: Awaitable[None]) -> BaseException | None:
    """What `write` raised, if anything, as `asyncio.gather(return_exceptions=True)`
    reports it."""
    try:
        await write
    except BaseException as exc:
        return exc
    return None
