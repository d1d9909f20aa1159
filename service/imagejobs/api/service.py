"""The API side of the job engine: accept, read, wait on, watch, cancel and list jobs. No
provider is ever called here; workers do that.

Submit order (what makes a 202 safe): [Idempotency-Key claimed] -> uploads to the object
store -> job record created (`pending`, create-only) and indexed -> message published
(deduplicated by job id) -> 202. If the queue refuses the message (full), the record is
deleted again and the caller gets 429: nothing is accepted that cannot be held. If the API
dies between the record and the publish, the record is an orphan no worker will see; the
first read of it after `REPAIR_AFTER_S` (a poll, a wait, a list, an idempotent retry)
finds no queue message and publishes it.

Reads also enforce the job's age limit: a job not terminal `max_job_age_s` after submit
is failed on its next read, whatever happened to it (workers check the same on delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from imagejobs.api.auth import Caller
from imagejobs.api.requests import ImageRequest, check_key, fingerprint
from imagejobs.api.uploads import Upload
from imagejobs.domain import constants
from imagejobs.domain.errors import (
    IdempotencyConflict,
    JobConflict,
    JobNotFound,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
)
from imagejobs.domain.jobs import (
    Job,
    ObjectRef,
    Status,
    StoredRequest,
    age_limit_error,
    is_job_id,
)
from imagejobs.domain.kinds import Kind
from imagejobs.runtime import metrics
from imagejobs.store.idempotency import IdempotencyStore
from imagejobs.store.index import JobIndex, after, encode_token
from imagejobs.store.notifier import Notifier
from imagejobs.store.objects import ObjectStore, StoredObject
from imagejobs.store.queue import JobQueue
from imagejobs.store.quotas import Quotas
from imagejobs.store.records import JobStore

log = logging.getLogger(__name__)

IDEMPOTENT_SUBMIT_GRACE_S = 60.0  # a key whose job record never appeared within this: gone
REPAIR_CHECK_EVERY_S = 10.0  # per job and process: how often an orphan check may run
FAILPOINT_BEFORE_PUBLISH = "submit.before_publish"


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_page_token: str


@dataclass(frozen=True)
class EngineLimits:
    max_job_age_s: float = constants.MAX_JOB_AGE_S
    max_wait_s: float = constants.MAX_WAIT_S
    failpoint: str = ""  # tests only: die at a named point, as a crash would


class Engine:
    def __init__(
        self,
        store: JobStore,
        queue: JobQueue,
        objects: ObjectStore,
        *,
        index: JobIndex,
        idempotency: IdempotencyStore,
        notifier: Notifier,
        quotas: Quotas,
        limits: EngineLimits | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.objects = objects
        self.index = index
        self.idempotency = idempotency
        self.notifier = notifier
        self.quotas = quotas
        self.limits = limits or EngineLimits()
        self._repair_checked: dict[str, float] = {}

    # --- submit ---------------------------------------------------------------------

    async def submit(
        self,
        request: ImageRequest,
        *,
        ttl_s: int,
        request_id: str,
        caller: Caller,
        idempotency_key: str = "",
    ) -> Job:
        """Record and enqueue a job; returns it `pending` (or, for a repeated
        Idempotency-Key, the job that key already made, in its current state). A virtual
        key's policy applies first: models (403), TTL cap, rate and concurrency (429)."""
        job_id = str(uuid.uuid4())
        policy = caller.policy
        if policy is not None:
            policy.check_models(request.model, request.fallbacks)
            ttl_s = policy.cap_ttl(ttl_s)
            await self.quotas.take_request(policy)
        if idempotency_key:
            key = check_key(idempotency_key)
            fp = fingerprint(request)
            claim = await self.idempotency.claim(caller.owner, key, job_id, fp)
            if claim is not None:
                if claim.fingerprint != fp:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was already used with a different request",
                        param="idempotency_key",
                    )
                found = await self.store.get(claim.job_id)
                if found is not None:
                    return (await self._maintain(*found))[0]
                if time.time() - claim.created_at > IDEMPOTENT_SUBMIT_GRACE_S:
                    raise IdempotencyConflict(
                        "the job of this Idempotency-Key has expired; use a new key",
                        code="idempotency_job_expired",
                        param="idempotency_key",
                    )
                job_id = claim.job_id  # its first submit is in flight, or died: finish it
        slot = await self.quotas.acquire(policy, job_id) if policy is not None else ""
        try:
            job, revision = await self._record(job_id, request, ttl_s, request_id, caller, slot)
        except BaseException:
            await self._release(slot, job_id)
            raise
        if not revision:  # an idempotent duplicate recorded it first
            await self._release(slot, job_id)
            return job
        if self.limits.failpoint == FAILPOINT_BEFORE_PUBLISH:
            log.critical(
                "failpoint %s: exiting before publishing job %s", FAILPOINT_BEFORE_PUBLISH, job.id
            )
            os._exit(137)
        try:
            await self.queue.publish(job.id, job.dumps(), revision)
        except BaseException:
            # not accepted: take the record (and the key) back, so nothing half-made stays
            with contextlib.suppress(StoreError):
                await self.store.delete(job.id)
            if idempotency_key:
                with contextlib.suppress(StoreError):
                    await self.idempotency.release(caller.owner, idempotency_key.strip())
            await self._release(slot, job.id)
            raise
        return job

    async def _record(
        self,
        job_id: str,
        request: ImageRequest,
        ttl_s: int,
        request_id: str,
        caller: Caller,
        slot: str,
    ) -> tuple[Job, int]:
        """Upload, then create and index the record. (job, its revision) if this call
        created it; (the existing job, 0) if an idempotent duplicate did first."""
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
            created_at=time.time(),
            ttl_s=ttl_s,
            request=StoredRequest(
                model=request.model,
                prompt=request.prompt,
                params=dict(request.params),
                images=tuple(refs),
                mask=mask,
                fallbacks=request.fallbacks,
            ),
        )
        created, indexed = await asyncio.gather(
            self.store.create(job),
            self.index.add(caller.owner, job.kind, job.created_at, job.id),
            return_exceptions=True,
        )
        if isinstance(created, RevisionConflict):
            found = await self.store.get(job_id)
            if found is None:
                raise StoreUnavailable("job record vanished during an idempotent submit")
            return found[0], 0
        for outcome in (created, indexed):
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(created, int)
        return job, created

    async def _release(self, slot: str, job_id: str) -> None:
        """Free a concurrency slot (best effort: a slot left behind is reclaimed)."""
        with contextlib.suppress(StoreError):
            await self.quotas.release(slot, job_id)

    async def _upload(self, job_id: str, name: str, upload: Upload) -> ObjectRef:
        object_id = f"{job_id}.{name}"
        await self.objects.put(object_id, upload.data, upload.mime, constants.UPLOAD_TTL_S)
        return ObjectRef(
            object_id=object_id,
            content_type=upload.mime,
            size=len(upload.data),
            filename=upload.filename,
        )

    # --- read -----------------------------------------------------------------------

    async def _read(self, kind: Kind, job_id: str, caller: Caller) -> tuple[Job, int]:
        """The job of that kind and its revision, if the caller may see it (its own, or a
        public one); JobNotFound for anything else (another caller's job, another kind,
        expired, never existed: no leaks)."""
        found = await self.store.get(job_id) if _plausible_id(job_id) else None
        if found is None:
            raise JobNotFound()
        job, revision = found
        if job.kind is not kind or not caller.can_access(job.owner) or job.expired():
            raise JobNotFound()
        return await self._maintain(job, revision)

    async def get(self, kind: Kind, job_id: str, caller: Caller) -> Job:
        return (await self._read(kind, job_id, caller))[0]

    async def _maintain(self, job: Job, revision: int) -> tuple[Job, int]:
        """Enforce the age limit and repair an orphan, lazily, on read."""
        if job.status.terminal:
            return job, revision
        now = time.time()
        if now - job.created_at > self.limits.max_job_age_s:
            failed = job.fail(age_limit_error(self.limits.max_job_age_s), now)
            try:
                revision = await self.store.update(failed, revision)
            except RevisionConflict:  # it moved meanwhile: report what it is now
                found = await self.store.get(job.id)
                if found is None:
                    raise JobNotFound() from None
                return found
            await self.queue.announce_cancel(job.id)
            await self._release(job.slot, job.id)
            metrics.finished(failed)
            return failed, revision
        if job.status is Status.PENDING and now - job.created_at > constants.REPAIR_AFTER_S:
            await self._repair(job, revision, now)
        return job, revision

    async def _repair(self, job: Job, revision: int, now: float) -> None:
        """Publish a pending job that has no queue message (its API died in between)."""
        job_id = job.id
        if now - self._repair_checked.get(job_id, 0.0) < REPAIR_CHECK_EVERY_S:
            return
        if len(self._repair_checked) > 10_000:
            self._repair_checked.clear()
        self._repair_checked[job_id] = now
        if not await self.queue.contains(job_id):
            log.warning("job %s was recorded but never queued; publishing it now", job_id)
            await self.queue.publish(job_id, job.dumps(), revision)

    async def image(self, kind: Kind, job_id: str, index: int, caller: Caller) -> StoredObject:
        """One result image's bytes; JobNotFound when there is none (or it expired)."""
        job = await self.get(kind, job_id, caller)
        if job.result is None or not 0 <= index < len(job.result.images):
            raise JobNotFound()
        obj = await self.objects.get(job.result.images[index].ref.object_id)
        if obj is None:
            raise JobNotFound()
        return obj

    # --- wait and watch -------------------------------------------------------------

    async def wait(self, kind: Kind, job_id: str, caller: Caller, wait_s: float) -> Job:
        """The job once terminal, or as it is after `wait_s` (capped), whichever is first."""
        wait_s = min(max(wait_s, 0.0), self.limits.max_wait_s)
        deadline = time.monotonic() + wait_s
        with self.notifier.listen(job_id) as listener:  # before the read: nothing missed
            job, revision = await self._read(kind, job_id, caller)
            while not job.status.terminal and not self.notifier.closed.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(listener.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is None:
                    job, revision = await self._read(kind, job_id, caller)
                elif item[0] > revision:
                    revision, job = item
        return job

    async def watch(self, kind: Kind, job_id: str, caller: Caller) -> AsyncIterator[Job | None]:
        """The job now, then every change until it is terminal. Yields None when nothing
        happened for WATCH_KEEPALIVE_S (after a safety re-read), for keep-alives."""
        with self.notifier.listen(job_id) as listener:
            job, revision = await self._read(kind, job_id, caller)
            yield job
            while not job.status.terminal and not self.notifier.closed.is_set():
                try:
                    item = await asyncio.wait_for(listener.queue.get(), constants.WATCH_KEEPALIVE_S)
                except TimeoutError:
                    item = None
                if item is None:  # missed changes possible, or idle: re-read
                    new_job, new_revision = await self._read(kind, job_id, caller)
                else:
                    new_revision, new_job = item
                if new_revision > revision:
                    job, revision = new_job, new_revision
                    yield job
                elif item is None:
                    yield None

    # --- cancel ---------------------------------------------------------------------

    async def cancel(self, kind: Kind, job_id: str, caller: Caller) -> Job:
        """Cancel a pending or processing job (its provider call is aborted); JobConflict
        for a terminal one."""
        for _ in range(10):
            job, revision = await self._read(kind, job_id, caller)
            if job.status.terminal:
                raise JobConflict(
                    f"job is already {job.status.value}; only pending or processing jobs "
                    "can be cancelled",
                    code="job_not_cancellable",
                )
            cancelled = job.cancel(time.time())
            try:
                await self.store.update(cancelled, revision)
            except RevisionConflict:
                continue  # a worker moved it meanwhile: decide again on the new state
            await self.queue.announce_cancel(job_id)
            await self._release(job.slot, job_id)
            metrics.finished(cancelled)
            return cancelled
        raise StoreUnavailable(f"job {job_id} kept changing while being cancelled")

    # --- list -----------------------------------------------------------------------

    async def list(
        self,
        caller: Caller,
        *,
        status: Status | None,
        kind: Kind | None,
        limit: int,
        page_token: str,
    ) -> Page:
        """The caller's jobs, newest first, `limit` per page."""
        entries = after(await self.index.entries(caller.owner, kind), page_token)
        jobs: list[Job] = []
        last = -1
        position = 0
        while position < len(entries) and len(jobs) < limit:
            batch = entries[position : position + max(limit, 16)]
            found = await asyncio.gather(*(self.store.get(e.job_id) for e in batch))
            for offset, record in enumerate(found):
                if record is None:
                    continue
                job = record[0]
                if job.owner != caller.owner or job.expired():
                    continue
                if status is not None and job.status is not status:
                    continue
                jobs.append(job)
                last = position + offset
                if len(jobs) == limit:
                    break
            position += len(batch)
        more = len(jobs) == limit and last + 1 < len(entries)
        return Page(jobs=jobs, next_page_token=encode_token(entries[last]) if more else "")


def _plausible_id(job_id: str) -> bool:
    return is_job_id(job_id)
