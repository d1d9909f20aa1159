"""Job records, one per subject `$KV.JOBS.<id>`, written with per-revision TTLs and
compare-and-set.

nats-py's KV API cannot set a TTL on an update, so with JetStream the writes go straight to
the bucket's subjects with `Nats-TTL` and `Nats-Expected-Last-Subject-Sequence` headers
(both enforced by the server; `store/jetstream.py`). Reads see the latest write (from the
stream's leader), so a job that exists is never reported missing; while there is no
leader, a terminal record is still served from any replica, since it can no longer change.
A non-terminal record lives `PENDING_TTL_S` at most; a terminal one lives its job's own
TTL, so the clock of a result starts at completion.
"""

from __future__ import annotations

import asyncio

from imagejobs.domain import constants
from imagejobs.domain.errors import RevisionConflict, StoreUnavailable
from imagejobs.domain.jobs import Job
from imagejobs.store.protocols import Subjects

JOBS_STREAM = f"KV_{constants.JOBS_BUCKET}"
_PREFIX = f"$KV.{constants.JOBS_BUCKET}."
ANY_COPIES_BATCH = 256  # records one `any_copies` request asks for


def job_subject(job_id: str) -> str:
    return _PREFIX + job_id


def job_id_of_record(subject: str) -> str | None:
    """The job id of a record subject; None for another subject."""
    return subject[len(_PREFIX) :] if subject.startswith(_PREFIX) else None


class JobRecords:
    """`JobStore` on `Subjects`. Every write states the revision it replaces."""

    def __init__(self, subjects: Subjects) -> None:
        self._subjects = subjects

    async def create(self, job: Job) -> int:
        """Write a new record; RevisionConflict if the id exists. Returns its revision."""
        return await self._write(job, expected_revision=0)

    async def recreate(self, job: Job) -> int:
        """Write the record again where only its delete marker is left (a submit that was
        taken back but whose Idempotency-Key could not be released: the key's retry makes
        the same job again); RevisionConflict if a record is there after all."""
        data, marker = await self._subjects.last(job_subject(job.id))
        if data:
            raise RevisionConflict(f"job {job.id} exists")
        return await self._write(job, expected_revision=marker)

    async def update(self, job: Job, expected_revision: int) -> int:
        """Replace revision `expected_revision`; RevisionConflict if it is not the latest."""
        return await self._write(job, expected_revision=expected_revision)

    async def delete(self, job_id: str) -> None:
        """Remove a record (a submit that was not accepted after all)."""
        await self._subjects.delete(job_subject(job_id), ttl_s=constants.DELETE_MARKER_TTL_S)

    async def get(self, job_id: str, *, leaderless: bool = False) -> tuple[Job, int] | None:
        """The record and its revision as last written, or None when absent or expired.
        When the latest write cannot be read (no leader: StoreUnavailable), or the caller
        knows it cannot (`leaderless`), a terminal record from any copy is returned (it
        can no longer change); anything else raises StoreUnavailable."""
        subject = job_subject(job_id)
        if not leaderless:
            try:
                data, revision = await self._subjects.last(subject)
            except StoreUnavailable:
                return await self._settled(subject)
            if not data:  # absent, a TTL expiry or a delete marker
                return None
            return Job.loads(data), revision
        return await self._settled(subject)

    async def any_copies(self, job_ids: list[str]) -> dict[str, tuple[Job, int]]:
        """The records of `job_ids` that are there, from any copy, in concurrent requests
        of at most ANY_COPIES_BATCH ids (maybe older than the latest write: for claims
        only)."""
        subjects = [job_subject(i) for i in job_ids]
        replies = await asyncio.gather(
            *(
                self._subjects.any_copies(*subjects[start : start + ANY_COPIES_BATCH])
                for start in range(0, len(subjects), ANY_COPIES_BATCH)
            )
        )
        found: dict[str, tuple[Job, int]] = {}
        for subject, (data, revision) in (item for reply in replies for item in reply.items()):
            job_id = job_id_of_record(subject)
            if data and job_id is not None:
                found[job_id] = (Job.loads(data), revision)
        return found

    async def _settled(self, subject: str) -> tuple[Job, int]:
        """A terminal record from any copy; StoreUnavailable if none has one."""
        data, revision = await self._subjects.any_copy(subject)
        job = Job.loads(data) if data else None
        if job is None or not job.status.terminal:
            raise StoreUnavailable("the job store has no leader; its latest write is unknown")
        return job, revision

    async def _write(self, job: Job, expected_revision: int) -> int:
        ttl = job.ttl_s if job.status.terminal else constants.PENDING_TTL_S
        try:
            return await self._subjects.put(
                job_subject(job.id), job.dumps(), ttl_s=ttl, expected=expected_revision
            )
        except RevisionConflict as exc:
            raise RevisionConflict(f"job {job.id} changed (expected {expected_revision})") from exc
