"""The steps after a job's terminal state is written, by whoever wrote it: the worker that
ran it, the API's cancel, or the API's expiry on read."""

from __future__ import annotations

import contextlib
import logging

from imagejobs.domain.errors import StoreError
from imagejobs.domain.jobs import Job
from imagejobs.runtime import metrics
from imagejobs.store.protocols import JobQueue, Quotas

log = logging.getLogger(__name__)


async def job_ended(job: Job, quotas: Quotas, *, announce_to: JobQueue | None = None) -> None:
    """`job` is terminal now and this process's write made it so:

    1. with `announce_to` (the writer is not the job's worker: a cancel, an expiry), tell
       whichever worker runs it to abort its provider call;
    2. free the virtual key's concurrency slot the job held;
    3. count the job in the metrics (`imagejobs_completions_total`, `_job_seconds`).

    Each step is best effort and never raises a store error: the record is final either
    way, a missed cancel notice is caught by the worker's heartbeat and a slot left
    behind is reclaimed by the next submit that needs it."""
    if announce_to is not None:
        try:
            await announce_to.announce_cancel(job.id)
        except StoreError as exc:
            log.warning("job %s: cancel notice not sent: %s", job.id, exc)
    with contextlib.suppress(StoreError):
        await quotas.release(job.slot, job.id)
    metrics.finished(job)
