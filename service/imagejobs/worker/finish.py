"""The steps after a job's terminal state is written, by whoever wrote it: the worker that
ran it, the API's cancel, or the API's expiry on read.

What a terminal job owes is bound to its terminal state: the webhook delivery (the intent
published to the outbox, confirmed by the store) and the settlement of its budget hold
(its real cost, or the release of its reservation; store/budgets.py). `pay_debts` does
both before the job's work-queue message is acked, and every path that acks the message
of a terminal job calls it first (the worker that finds a job already terminal on a
redelivery included). So a writer that dies between its terminal write and these leaves
the message behind, and the next delivery of it pays them; the outbox drops the repeated
intent (`<job id>.<event>`), and a settled hold is not settled twice.
"""

from __future__ import annotations

import contextlib
import logging

from imagejobs.domain.errors import StoreError
from imagejobs.domain.jobs import Job
from imagejobs.runtime import metrics, tracing
from imagejobs.store.protocols import Budgets, JobQueue, Outbox, Quotas
from imagejobs.webhooks.payload import intent_of

log = logging.getLogger(__name__)


async def owe_webhook(job: Job, outbox: Outbox) -> None:
    """Publish the webhook delivery `job` owes (a terminal job submitted with a webhook;
    nothing for others), confirmed by the store; StoreError when it could not be. The
    current trace context goes with it: the deliveries' spans join the job's trace."""
    intent = intent_of(job, tracing.carrier())
    if intent is not None:
        await outbox.publish(intent.endpoint, intent.msg_id, job.id, intent.dumps())


async def settle_budget(job: Job, budgets: Budgets) -> None:
    """Settle the budget hold of terminal `job` (to its cost when it completed; a release
    when it failed or was cancelled); nothing for a job without one. Idempotent;
    StoreError when the store could not do it."""
    if job.budget is not None and job.status.terminal:
        await budgets.settle(job.budget, job.id, job.settled_cost())


async def pay_debts(job: Job, outbox: Outbox, budgets: Budgets) -> None:
    """What terminal `job` owes before its work-queue message may be acked: its webhook
    intent and its budget settlement. Both are tried; StoreError if either failed."""
    try:
        await owe_webhook(job, outbox)
    finally:
        await settle_budget(job, budgets)


async def job_ended(
    job: Job,
    quotas: Quotas,
    outbox: Outbox,
    budgets: Budgets,
    *,
    announce_to: JobQueue | None = None,
) -> None:
    """`job` is terminal now and this process's write made it so:

    1. pay its debts (`pay_debts`: the webhook intent, the budget settlement);
    2. with `announce_to` (the writer is not the job's worker: a cancel, an expiry), tell
       whichever worker runs it to abort its provider call;
    3. free the virtual key's concurrency slot the job held;
    4. count the job in the metrics (`imagejobs_completions_total`, `_job_seconds`,
       `imagejobs_cost_usd_total`).

    Steps 2-4 are best effort and never raise a store error: the record is final either
    way, a missed cancel notice is caught by the worker's heartbeat and a slot left
    behind is reclaimed by the next submit that needs it. Step 1 raises StoreError (after
    the others ran): the caller must then leave the job's work-queue message unacked, so
    that its next delivery pays them."""
    try:
        await pay_debts(job, outbox, budgets)
    finally:
        if announce_to is not None:
            try:
                await announce_to.announce_cancel(job.id)
            except StoreError as exc:
                log.warning("job %s: cancel notice not sent: %s", job.id, exc)
        with contextlib.suppress(StoreError):
            await quotas.release(job.slot, job.id)
        metrics.finished(job)
