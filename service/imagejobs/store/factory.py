"""Building the JetStream `Backend` for a process: one NATS connection, the streams
declared, every part of the store on that connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import StoreUnavailable
from imagejobs.store import jetstream
from imagejobs.store.budgets import KeyBudgets
from imagejobs.store.clock import Clock, SystemClock
from imagejobs.store.deliveries import DeliveryRecords
from imagejobs.store.health import JetStreamHealth
from imagejobs.store.idempotency import IdempotencyClaims
from imagejobs.store.index import JetStreamIndex, index_ttl_s
from imagejobs.store.notifier import JetStreamNotifier, Notifier
from imagejobs.store.objects import JetStreamObjects
from imagejobs.store.outbox import JetStreamOutbox
from imagejobs.store.presence import JetStreamPresence
from imagejobs.store.protocols import Backend
from imagejobs.store.provider_limits import ProviderSlots, lease_s_for
from imagejobs.store.queue import JetStreamQueue
from imagejobs.store.quotas import KeyQuotas, slot_ttl_s
from imagejobs.store.records import JOBS_STREAM, JobRecords

log = logging.getLogger(__name__)

STARTUP_WAIT_S = 30.0  # how long a starting process waits for NATS to take its requests
STARTUP_RETRY_S = 0.5
T = TypeVar("T")


def jetstream_backend(
    nc: Client,
    js: JetStreamContext,
    settings: Settings,
    changes: Notifier | None = None,
    clock: Clock | None = None,
    health: JetStreamHealth | None = None,
) -> Backend:
    """Every part of the store on one connection. `changes` is the notifier waiters
    listen to (a plain `Notifier`, told nothing, when the process has no waiters);
    `health` the probe of whether jobs can be accepted (one that is never run, and so
    says "accepting" while connected, when the process does not need it)."""
    clock = clock or SystemClock()
    records = JobRecords(jetstream.StreamSubjects(nc, js, JOBS_STREAM, "job store"))
    queue = JetStreamQueue(
        nc,
        js,
        fair_share=settings.fair_share,
        weights=settings.lane_weights(),
        template=jetstream.consumer_config(settings),
    )
    outbox = JetStreamOutbox(js)
    limits = jetstream.StreamSubjects(nc, js, constants.LIMIT_STREAM, "quota")
    return Backend(
        records=records,
        queue=queue,
        work=queue,
        objects=JetStreamObjects(nc, js, settings.store_timeout_s),
        index=JetStreamIndex(nc, js, ttl_s=index_ttl_s(settings)),
        idempotency=IdempotencyClaims(
            jetstream.StreamSubjects(nc, js, constants.IDEMPOTENCY_STREAM, "idempotency"),
            ttl_s=settings.idempotency_ttl_s,
            clock=clock,
        ),
        quotas=KeyQuotas(
            limits,
            jetstream.StreamCounters(nc, js, constants.RATE_STREAM, settings.store_timeout_s),
            records,
            slot_ttl_s=slot_ttl_s(settings),
            clock=clock,
        ),
        changes=changes or Notifier(),
        outbox=outbox,
        outbox_work=outbox,
        deliveries=DeliveryRecords(
            jetstream.StreamSubjects(nc, js, constants.DELIVERY_STREAM, "webhook deliveries")
        ),
        health=health or JetStreamHealth(nc),
        providers=ProviderSlots(
            jetstream.StreamSubjects(nc, js, constants.LIMIT_STREAM, "provider slots"),
            jetstream.StreamCounters(nc, js, constants.RATE_STREAM, settings.store_timeout_s),
            lease_s=lease_s_for(settings),
            clock=clock,
        ),
        budgets=KeyBudgets(
            limits,
            jetstream.StreamCounters(nc, js, constants.SPEND_STREAM, settings.store_timeout_s),
            records,
            clock=clock,
        ),
        presence=JetStreamPresence(js),
    )


async def _when_ready(start: Callable[[], Awaitable[T]]) -> T:
    """`start()`, tried again while the store is unavailable, up to STARTUP_WAIT_S: a
    process started with (or just before) its NATS cluster waits for it to elect its
    leaders instead of dying."""
    deadline = time.monotonic() + STARTUP_WAIT_S
    while True:
        try:
            return await start()
        except StoreUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for the job store: %s", exc)
            await asyncio.sleep(STARTUP_RETRY_S)


@contextlib.asynccontextmanager
async def open_backend(
    settings: Settings, name: str, *, watch_changes: bool = False, probe_health: bool = False
) -> AsyncIterator[Backend]:
    """Connect as client `name`, declare the streams and yield the `Backend`; the
    connection closes on exit. With `watch_changes` (API processes) record writes reach
    `backend.changes` (one subscription; every waiter re-reads after a reconnect); with
    `probe_health` (API processes) `backend.health` is probed in the background."""
    notifiers: list[Notifier] = []

    def reconnected() -> None:  # changes may have been missed: waiters re-read
        for notifier in notifiers:
            notifier.reconnected()

    nc, js = await _when_ready(lambda: jetstream.connect(settings, name, reconnected))
    try:
        await _when_ready(lambda: jetstream.declare(js, settings))
        changes: Notifier = Notifier()
        if watch_changes:
            watcher = JetStreamNotifier(nc)
            await watcher.start()
            changes = watcher
        notifiers.append(changes)
        health = JetStreamHealth(nc)
        probing = None
        if probe_health:
            await health.check()
            probing = asyncio.create_task(health.run())
        try:
            yield jetstream_backend(nc, js, settings, changes, health=health)
        finally:
            if probing is not None:
                probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probing
    finally:
        await nc.close()
