"""Job records in the JOBS KV bucket, written with per-revision TTLs and compare-and-set.

nats-py's KV API cannot set a TTL on an update, so writes go straight to the bucket's
subject `$KV.JOBS.<id>` with `Nats-TTL` and `Nats-Expected-Last-Subject-Sequence`
headers (both enforced by the server); reads are direct gets. A non-terminal record
lives `PENDING_TTL_S` at most; a terminal one lives its job's own TTL, so the clock of
a result starts at completion.
"""

from __future__ import annotations

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError

from imagejobs.domain import constants
from imagejobs.domain.errors import RevisionConflict, StoreUnavailable
from imagejobs.domain.jobs import Job
from imagejobs.store.jetstream import WRONG_LAST_SEQUENCE, last_on_subject

_STREAM = f"KV_{constants.JOBS_BUCKET}"
_PREFIX = f"$KV.{constants.JOBS_BUCKET}."


def job_subject(job_id: str) -> str:
    return _PREFIX + job_id


class JobStore:
    """Reads and writes job records. Every write states the revision it replaces."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def create(self, job: Job) -> int:
        """Write a new record; RevisionConflict if the id exists. Returns its revision."""
        return await self._write(job, expected_revision=0)

    async def update(self, job: Job, expected_revision: int) -> int:
        """Replace revision `expected_revision`; RevisionConflict if it is not the latest."""
        return await self._write(job, expected_revision=expected_revision)

    async def delete(self, job_id: str) -> None:
        """Remove a record (a submit that was not accepted after all)."""
        headers = {"KV-Operation": "DEL", "Nats-TTL": f"{constants.DELETE_MARKER_TTL_S}s"}
        try:
            await self._js.publish(job_subject(job_id), b"", headers=headers)
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"job store delete failed: {type(exc).__name__}") from exc

    async def get(self, job_id: str) -> tuple[Job, int] | None:
        """The record and its revision, or None when absent or expired."""
        data, revision = await last_on_subject(
            self._js, _STREAM, job_subject(job_id), "job store read"
        )
        if not data:  # absent, a TTL expiry marker or a delete
            return None
        return Job.loads(data), revision

    async def _write(self, job: Job, expected_revision: int) -> int:
        ttl = job.ttl_s if job.status.terminal else constants.PENDING_TTL_S
        headers = {
            "Nats-TTL": f"{ttl}s",
            "Nats-Expected-Last-Subject-Sequence": str(expected_revision),
        }
        try:
            ack = await self._js.publish(job_subject(job.id), job.dumps(), headers=headers)
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise RevisionConflict(
                    f"job {job.id} changed (expected {expected_revision})"
                ) from exc
            raise StoreUnavailable(f"job store write failed: {exc.description}") from exc
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"job store write failed: {type(exc).__name__}") from exc
        return int(ack.seq)
