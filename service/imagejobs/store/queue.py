"""The work queue: one message per job on `imagejobs.run.<job_id>` in a WorkQueue stream,
published with `Nats-Msg-Id = job id` so a repeated publish (a retried submit, a repair)
is dropped by the server inside the duplicate window. The stream is bounded: when it is
full, publish raises QueueFull and the submit answers 429.

Workers share one durable pull consumer (explicit ack); cancel notices are core NATS
messages on `imagejobs.cancel.<job_id>` (at most once; the heartbeat is the backstop).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from imagejobs.domain import constants
from imagejobs.domain.jobs import Job, Status
from imagejobs.store.jetstream import last_on_subject, nats_errors, publish
from imagejobs.store.protocols import Closeable, Delivery

log = logging.getLogger(__name__)

RECORD_REVISION_HEADER = "Imagejobs-Revision"  # the revision of the record a message carries
TRACE_HEADERS = ("traceparent", "tracestate")  # the submit's trace context (W3C)
SHORTEST_FETCH_S = 0.05  # nats-py refuses a fetch without a timeout


def run_subject(job_id: str) -> str:
    return f"{constants.QUEUE_SUBJECT_PREFIX}.{job_id}"


def job_id_of(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


def cancel_subject(job_id: str) -> str:
    return f"{constants.CANCEL_SUBJECT_PREFIX}.{job_id}"


def first_delivery_record(data: bytes, revision: str, num_delivered: int) -> tuple[Job, int] | None:
    """The record a first delivery carries (as submitted) with its revision; None for a
    redelivery (the record has moved on since) or a message without one."""
    if not revision or not data or num_delivered != 1:
        return None
    try:
        job = Job.loads(data)
    except ValueError:
        return None
    if job.status is not Status.PENDING:
        return None
    return job, int(revision)


class JetStreamDelivery:
    """`Delivery` of one JetStream message."""

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.job_id = job_id_of(msg.subject)
        self.num_delivered = int(msg.metadata.num_delivered or 0)

    @property
    def data(self) -> bytes:
        return self._msg.data or b""

    def record(self) -> tuple[Job, int] | None:
        revision = (self._msg.headers or {}).get(RECORD_REVISION_HEADER, "")
        return first_delivery_record(self._msg.data or b"", revision, self.num_delivered)

    @property
    def trace(self) -> Mapping[str, str]:
        headers = self._msg.headers or {}
        return {name: headers[name] for name in TRACE_HEADERS if headers.get(name)}

    async def ack(self) -> None:
        await _settle("ack", self._msg.ack())

    async def ack_sync(self) -> None:
        await _settle("ack", self._msg.ack_sync())

    async def nak(self, delay_s: float = 0.0) -> None:
        await _settle("nak", self._msg.nak(delay=delay_s or None))

    async def term(self) -> None:
        await _settle("term", self._msg.term())

    async def in_progress(self) -> None:
        await _settle("in-progress", self._msg.in_progress())


async def _settle(what: str, reply: Awaitable[object]) -> None:
    """Send a delivery's reply (ack, nak, ...), its NATS errors translated."""
    with nats_errors(what):
        await reply


class PullConsumer:
    """Fetches from a durable pull consumer of `stream` (bound on first use); NATS errors
    translated, naming `what`."""

    def __init__(self, js: JetStreamContext, stream: str, durable: str, what: str) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._what = what
        self._sub: JetStreamContext.PullSubscription | None = None

    async def fetch(self, batch: int, timeout_s: float) -> list[JetStreamDelivery]:
        """Up to `batch` deliveries, waiting up to `timeout_s` for the first; [] if none."""
        with nats_errors(self._what):
            if self._sub is None:
                self._sub = await self._js.pull_subscribe_bind(
                    durable=self._durable, stream=self._stream
                )
            try:
                msgs = await self._sub.fetch(batch=batch, timeout=max(timeout_s, SHORTEST_FETCH_S))
            except TimeoutError:  # nothing came: not an error
                return []
        return [JetStreamDelivery(m) for m in msgs]


class _Unsubscribe:
    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def close(self) -> None:
        with nats_errors("unsubscribe"):
            await self._sub.unsubscribe()


class JetStreamQueue:
    """`JobQueue` (the API's side) and `WorkQueue` (the workers' side) on JOBQ."""

    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._pull = PullConsumer(
            js, constants.QUEUE_STREAM, constants.WORKER_CONSUMER, "queue fetch"
        )

    # --- the API's side ---------------------------------------------------------------

    async def publish(
        self,
        job_id: str,
        record: bytes = b"",
        revision: int = 0,
        trace: Mapping[str, str] | None = None,
    ) -> None:
        """Enqueue the job (idempotent per job id within the duplicate window). With the
        record as just written and its revision, a worker can claim it without a read;
        `trace` (the submit's trace context) goes along as headers."""
        headers = {"Nats-Msg-Id": job_id}
        if record and revision:
            headers[RECORD_REVISION_HEADER] = str(revision)
        headers.update({k: v for k, v in (trace or {}).items() if k in TRACE_HEADERS})
        await publish(
            self._js,
            run_subject(job_id),
            record,
            what="queue publish",
            headers=headers,
            queue_full=True,
        )

    async def contains(self, job_id: str) -> bool:
        """Whether the job's message is in the queue (waiting or being worked on)."""
        _, seq = await last_on_subject(
            self._js, constants.QUEUE_STREAM, run_subject(job_id), "queue read"
        )
        return seq > 0

    async def announce_cancel(self, job_id: str) -> None:
        """Tell whichever worker runs the job to abort it (best effort: a worker that
        misses this finds the job terminal at its next heartbeat)."""
        with nats_errors("cancel notice"):
            await self._nc.publish(cancel_subject(job_id), b"")

    async def depth(self) -> tuple[int, int]:
        with nats_errors("queue depth"):
            info = await self._js.stream_info(constants.QUEUE_STREAM)
            consumer = await self._js.consumer_info(
                constants.QUEUE_STREAM, constants.WORKER_CONSUMER
            )
        return int(info.state.messages), int(consumer.num_pending or 0)

    # --- the workers' side ------------------------------------------------------------

    async def fetch(self, batch: int, timeout_s: float) -> list[Delivery]:
        return list(await self._pull.fetch(batch, timeout_s))

    async def on_cancel(self, callback: Callable[[str], None]) -> Closeable:
        async def on_message(msg: Msg) -> None:
            callback(job_id_of(msg.subject))

        with nats_errors("cancel subscribe"):
            sub = await self._nc.subscribe(
                f"{constants.CANCEL_SUBJECT_PREFIX}.>", cb=on_message, pending_msgs_limit=-1
            )
        return _Unsubscribe(sub)
