"""The work queue: one message per job in a WorkQueue stream, in its owner's lane
(`imagejobs.run.<job_id>` for anonymous jobs, `imagejobs.run.<owner>.<job_id>` for a
key's; store/fairshare.py), published with `Nats-Msg-Id = job id` so a repeated publish
(a retried submit, a repair) is dropped by the server inside the duplicate window. The
stream is bounded: when it is full, publish raises QueueFull and the submit answers 429.

Each lane has a durable pull consumer (explicit ack) that every worker pulls from, the
lanes in turn (store/lanes.py); cancel notices are core NATS messages on
`imagejobs.cancel.<job_id>` (at most once; the heartbeat is the backstop).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from imagejobs.domain import constants
from imagejobs.domain.errors import StoreError
from imagejobs.domain.jobs import Job, Status
from imagejobs.store.fairshare import (
    lane_consumer,
    lane_filter,
    lane_of,
    lane_of_consumer,
    lane_subject,
    notice_subject,
)
from imagejobs.store.jetstream import last_on_subject, nats_errors, publish
from imagejobs.store.lanes import LaneFetcher
from imagejobs.store.protocols import Closeable, Delivery

log = logging.getLogger(__name__)

RECORD_REVISION_HEADER = "Imagejobs-Revision"  # the revision of the record a message carries
TRACE_HEADERS = ("traceparent", "tracestate")  # the submit's trace context (W3C)
SHORTEST_FETCH_S = 0.05  # nats-py refuses a fetch without a timeout
LANE_ENSURE_EVERY_S = 60.0  # an API process re-makes a lane's consumer this often (removed?)
LANE_REFRESH_TIMEOUT_S = 2.0  # a submit's wait on refreshing its lane's consumer
LANE_INACTIVE_S = 24 * 3600.0  # a lane consumer nobody pulls from this long is removed


def run_subject(job_id: str) -> str:
    """A job's subject in the anonymous lane (the layout before lanes)."""
    return lane_subject("", job_id)


def lane_consumer_config(template: js_api.ConsumerConfig, lane: str) -> js_api.ConsumerConfig:
    """A lane's consumer: the workers' settings (`template`) on the lane's subjects."""
    return dataclasses.replace(
        template,
        durable_name=lane_consumer(lane),
        filter_subject=lane_filter(lane),
        inactive_threshold=LANE_INACTIVE_S if lane else None,
    )


def job_id_of(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


def cancel_subject(job_id: str) -> str:
    return f"{constants.CANCEL_SUBJECT_PREFIX}.{job_id}"


def carried_job(data: bytes) -> Job | None:
    """The job a queue message carries (as submitted); None for a message without."""
    if not data:
        return None
    try:
        return Job.loads(data)
    except ValueError:
        return None


def first_delivery_record(data: bytes, revision: str, num_delivered: int) -> tuple[Job, int] | None:
    """The record a first delivery carries (as submitted) with its revision; None for a
    redelivery (the record has moved on since) or a message without one (published
    together with the record, whose revision it could not know)."""
    if not revision or num_delivered != 1:
        return None
    job = carried_job(data)
    if job is None or job.status is not Status.PENDING:
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

    def submitted(self) -> Job | None:
        return carried_job(self._msg.data or b"")

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
    """`JobQueue` (the API's side) and `WorkQueue` (the workers' side) on JOBQ.

    :param fair_share: jobs queue in their owner's lane (else all in the anonymous one).
    :param weights: each lane's weight in the workers' rotation (store/fairshare.py).
    :param template: the workers' consumer settings, which each lane's consumer takes.
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        fair_share: bool = True,
        weights: Mapping[str, int] | None = None,
        template: js_api.ConsumerConfig | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._fair = fair_share
        self._template = template or js_api.ConsumerConfig(ack_policy=js_api.AckPolicy.EXPLICIT)
        self._lanes = LaneFetcher(nc, js, weights or {})
        self._ensured: dict[str, float] = {}  # lane -> when its consumer was last made

    # --- the API's side ---------------------------------------------------------------

    async def publish(
        self,
        job_id: str,
        record: bytes = b"",
        revision: int = 0,
        trace: Mapping[str, str] | None = None,
        *,
        owner: str = "",
    ) -> None:
        """Enqueue the job in its owner's lane (idempotent per job id within the duplicate
        window), then tell idle workers. With the record as just written and its
        revision, a worker can claim it without a read; `trace` (the submit's trace
        context) goes along as headers."""
        lane = lane_of(owner, self._fair)
        await self._ensure_lane(lane)
        headers = {"Nats-Msg-Id": job_id}
        if record and revision:
            headers[RECORD_REVISION_HEADER] = str(revision)
        headers.update({k: v for k, v in (trace or {}).items() if k in TRACE_HEADERS})
        await publish(
            self._js,
            lane_subject(lane, job_id),
            record,
            what="queue publish",
            headers=headers,
            queue_full=True,
        )
        try:  # a missed notice costs a worker's listing interval, nothing more
            with nats_errors("work notice"):
                await self._nc.publish(notice_subject(lane), b"")
        except StoreError as exc:
            log.debug("work notice not sent: %s", exc)

    async def _ensure_lane(self, lane: str) -> None:
        """Make the lane's consumer before its first message (create-or-update: idempotent
        across processes), and again now and then in case it was removed."""
        if not lane or time.monotonic() - self._ensured.get(lane, -LANE_ENSURE_EVERY_S) < (
            LANE_ENSURE_EVERY_S
        ):
            return
        first = lane not in self._ensured
        try:
            with nats_errors("queue lane"):
                await self._js.add_consumer(
                    constants.QUEUE_STREAM,
                    lane_consumer_config(self._template, lane),
                    timeout=None if first else LANE_REFRESH_TIMEOUT_S,  # None: nats-py's 5 s
                )
        except StoreError:
            if first:  # without its consumer no worker would see the lane's jobs
                raise
            # a refresh of a lane that exists: a submit must not wait on it while the
            # store is unwell (the next try is a minute away, not at every submit)
            log.warning("lane %s: its consumer could not be refreshed", lane)
        self._ensured[lane] = time.monotonic()

    async def contains(self, job_id: str, *, owner: str | None = None) -> bool:
        """Whether the job's message is in the queue (waiting or being worked on): in its
        owner's lane, or (owner None) in any lane."""
        if owner is not None:
            subjects = [lane_subject(lane_of(owner, self._fair), job_id)]
        else:  # the anonymous lane's subject, then any key's (a wildcard direct get)
            subjects = [lane_subject("", job_id), lane_subject("*", job_id)]
        for subject in subjects:
            _, seq = await last_on_subject(self._js, constants.QUEUE_STREAM, subject, "queue read")
            if seq:
                return True
        return False

    async def queued(self, owner: str) -> int:
        """The owner's jobs waiting in its lane (its consumer's undelivered messages)."""
        lane = lane_of(owner, self._fair)
        with nats_errors("queue lane read"):
            try:
                info = await self._js.consumer_info(constants.QUEUE_STREAM, lane_consumer(lane))
            except NotFoundError:  # no job of it was ever queued (or not for a day)
                return 0
        return int(info.num_pending or 0)

    async def announce_cancel(self, job_id: str) -> None:
        """Tell whichever worker runs the job to abort it (best effort: a worker that
        misses this finds the job terminal at its next heartbeat)."""
        with nats_errors("cancel notice"):
            await self._nc.publish(cancel_subject(job_id), b"")

    async def depth(self) -> tuple[int, int]:
        """(messages in the queue, of those not yet delivered in any lane)."""
        with nats_errors("queue depth"):
            info = await self._js.stream_info(constants.QUEUE_STREAM)
            consumers = await self._js.consumers_info(constants.QUEUE_STREAM)
        undelivered = sum(
            int(c.num_pending or 0) for c in consumers if lane_of_consumer(str(c.name)) is not None
        )
        return int(info.state.messages), undelivered

    # --- the workers' side ------------------------------------------------------------

    async def fetch(self, batch: int, timeout_s: float) -> list[Delivery]:
        """Up to `batch` deliveries, round-robin across the lanes with work."""
        return [JetStreamDelivery(m) for m in await self._lanes.fetch(batch, timeout_s)]

    async def on_cancel(self, callback: Callable[[str], None]) -> Closeable:
        async def on_message(msg: Msg) -> None:
            callback(job_id_of(msg.subject))

        with nats_errors("cancel subscribe"):
            sub = await self._nc.subscribe(
                f"{constants.CANCEL_SUBJECT_PREFIX}.>", cb=on_message, pending_msgs_limit=-1
            )
        return _Unsubscribe(sub)
