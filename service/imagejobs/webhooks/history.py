"""What the API does with webhooks: check the endpoint a submit names, list a job's
deliveries (its history), and redeliver one.

Access is the job's: a caller sees the deliveries of its own jobs and of anonymous ones;
anything else is 404, as for the job itself. The history outlives the job (it is kept for
the job's TTL plus the retry window), so once the job has expired the delivery record's
own owner and kind decide. A terminal job whose delivery no dispatcher has taken up yet
shows it as `pending` with no attempts: it is owed, and the list says so.
"""

from __future__ import annotations

from collections.abc import Mapping

from imagejobs.domain.errors import (
    ErrorCode,
    InvalidRequest,
    JobConflict,
    JobNotFound,
    RevisionConflict,
)
from imagejobs.domain.jobs import Job, is_job_id
from imagejobs.domain.keys import Caller
from imagejobs.domain.kinds import Kind
from imagejobs.store.clock import Clock
from imagejobs.store.protocols import Backend
from imagejobs.webhooks.delivery import DeliveryRecord
from imagejobs.webhooks.endpoints import Event, WebhookSettings
from imagejobs.webhooks.payload import Intent

MAX_ECHO_CHARS = 64  # a caller's endpoint name is cut to this in messages

Found = tuple[tuple[DeliveryRecord, int] | None, Job | None]


class WebhookService:
    """The API's side of webhooks on a `Backend`, for the configured `endpoints`."""

    def __init__(
        self, backend: Backend, endpoints: Mapping[str, WebhookSettings], clock: Clock
    ) -> None:
        self._records = backend.records
        self._deliveries = backend.deliveries
        self._outbox = backend.outbox
        self._endpoints = dict(endpoints)
        self._clock = clock

    async def check(self, name: str) -> None:
        """A submit's `x-bf-async-webhook`: InvalidRequest (400) for an unknown endpoint,
        a disabled one, or one a 410 disabled (until its settings change)."""
        why = await self._unusable(name)
        if why is not None:
            code = ErrorCode.WEBHOOK_NOT_FOUND if name not in self._endpoints else None
            raise InvalidRequest(why, code=code or ErrorCode.WEBHOOK_DISABLED, param="webhook")

    async def _unusable(self, name: str) -> str | None:
        hook = self._endpoints.get(name)
        shown = name[:MAX_ECHO_CHARS]
        if hook is None:
            return f"unknown webhook endpoint {shown!r}"
        if hook.disabled:
            return f"webhook endpoint {shown} is disabled"
        marker = await self._deliveries.gone(name)
        if marker is not None and marker.fingerprint == hook.fingerprint():
            return (
                f"webhook endpoint {shown} is disabled: it answered 410 Gone "
                "(until its settings change)"
            )
        return None

    async def list(self, kind: Kind | None, job_id: str, caller: Caller) -> list[DeliveryRecord]:
        """The job's deliveries (at most one: a job ends once), newest state."""
        found, job = await self._find(kind, job_id, caller)
        if found is not None:
            return [found[0]]
        owed = self._owed(job) if job is not None else None
        return [owed] if owed is not None else []

    async def redeliver(self, kind: Kind | None, job_id: str, caller: Caller) -> DeliveryRecord:
        """Deliver a finished delivery again: the same webhook-id and body, a fresh retry
        budget. JobConflict (409) while it is still being attempted, for a job without a
        delivery, or for an endpoint that cannot be used now."""
        found, job = await self._find(kind, job_id, caller)
        if found is None:
            if job is not None and self._owed(job) is not None:
                raise JobConflict(
                    "the delivery is still being attempted", code=ErrorCode.DELIVERY_IN_PROGRESS
                )
            raise JobConflict("the job has no webhook delivery", code=ErrorCode.NO_WEBHOOK_DELIVERY)
        record, revision = found
        if not record.finished:
            raise JobConflict(
                "the delivery is still being attempted", code=ErrorCode.DELIVERY_IN_PROGRESS
            )
        why = await self._unusable(record.endpoint)
        if why is not None:
            raise JobConflict(why, code=ErrorCode.WEBHOOK_DISABLED)
        # the message first: a crash before the record write still redelivers (the
        # dispatcher moves the record on to the message's round)
        intent = Intent(
            endpoint=record.endpoint, event=record.event, job_id=job_id, round=record.round + 1
        )
        await self._outbox.publish(record.endpoint, intent.msg_id, job_id, intent.dumps())
        now = self._clock.time()
        updated = record.redelivered(intent.round, now)
        ttl_s = updated.ttl_s(self._endpoints.get(record.endpoint), now)
        try:
            await self._deliveries.put(updated, ttl_s=ttl_s, expected=revision)
        except RevisionConflict:  # a dispatcher took the message up first
            again = await self._deliveries.get(job_id)
            return again[0] if again is not None else updated
        return updated

    async def _find(self, kind: Kind | None, job_id: str, caller: Caller) -> Found:
        """(the delivery record, if any; else the job) when the caller may see them,
        else JobNotFound."""
        if not is_job_id(job_id):
            raise JobNotFound()
        found = await self._deliveries.get(job_id)
        if found is not None:
            record = found[0]
            if kind not in (None, record.kind) or not caller.can_access(record.owner):
                raise JobNotFound()
            return found, None
        stored = await self._records.get(job_id)
        job = stored[0] if stored is not None else None
        if (
            job is None
            or kind not in (None, job.kind)
            or not caller.can_access(job.owner)
            or job.expired(self._clock.time())
        ):
            raise JobNotFound()
        return None, job

    def _owed(self, job: Job) -> DeliveryRecord | None:
        """The delivery a terminal job owes and no dispatcher has recorded yet."""
        if not job.webhook or not job.status.terminal:
            return None
        hook = self._endpoints.get(job.webhook)
        event = Event.of(job.status)
        if hook is None or event not in hook.events:
            return None
        return DeliveryRecord.owed(job, event, body="")
