"""Connecting to NATS and declaring the JetStream resources every process relies on.

Declaring is idempotent (create, or update to the same config), so any process may do
it at start; the first one wins and the others agree. Only here are NATS connection
errors turned into `StoreUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import StoreUnavailable

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JetStream err_code: Nats-Expected-Last-Subject-Sequence failed


async def last_on_subject(
    js: JetStreamContext, stream: str, subject: str, what: str
) -> tuple[bytes, int]:
    """The data and stream sequence of the last message on `subject` (a direct get),
    or (b"", 0) when there is none. NATS trouble is StoreUnavailable naming `what`."""
    try:
        msg = await js.get_msg(stream, subject=subject, direct=True)
    except NotFoundError:
        return b"", 0
    except (TimeoutError, NatsError) as exc:
        raise StoreUnavailable(f"{what} failed: {type(exc).__name__}") from exc
    return msg.data or b"", int(msg.seq or 0)


async def connect(
    settings: Settings, name: str, on_reconnect: Callable[[], None] | None = None
) -> tuple[Client, JetStreamContext]:
    """A daemon-grade connection: every server listed, reconnect forever, a publish
    buffer large enough for image chunks. `on_reconnect` runs after each reconnect."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def on_reconnected() -> None:
        log.info("nats: reconnected")
        if on_reconnect is not None:
            on_reconnect()

    try:
        nc = await nats.connect(
            servers=settings.nats_servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            pending_size=64 * 1024 * 1024,
            error_cb=on_error,
            reconnected_cb=on_reconnected,
        )
    except (TimeoutError, NatsError, OSError) as exc:
        raise StoreUnavailable(f"cannot connect to NATS at {settings.nats_servers}") from exc
    return nc, nc.jetstream(timeout=10)


def stream_configs(settings: Settings) -> list[js_api.StreamConfig]:
    """The streams: job records (a KV bucket), the work queue, the per-caller index,
    idempotency keys, image objects."""
    replicas = settings.stream_replicas
    kv_prefix = f"$KV.{constants.JOBS_BUCKET}"
    return [
        js_api.StreamConfig(
            name=f"KV_{constants.JOBS_BUCKET}",
            subjects=[f"{kv_prefix}.>"],
            max_msgs_per_subject=1,
            discard=js_api.DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            deny_delete=True,
            allow_direct=True,
            allow_msg_ttl=True,
            num_replicas=replicas,
            storage=js_api.StorageType.FILE,
            # every write is re-published for in-process waiters (wait, watch)
            republish=js_api.RePublish(
                src=f"{kv_prefix}.>", dest=f"{constants.STATE_SUBJECT_PREFIX}.>"
            ),
        ),
        js_api.StreamConfig(
            name=constants.QUEUE_STREAM,
            subjects=[f"{constants.QUEUE_SUBJECT_PREFIX}.>"],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            max_msgs=settings.queue_max_jobs,
            discard=js_api.DiscardPolicy.NEW,
            duplicate_window=constants.DUPLICATE_WINDOW_S,
            allow_direct=True,
            num_replicas=replicas,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(  # list: one empty message per job, the data in its subject
            name=constants.INDEX_STREAM,
            subjects=[f"{constants.INDEX_SUBJECT_PREFIX}.>"],
            max_msgs_per_subject=1,
            allow_msg_ttl=True,
            allow_direct=True,
            num_replicas=replicas,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(  # Idempotency-Key -> job id, written create-only
            name=constants.IDEMPOTENCY_STREAM,
            subjects=[f"{constants.IDEMPOTENCY_SUBJECT_PREFIX}.>"],
            max_msgs_per_subject=1,
            allow_msg_ttl=True,
            allow_direct=True,
            num_replicas=replicas,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(  # per-key quota state, compare-and-set
            name=constants.LIMIT_STREAM,
            subjects=[f"{constants.LIMIT_SUBJECT_PREFIX}.>"],
            max_msgs_per_subject=1,
            allow_msg_ttl=True,
            allow_direct=True,
            num_replicas=replicas,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(  # per-key request counts per minute, atomic increments
            name=constants.RATE_STREAM,
            subjects=[f"{constants.RATE_SUBJECT_PREFIX}.>"],
            allow_msg_counter=True,
            allow_direct=True,
            max_age=180.0,  # a window is needed for two minutes at most
            num_replicas=replicas,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=constants.OBJECT_STREAM,
            subjects=[f"{constants.OBJECT_SUBJECT_PREFIX}.>"],
            allow_msg_ttl=True,
            allow_direct=True,
            num_replicas=replicas,
            storage=js_api.StorageType.FILE,
        ),
    ]


def consumer_config(settings: Settings) -> js_api.ConsumerConfig:
    """The workers' shared durable pull consumer. Deliveries are unlimited here: the job
    record counts them and fails the job past `max_attempts` (worker.py), so no job can
    be stranded by a missed max-deliveries advisory."""
    return js_api.ConsumerConfig(
        durable_name=constants.WORKER_CONSUMER,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=max(settings.worker_concurrency * settings.worker_processes * 4, 1024),
        max_waiting=4096,
        filter_subject=f"{constants.QUEUE_SUBJECT_PREFIX}.>",
    )


async def declare(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and the worker consumer."""
    try:
        for config in stream_configs(settings):
            try:
                await js.stream_info(str(config.name))
                await js.update_stream(config)
            except NotFoundError:
                try:
                    await js.add_stream(config)
                except BadRequestError:  # created meanwhile by another process
                    await js.update_stream(config)
        await js.add_consumer(constants.QUEUE_STREAM, consumer_config(settings))
    except (TimeoutError, NatsError) as exc:
        raise StoreUnavailable(f"cannot declare JetStream resources: {exc}") from exc
