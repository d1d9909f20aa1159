"""The read side of the job service: one job, one result image, a long-poll wait, a watch
of every change, and the caller's list.

Reads also repair, lazily: a job not terminal `max_job_age_s` after submit is failed on
its next read, whatever happened to it (workers check the same on delivery); a pending
job older than `REPAIR_AFTER_S` whose queue message is missing (its API died between the
record and the publish) is published by the read that finds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import JobNotFound, RevisionConflict, StoreError
from imagejobs.domain.jobs import Job, Status, age_limit_error, is_job_id
from imagejobs.domain.keys import Caller
from imagejobs.domain.kinds import Kind
from imagejobs.runtime import logs
from imagejobs.store.clock import Clock, SystemClock
from imagejobs.store.index import Entry, IndexPage, decode_token, encode_token
from imagejobs.store.protocols import Backend, StoredObject
from imagejobs.worker.finish import job_ended

log = logging.getLogger(__name__)

REPAIR_CHECK_EVERY_S = 10.0  # per job and process: how often an orphan check may run
REPAIR_CHECKS_KEPT = 10_000
LIST_BATCH_MIN = 16  # index entries (and records) read at once while filling a page
LIST_BATCH_MAX = 256  # ... as it grows, when entries are skipped
LIST_INDEX_PAGES = 8  # index pages one list reads at most: 1,264 to 1,836 entries (by limit)
Jobs = list[Job]  # (`JobReader.list` hides the builtin in its class)


@dataclass(frozen=True)
class ServiceLimits:
    """`max_job_age_s`: a job not terminal this long after submit is failed (s);
    `max_wait_s`: the cap of a long-poll (s); `submit_timeout_s`: a submit answers within
    this (s), `submit_upload_s_per_mib` more for each MiB it uploads."""

    max_job_age_s: float = constants.MAX_JOB_AGE_S
    max_wait_s: float = constants.MAX_WAIT_S
    submit_timeout_s: float = constants.SUBMIT_TIMEOUT_S
    submit_upload_s_per_mib: float = constants.SUBMIT_UPLOAD_S_PER_MIB

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceLimits:
        return cls(
            max_job_age_s=settings.max_job_age_s,
            max_wait_s=settings.max_wait_s,
            submit_timeout_s=settings.submit_timeout_s,
            submit_upload_s_per_mib=settings.submit_upload_s_per_mib,
        )

    def submit_deadline_s(self, upload_bytes: int) -> float:
        """How long a submit that uploads `upload_bytes` may take (s)."""
        return self.submit_timeout_s + self.submit_upload_s_per_mib * upload_bytes / 2**20


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_page_token: str


class JobReader:
    """Reads jobs for callers: a caller sees its own jobs and public (anonymous) ones;
    anything else is JobNotFound, as an expired or unknown job is (no leaks)."""

    def __init__(
        self, backend: Backend, *, limits: ServiceLimits | None = None, clock: Clock | None = None
    ) -> None:
        self.records = backend.records
        self.queue = backend.queue
        self.objects = backend.objects
        self.index = backend.index
        self.quotas = backend.quotas
        self.changes = backend.changes
        self.outbox = backend.outbox
        self.budgets = backend.budgets
        self.health = backend.health
        self.presence = backend.presence
        self.limits = limits or ServiceLimits()
        self._clock = clock or SystemClock()
        self._repair_checked: dict[str, float] = {}

    def now(self) -> float:
        """The service clock's time (epoch s)."""
        return self._clock.time()

    async def _read(self, kind: Kind | None, job_id: str, caller: Caller) -> tuple[Job, int]:
        """The job and its revision, if the caller may see it (and it is of `kind`, when
        one is given: job ids are unique, so the kind only narrows). The latest write is
        read, so JobNotFound is only ever said of a job that does not exist or has expired;
        while the store has no leader, only a terminal job can be read (StoreUnavailable
        otherwise: 503, never a 404 that might be wrong)."""
        leaderless = not self.health.accepting
        found = await self.records.get(job_id, leaderless=leaderless) if is_job_id(job_id) else None
        if found is None:
            raise JobNotFound()
        job, revision = found
        if (
            (kind is not None and job.kind is not kind)
            or not caller.can_access(job.owner)
            or job.expired(self._clock.time())
        ):
            raise JobNotFound()
        logs.tag(job)
        return await self._maintain(job, revision)

    async def get(self, kind: Kind | None, job_id: str, caller: Caller) -> Job:
        return (await self._read(kind, job_id, caller))[0]

    async def _maintain(self, job: Job, revision: int) -> tuple[Job, int]:
        """Enforce the age limit and repair an orphan, lazily, on read."""
        if job.status.terminal:
            return job, revision
        now = self._clock.time()
        if now - job.created_at > self.limits.max_job_age_s:
            return await self._expire(job, revision, now)
        if job.status is Status.PENDING and now - job.created_at > constants.REPAIR_AFTER_S:
            await self._repair(job, revision, now)
        return job, revision

    async def _expire(self, job: Job, revision: int, now: float) -> tuple[Job, int]:
        """Fail a job past its age limit (and abort it wherever it runs)."""
        failed = job.fail(age_limit_error(self.limits.max_job_age_s), now)
        await self._keep_message(job, revision)
        try:
            revision = await self.records.update(failed, revision)
        except RevisionConflict:  # it moved meanwhile: report what it is now
            found = await self.records.get(job.id)
            if found is None:
                raise JobNotFound() from None
            return found
        await self._ended(failed)
        return failed, revision

    async def _keep_message(self, job: Job, revision: int) -> None:
        """Before this process makes a job with a webhook or a budget hold terminal: make
        sure the job's work-queue message exists (a pending job whose submit died before
        publishing has none; a processing job's message stays until its worker acks it,
        which it does only after paying what the job owes). That message is the backstop
        of the webhook intent and of the budget settlement."""
        owes = job.webhook or job.budget is not None  # a webhook intent, a budget settlement
        if (
            owes
            and job.status is Status.PENDING
            and not await self.queue.contains(job.id, owner=job.owner)
        ):
            await self.queue.publish(job.id, job.dumps(), revision, owner=job.owner)

    async def _ended(self, job: Job) -> None:
        """The steps after the API's own terminal write (cancel, expiry). An intent (or a
        settlement) that cannot be done now is not an error for the caller: the job's work-queue
        message (see `_keep_message`) makes the worker that gets it publish it."""
        try:
            await job_ended(job, self.quotas, self.outbox, self.budgets, announce_to=self.queue)
        except StoreError as exc:
            log.warning("job %s: webhook intent left to its queue message: %s", job.id, exc)

    async def _repair(self, job: Job, revision: int, now: float) -> None:
        """Publish a pending job that has no queue message (its API died in between)."""
        job_id = job.id
        if now - self._repair_checked.get(job_id, 0.0) < REPAIR_CHECK_EVERY_S:
            return
        if len(self._repair_checked) > REPAIR_CHECKS_KEPT:
            self._repair_checked.clear()
        self._repair_checked[job_id] = now
        await self._queue_if_missing(job, revision)

    async def _queue_if_missing(self, job: Job, revision: int) -> None:
        """Publish `job` (pending, at `revision`) in its owner's lane when the work queue
        has no message for it, logging it: its submit died, or timed out, between
        recording and publishing."""
        if not await self.queue.contains(job.id, owner=job.owner):
            log.warning("job %s was recorded but never queued; publishing it now", job.id)
            await self.queue.publish(job.id, job.dumps(), revision, owner=job.owner)

    async def image(
        self, kind: Kind | None, job_id: str, index: int, caller: Caller
    ) -> StoredObject:
        """One result image's bytes; JobNotFound when there is none (or it expired)."""
        job = await self.get(kind, job_id, caller)
        if job.result is None or not 0 <= index < len(job.result.images):
            raise JobNotFound()
        obj = await self.objects.get(job.result.images[index].ref.object_id)
        if obj is None:
            raise JobNotFound()
        return obj

    # --- wait and watch -------------------------------------------------------------

    async def wait(self, kind: Kind | None, job_id: str, caller: Caller, wait_s: float) -> Job:
        """The job once terminal, or as it is after `wait_s` seconds (capped at
        `max_wait_s`), whichever is first."""
        wait_s = min(max(wait_s, 0.0), self.limits.max_wait_s)
        deadline = self._clock.monotonic() + wait_s
        with self.changes.listen(job_id) as listener:  # before the read: nothing missed
            job, revision = await self._read(kind, job_id, caller)
            while not job.status.terminal and not self.changes.closed.is_set():
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await self._clock.wait_for(listener.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is None:
                    job, revision = await self._read(kind, job_id, caller)
                elif item[0] > revision:
                    revision, job = item
        return job

    async def watch(
        self, kind: Kind | None, job_id: str, caller: Caller
    ) -> AsyncIterator[Job | None]:
        """The job now, then every change until it is terminal. Yields None when nothing
        happened for WATCH_KEEPALIVE_S (after a safety re-read), for keep-alives."""
        with self.changes.listen(job_id) as listener:
            job, revision = await self._read(kind, job_id, caller)
            yield job
            while not job.status.terminal and not self.changes.closed.is_set():
                try:
                    item = await self._clock.wait_for(
                        listener.queue.get(), constants.WATCH_KEEPALIVE_S
                    )
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

    # --- list -----------------------------------------------------------------------

    async def _listed(
        self, batch: list[Entry], caller: Caller, status: Status | None
    ) -> list[Job | None]:
        """Each entry's job if the page shows it (the caller's, live, of `status`)."""
        found = await asyncio.gather(*(self.records.get(e.job_id) for e in batch))
        now = self._clock.time()
        return [
            record[0]
            if record is not None
            and record[0].owner == caller.owner
            and not record[0].expired(now)
            and (status is None or record[0].status is status)
            else None
            for record in found
        ]

    async def list(
        self,
        caller: Caller,
        *,
        status: Status | None,
        kind: Kind | None,
        limit: int,
        page_token: str,
    ) -> Page:
        """The caller's own jobs (never another's, public or not), newest first (the order
        their index writes were acknowledged: store/index.py), `limit` per page. Entries
        whose record has gone, or not of `status`, are skipped; the index is read a page
        at a time (growing), LIST_INDEX_PAGES at most: a page that found fewer than
        `limit` by then is returned short, its token going on from where it stopped."""
        before = decode_token(page_token) if page_token else 0
        jobs: list[Job] = []
        batch = max(limit, LIST_BATCH_MIN)
        for _ in range(LIST_INDEX_PAGES):
            page = await self.index.page(caller.owner, kind, before, batch)
            token = await self._fill(jobs, page, caller, status, limit)
            if token is not None:
                return Page(jobs=jobs, next_page_token=token)
            before = page.next_before
            batch = min(batch * 2, LIST_BATCH_MAX)
        return Page(jobs=jobs, next_page_token=encode_token(before))

    async def _fill(
        self, jobs: Jobs, page: IndexPage, caller: Caller, status: Status | None, limit: int
    ) -> str | None:
        """Add the page's listed jobs to `jobs`, up to `limit`; the next page token once the
        list page is done ("" when nothing is left), None while it needs more entries."""
        entries = page.entries
        for n, job in enumerate(await self._listed(entries, caller, status)):
            if job is None:
                continue
            jobs.append(job)
            if len(jobs) == limit:
                more = n + 1 < len(entries) or page.next_before
                return encode_token(entries[n].seq) if more else ""
        return None if page.next_before else ""
