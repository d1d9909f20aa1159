"""The work queue: one message per job on `imagejobs.run.<job_id>` in a WorkQueue stream,
published with `Nats-Msg-Id = job id` so a repeated publish (a retried submit, a repair)
is dropped by the server inside the duplicate window. The stream is bounded: when it is
full, publish raises QueueFull and the submit answers 429.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError

from imagejobs.domain import constants
from imagejobs.domain.errors import QueueFull, StoreUnavailable
from imagejobs.store.jetstream import last_on_subject

_MAX_MSGS_EXCEEDED = 10077  # JetStream err_code: maximum messages exceeded
_MAX_BYTES_EXCEEDED = 10047
QUEUE_FULL_RETRY_AFTER_S = 5
RECORD_REVISION_HEADER = "Imagejobs-Revision"  # the revision of the record a message carries


def run_subject(job_id: str) -> str:
    return f"{constants.QUEUE_SUBJECT_PREFIX}.{job_id}"


def job_id_of(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


def cancel_subject(job_id: str) -> str:
    return f"{constants.CANCEL_SUBJECT_PREFIX}.{job_id}"


class JobQueue:
    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js

    async def contains(self, job_id: str) -> bool:
        """Whether the job's message is in the queue (waiting or being worked on)."""
        _, seq = await last_on_subject(
            self._js, constants.QUEUE_STREAM, run_subject(job_id), "queue read"
        )
        return seq > 0

    async def announce_cancel(self, job_id: str) -> None:
        """Tell whichever worker runs the job to abort it (best effort: a worker that
        misses this finds the job terminal at its next heartbeat)."""
        try:
            await self._nc.publish(cancel_subject(job_id), b"")
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"cancel notice failed: {type(exc).__name__}") from exc

    async def publish(self, job_id: str, record: bytes = b"", revision: int = 0) -> None:
        """Enqueue the job (idempotent per job id within the duplicate window). With the
        record as just written and its revision, a worker can claim it without a read."""
        headers = {"Nats-Msg-Id": job_id}
        if record and revision:
            headers[RECORD_REVISION_HEADER] = str(revision)
        try:
            await self._js.publish(run_subject(job_id), record, headers=headers)
        except APIError as exc:
            if exc.err_code in (_MAX_MSGS_EXCEEDED, _MAX_BYTES_EXCEEDED):
                raise QueueFull(
                    "the job queue is full; retry later",
                    retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
                ) from exc
            raise StoreUnavailable(f"queue publish failed: {exc.description}") from exc
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"queue publish failed: {type(exc).__name__}") from exc
