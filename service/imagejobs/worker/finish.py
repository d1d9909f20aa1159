"""The steps after a job's terminal state is written, by whoever wrote it: the worker that
ran it, the API's cancel, or the API's expiry on read.

The webhook delivery a job owes is bound to its terminal state: `owe_webhook` publishes
the intent to the outbox (confirmed by the store) before the job's work-queue message is
acked, and every path that acks the message of a terminal job calls it first (the worker
that finds a job already terminal on a redelivery included). So a writer that dies
between its terminal write and the intent leaves the message behind, and the next
delivery of it publishes the intent; the outbox drops the repeat (`<job id>.<event>`).
"""

from __future__ import annotations

import contextlib
import logging

from imagejobs.domain.errors import StoreError
from imagejobs.domain.jobs import Job
from imagejobs.runtime import metrics, tracing
from imagejobs.store.protocols import JobQueue, Outbox, Quotas
from imagejobs.webhooks.payload import intent_of

log = logging.getLogger(__name__)


async def owe_webhook(job: Job, outbox: Outbox) -> None:
    """Publish the webhook delivery `job` owes (a terminal job submitted with a webhook;
    nothing for others), confirmed by the store; StoreError when it could not be. The
    current trace context goes with it: the deliveries' spans join the job's trace."""
    intent = intent_of(job, tracing.carrier())
    if intent is not None:
        await outbox.publish(intent.endpoint, intent.msg_id, job.id, intent.dumps())


async def job_ended(
    job: Job, quotas: Quotas, outbox: Outbox, *, announce_to: JobQueue | None = None
) -> None:
    """`job` is terminal now and this process's write made it so:

    1. owe its webhook delivery (`owe_webhook`);
    2. with `announce_to` (the writer is not the job's worker: a cancel, an expiry), tell
       whichever worker runs it to abort its provider call;
    3. free the virtual key's concurrency slot the job held;
    4. count the job in the metrics (`imagejobs_completions_total`, `_job_seconds`).

    Steps 2-4 are best effort and never raise a store error: the record is final either
    way, a missed cancel notice is caught by the worker's heartbeat and a slot left
    behind is reclaimed by the next submit that needs it. Step 1 raises StoreError (after
    the others ran): the caller must then leave the job's work-queue message unacked, so
    that its next delivery publishes the intent."""
    try:
        await owe_webhook(job, outbox)
    finally:
        if announce_to is not None:
            try:
                await announce_to.announce_cancel(job.id)
            except StoreError as exc:
                log.warning("job %s: cancel notice not sent: %s", job.id, exc)
        with contextlib.suppress(StoreError):
            await quotas.release(job.slot, job.id)
        metrics.finished(job)
