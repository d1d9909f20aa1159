"""The webhook dispatcher: takes owed deliveries from the outbox and attempts them,
bounded (at most MAX_IN_FLIGHT_PER_ENDPOINT per endpoint and `concurrency` in all, per
process).

Why no crash loses an owed delivery:

- A terminal writer publishes the job's intent to the outbox, confirmed by the server,
  before it acks the job's work-queue message (worker) or while that message still
  exists (the API's cancel and expiry); a writer that dies in between leaves the job's
  message in the work queue, and whichever worker gets it next finds the job terminal and
  publishes the intent again (deduplicated by `<job id>.<event>`) before acking it.
- An outbox message is settled only by a dispatcher: acked once the delivery is finished
  (delivered or failed for good), nak'd with the delay until the next attempt while it
  waits. A dispatcher killed at any point leaves the message unsettled, and the server
  delivers it again after the endpoint's ack_wait, to any dispatcher.
- The delivery record (history, the stored body, when the next attempt is due) is the
  source of truth; a message only wakes a dispatcher up. A message that comes early (a
  lost nak delay) is nak'd again for the rest of the wait; one older than the record's
  round is stale and acked; a second message of a finished delivery is acked. So waiting
  retries survive any restart, and every attempt of one webhook-id sends the same body.

Per message: read (or create) the record -> held by a 410? nak and look again later ->
not due yet? nak until due -> attempt -> record the attempt (compare-and-set) -> ack if
finished, else nak until the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Mapping

import httpx
from opentelemetry.trace import SpanKind

from imagejobs.config import Settings
from imagejobs.domain.errors import RevisionConflict, StoreError
from imagejobs.runtime import logs, metrics, process, tracing
from imagejobs.store.clock import EPSILON_S, Clock, SystemClock
from imagejobs.store.deliveries import GoneMarker
from imagejobs.store.factory import open_backend
from imagejobs.store.protocols import Backend, OutboxMessage
from imagejobs.webhooks.delivery import AttemptResult, DeliveryRecord, Outcome
from imagejobs.webhooks.endpoints import MAX_IN_FLIGHT_PER_ENDPOINT, Endpoint
from imagejobs.webhooks.payload import Intent, build_body
from imagejobs.webhooks.sender import HttpSender, Sender

log = logging.getLogger(__name__)

FETCH_WAIT_S = 1.0  # a fetch waits this long for work before the loop looks around
FETCH_RETRY_S = 0.5  # after a failed fetch (leader election, reconnect)
STORE_RETRY_DELAY_S = 2.0  # a message that hit a store error comes back after this
GONE_CHECK_S = 5.0  # how long a process trusts what it read of an endpoint's 410 marker
HELD_RECHECK_S = 30.0  # a held delivery's message comes back this often
ACK_SLACK_S = 10.0  # an endpoint's ack_wait: its timeout_s twice, plus this
SAVE_TRIES = 3  # an attempt's record write that keeps losing its compare-and-set
DRAIN_S = 15.0  # a stopping dispatcher lets in-flight attempts end this long


def ack_wait_s(endpoint: Endpoint) -> float:
    """The endpoint consumer's ack_wait: an attempt (its timeout) and the record writes
    around it, with room to spare. A dispatcher that dies is replaced after this."""
    return endpoint.settings.timeout_s * 2 + ACK_SLACK_S


class Dispatcher:
    """Delivers the outbox's messages for `endpoints` with `sender`.

    :param backend: the store: outbox consumers, delivery records, image objects.
    :param endpoints: the enabled endpoints by name, with their signing keys.
    :param sender: makes one attempt (HTTP through the SSRF guard; a fake in tests).
    :param concurrency: attempts in flight at most in this process, all endpoints.
    :param base_url: the public base of result URLs in payloads.
    :param clock: time for records and waits; `rng`: the backoff jitter.
    """

    def __init__(
        self,
        backend: Backend,
        endpoints: Mapping[str, Endpoint],
        sender: Sender,
        *,
        concurrency: int,
        base_url: str,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._work = backend.outbox_work
        self._deliveries = backend.deliveries
        self._objects = backend.objects
        self._endpoints = dict(endpoints)
        self._sender = sender
        self._free = concurrency
        self._base_url = base_url
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._in_flight = dict.fromkeys(self._endpoints, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._held: dict[str, tuple[bool, float]] = {}  # endpoint -> (held, when read)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def stop(self) -> None:
        """Stop taking deliveries (idempotent); in-flight attempts get DRAIN_S."""
        self._stopping.set()
        self._slot_freed.set()

    async def run(self, *, burst: bool = False, ready: asyncio.Event | None = None) -> None:
        """Deliver until `stop()`. With `burst`, return once no endpoint has a message
        ready and nothing is in flight (tests move the clock and run again)."""
        for endpoint in self._endpoints.values():
            await self._work.open(endpoint.name, ack_wait_s(endpoint))
        log.info(
            "dispatcher ready (%d endpoints: %s)", len(self._endpoints), ", ".join(self._endpoints)
        )
        if ready is not None:
            ready.set()
        try:
            await asyncio.gather(*(self._loop(e, burst) for e in self._endpoints.values()))
        finally:
            await self._drain()

    async def sample(self) -> None:
        """Each endpoint's owed deliveries into the metrics."""
        for name in self._endpoints:
            metrics.webhook_owed(name, await self._work.owed(name))

    # --- the loops -------------------------------------------------------------------------

    async def _loop(self, endpoint: Endpoint, burst: bool) -> None:
        name = endpoint.name
        while not self._stopping.is_set():
            if await self._is_held(endpoint):  # a 410: nothing is attempted until it changes
                if burst:
                    return
                await self._pause(GONE_CHECK_S)
                continue
            free = min(MAX_IN_FLIGHT_PER_ENDPOINT - self._in_flight[name], self._free)
            if free <= 0:
                await self._wait_for_a_slot()
                continue
            try:
                messages = await self._work.fetch(name, free, 0.0 if burst else FETCH_WAIT_S)
            except StoreError as exc:
                log.warning("webhook %s: fetch failed: %s", name, exc)
                await self._pause(FETCH_RETRY_S)
                continue
            for message in messages:
                self._start(endpoint, message)
            if burst and not messages:
                if not self._in_flight[name]:
                    return
                await self._wait_for_a_slot()

    def _start(self, endpoint: Endpoint, message: OutboxMessage) -> None:
        name = endpoint.name
        self._in_flight[name] += 1
        self._free -= 1
        task = asyncio.create_task(self._handle(endpoint, message))
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._in_flight[name] -= 1
            self._free += 1
            self._slot_freed.set()
            if not task.cancelled() and task.exception() is not None:
                log.error("webhook task failed", exc_info=task.exception())

        task.add_done_callback(done)

    async def _wait_for_a_slot(self) -> None:
        self._slot_freed.clear()
        await self._slot_freed.wait()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await self._clock.wait_for(self._stopping.wait(), seconds)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        with contextlib.suppress(TimeoutError):
            await self._clock.wait_for(asyncio.wait(set(self._tasks)), DRAIN_S)
        pending = [t for t in self._tasks if not t.done()]
        for task in pending:  # unsettled: delivered again after ack_wait
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_S)

    # --- one message -----------------------------------------------------------------------

    async def _handle(self, endpoint: Endpoint, message: OutboxMessage) -> None:
        with logs.about(endpoint=endpoint.name):  # and the job's, once read
            try:
                await self._process(endpoint, message)
            except StoreError as exc:  # the store hiccuped: the message comes back
                log.warning("webhook %s: store error, will retry: %s", endpoint.name, exc)
                with contextlib.suppress(StoreError):
                    await message.nak(STORE_RETRY_DELAY_S)

    async def _process(self, endpoint: Endpoint, message: OutboxMessage) -> None:
        try:
            intent = Intent.loads(message.data)
        except ValueError:
            log.error("webhook %s: an unreadable outbox message was dropped", endpoint.name)
            await message.term()
            return
        logs.tag(intent.job, job_id=intent.job_id)
        found = await self._deliveries.get(intent.job_id) or await self._first(endpoint, intent)
        if found is None:  # nothing owed (not subscribed), or a redelivery of expired history
            await message.ack_sync()
            return
        record, revision = found
        if intent.round < record.round or (intent.round == record.round and record.finished):
            await message.ack_sync()  # stale, or a second message of a finished delivery
            return
        if intent.round > record.round:  # a Redeliver whose record write may not have landed
            record = record.redelivered(intent.round, self._clock.time())
            revision = await self._put(endpoint, record, revision)
        if await self._is_held(endpoint):
            await message.nak(HELD_RECHECK_S)
            return
        due = (record.next_attempt_at or 0.0) - self._clock.time()
        if due > EPSILON_S:  # early (a restart lost the nak delay): wait for the rest
            await message.nak(due)
            return
        record = await self._attempt(endpoint, record, revision, intent.trace)
        if record.finished:
            await message.ack_sync()
        elif record.gone:
            await message.nak(HELD_RECHECK_S)
        else:
            await message.nak(max((record.next_attempt_at or 0.0) - self._clock.time(), 0.0))

    async def _first(self, endpoint: Endpoint, intent: Intent) -> tuple[DeliveryRecord, int] | None:
        """Create the delivery record for a job's end: its body made once, here. None
        when nothing is owed (the endpoint is not subscribed to the event)."""
        job = intent.job
        if job is None or intent.event not in endpoint.settings.events:
            return None
        now = self._clock.time()
        body = await build_body(
            job, intent.event, endpoint.settings, self._objects, self._base_url, now
        )
        record = DeliveryRecord.owed(job, intent.event, body)
        try:
            return record, await self._put(endpoint, record, 0)
        except RevisionConflict:  # another dispatcher made it first
            return await self._deliveries.get(intent.job_id)

    async def _put(self, endpoint: Endpoint, record: DeliveryRecord, expected: int) -> int:
        ttl_s = record.ttl_s(endpoint.settings, self._clock.time())
        return await self._deliveries.put(record, ttl_s=ttl_s, expected=expected)

    async def _attempt(
        self,
        endpoint: Endpoint,
        record: DeliveryRecord,
        revision: int,
        trace: Mapping[str, str] | None = None,
    ) -> DeliveryRecord:
        """One attempt, recorded; the record after it. The attempt is a trace span in the
        job's trace (`trace`: the context its intent carries)."""
        attributes: tracing.Attributes = {
            tracing.PREFIX + "job_id": record.job_id,
            tracing.PREFIX + "endpoint": endpoint.name,
            tracing.PREFIX + "webhook_id": record.webhook_id,
            tracing.PREFIX + "attempt": record.total_attempts + 1,
        }
        with tracing.span(
            tracing.PREFIX + "webhook",
            parent=trace or {},
            kind=SpanKind.CLIENT,
            attributes=attributes,
        ) as span:
            result = await self._sender.send(endpoint, record, int(self._clock.time()))
            span.set_attribute(tracing.PREFIX + "outcome", result.outcome.value)
            if result.status_code is not None:
                span.set_attribute("http.response.status_code", result.status_code)
        outcome = result.outcome
        metrics.webhook_attempted(endpoint.name, outcome.value, result.duration_ms / 1000)
        log.info(
            "webhook %s %s: %s (%s)",
            endpoint.name,
            record.webhook_id,
            outcome.value,
            result.status_code or result.error,
        )
        updated = await self._save_attempt(endpoint, record, revision, result)
        if outcome is Outcome.GONE:
            await self._disable(endpoint, record.webhook_id)
        if updated.finished and updated.round == record.round:
            metrics.webhook_finished(endpoint.name, updated.status.value)
        return updated

    async def _save_attempt(
        self, endpoint: Endpoint, record: DeliveryRecord, revision: int, result: AttemptResult
    ) -> DeliveryRecord:
        """Write the attempt into the record; on a lost compare-and-set (another message
        of the same delivery), into the record as it is now, if it is still this round's."""
        for _ in range(SAVE_TRIES):
            updated = record.attempted(result, endpoint.settings, self._clock.time(), self._rng)
            try:
                await self._put(endpoint, updated, revision)
                return updated
            except RevisionConflict:
                found = await self._deliveries.get(record.job_id)
                if found is None or found[0].round != record.round or found[0].finished:
                    return found[0] if found is not None else updated
                record, revision = found
        raise StoreError(f"delivery {record.webhook_id} kept changing while being recorded")

    # --- 410 Gone --------------------------------------------------------------------------

    async def _is_held(self, endpoint: Endpoint) -> bool:
        """Whether a 410 disabled the endpoint as it is configured now (read at most every
        GONE_CHECK_S; a changed endpoint is live again)."""
        now = self._clock.monotonic()
        held, read_at = self._held.get(endpoint.name, (False, -GONE_CHECK_S))
        if now - read_at < GONE_CHECK_S:
            return held
        marker = await self._deliveries.gone(endpoint.name)
        held = marker is not None and marker.fingerprint == endpoint.settings.fingerprint()
        self._held[endpoint.name] = (held, now)
        metrics.webhook_disabled(endpoint.name, held)
        return held

    async def _disable(self, endpoint: Endpoint, webhook_id: str) -> None:
        marker = GoneMarker(
            fingerprint=endpoint.settings.fingerprint(),
            at=self._clock.time(),
            webhook_id=webhook_id,
        )
        await self._deliveries.mark_gone(endpoint.name, marker)
        self._held[endpoint.name] = (True, self._clock.monotonic())
        metrics.webhook_disabled(endpoint.name, True)
        log.error(
            "webhook endpoint %s answered 410 Gone: disabled until its settings change; "
            "its deliveries are held meanwhile",
            endpoint.name,
        )


def public_base_url(settings: Settings) -> str:
    """The base of the result URLs in payloads: `public_url`, else the gateway's address."""
    return settings.public_url.rstrip("/") or f"http://{settings.host}:{settings.gateway_port}"


async def serve(settings: Settings) -> None:
    """Run one dispatcher process on JetStream until SIGTERM/SIGINT. ConfigError when an
    enabled endpoint's secret is missing."""
    endpoints = settings.webhook_endpoints()
    flush_spans = tracing.setup(settings, "imagejobs-dispatcher")
    http = httpx.AsyncClient(
        timeout=None,  # each attempt is bounded by its endpoint's timeout_s instead
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=0),
        follow_redirects=False,
    )
    name = f"imagejobs-dispatcher-{socket.gethostname()}-{os.getpid()}"
    async with open_backend(settings, name) as backend, http:
        dispatcher = Dispatcher(
            backend,
            endpoints,
            HttpSender(http),
            concurrency=settings.dispatcher_concurrency,
            base_url=public_base_url(settings),
        )
        ports = metrics.dispatcher_ports(settings)
        await process.run_until_signalled(
            dispatcher, settings, ports, backend.queue, flush_spans, also=dispatcher.sample
        )
        log.info("dispatcher stopped")
