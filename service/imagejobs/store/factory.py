"""Building the JetStream `Backend` for a process: one NATS connection, the streams
declared, every part of the store on that connection."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from nats.aio.client import Client
from nats.js import JetStreamContext

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.store import jetstream
from imagejobs.store.budgets import KeyBudgets
from imagejobs.store.clock import Clock, SystemClock
from imagejobs.store.deliveries import DeliveryRecords
from imagejobs.store.idempotency import IdempotencyClaims
from imagejobs.store.index import JetStreamIndex, index_ttl_s
from imagejobs.store.notifier import JetStreamNotifier, Notifier
from imagejobs.store.objects import JetStreamObjects
from imagejobs.store.outbox import JetStreamOutbox
from imagejobs.store.presence import JetStreamPresence
from imagejobs.store.protocols import Backend
from imagejobs.store.queue import JetStreamQueue
from imagejobs.store.quotas import KeyQuotas, slot_ttl_s
from imagejobs.store.records import JOBS_STREAM, JobRecords


def jetstream_backend(
    nc: Client,
    js: JetStreamContext,
    settings: Settings,
    changes: Notifier | None = None,
    clock: Clock | None = None,
) -> Backend:
    """Every part of the store on one connection. `changes` is the notifier waiters
    listen to (a plain `Notifier`, told nothing, when the process has no waiters)."""
    clock = clock or SystemClock()
    records = JobRecords(jetstream.StreamSubjects(js, JOBS_STREAM, "job store"))
    queue = JetStreamQueue(
        nc,
        js,
        fair_share=settings.fair_share,
        weights=settings.lane_weights(),
        template=jetstream.consumer_config(settings),
    )
    outbox = JetStreamOutbox(js)
    limits = jetstream.StreamSubjects(js, constants.LIMIT_STREAM, "quota")
    return Backend(
        records=records,
        queue=queue,
        work=queue,
        objects=JetStreamObjects(nc, js),
        index=JetStreamIndex(nc, js, ttl_s=index_ttl_s(settings)),
        idempotency=IdempotencyClaims(
            jetstream.StreamSubjects(js, constants.IDEMPOTENCY_STREAM, "idempotency"),
            ttl_s=settings.idempotency_ttl_s,
            clock=clock,
        ),
        quotas=KeyQuotas(
            limits,
            jetstream.StreamCounters(nc, js, constants.RATE_STREAM),
            records,
            slot_ttl_s=slot_ttl_s(settings),
            clock=clock,
        ),
        changes=changes or Notifier(),
        outbox=outbox,
        outbox_work=outbox,
        deliveries=DeliveryRecords(
            jetstream.StreamSubjects(js, constants.DELIVERY_STREAM, "webhook deliveries")
        ),
        budgets=KeyBudgets(
            limits,
            jetstream.StreamCounters(nc, js, constants.SPEND_STREAM),
            records,
            clock=clock,
        ),
        presence=JetStreamPresence(js),
    )


@contextlib.asynccontextmanager
async def open_backend(
    settings: Settings, name: str, *, watch_changes: bool = False
) -> AsyncIterator[Backend]:
    """Connect as client `name`, declare the streams and yield the `Backend`; the
    connection closes on exit. With `watch_changes` (API processes) record writes reach
    `backend.changes` (one subscription; every waiter re-reads after a reconnect)."""
    notifiers: list[Notifier] = []

    def reconnected() -> None:  # changes may have been missed: waiters re-read
        for notifier in notifiers:
            notifier.reconnected()

    nc, js = await jetstream.connect(settings, name, on_reconnect=reconnected)
    try:
        await jetstream.declare(js, settings)
        changes: Notifier = Notifier()
        if watch_changes:
            watcher = JetStreamNotifier(nc)
            await watcher.start()
            changes = watcher
        notifiers.append(changes)
        yield jetstream_backend(nc, js, settings, changes)
    finally:
        await nc.close()
