"""The one JetStream seam: connecting, declaring the streams every process relies on,
translating NATS errors, and the publish (with TTL and compare-and-set) and the reads that
every part of the store uses.

Reads that must see the latest write go to the stream's leader (`STREAM.MSG.GET`): on a
replicated stream a direct get (`allow_direct`) is answered by any replica, and one that
has not yet applied the latest write answers with an older value, or "not found" for a
subject just written (measured: 16 of 2,000 publish-then-read pairs on a healthy 3-node
cluster; 0 of 2,000 from the leader). nats-server 2.15 has no `min_last_seq` for direct
gets ("unknown field"), so the leader is the only way. Direct gets (`any_replica_last`)
are kept for what never changes once written (image chunks, a terminal record), where
any copy that exists is the right one.

NATS errors become ours in ONE place, `nats_errors`: a wrong last sequence (a lost
compare-and-set) is `RevisionConflict`, a full work queue is `QueueFull` where the caller
asks for it, and anything else (timeouts, no responders, no leader, a closed connection)
is `StoreUnavailable`. No other module catches a NATS exception.

Declaring is idempotent (create, or update to the same config), so any process may do
it at start; the first one wins and the others agree.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, BadRequestError, NotFoundError

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import QueueFull, RevisionConflict, StoreUnavailable

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JetStream err_code: Nats-Expected-Last-Subject-Sequence failed
# ... and its clustered twin: another compare-and-set on the subject is still in flight on
# the leader, so it cannot say the sequence ("wrong last sequence", no number). Also a lost
# race: seen on a 3-node cluster under load, on the provider slots
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164
NO_MESSAGE_FOUND = 10037  # JetStream err_code of a get: the subject has no message
REPLICA_READ_TIMEOUT_S = 0.5  # a direct get: any replica answers it in milliseconds
MULTI_LAST_BATCH = 1000  # subjects one `any_copies` answers at most
MAX_MSGS_EXCEEDED = 10077  # JetStream err_code: the stream's max_msgs reached (discard new)
MAX_BYTES_EXCEEDED = 10047
QUEUE_FULL_RETRY_AFTER_S = 5
DELETE_HEADERS = {"KV-Operation": "DEL"}  # how a KV client recognises a delete marker


def queue_full_error() -> QueueFull:
    """The error of a publish the bounded work queue refused."""
    return QueueFull("the job queue is full; retry later", retry_after_s=QUEUE_FULL_RETRY_AFTER_S)


class nats_errors:
    """Translate NATS errors raised in the block: RevisionConflict for a lost
    compare-and-set; QueueFull for the work queue's limits (with `queue_full`);
    StoreUnavailable naming `what` for anything else. (A class, not a generator context
    manager: it wraps every store request, and a generator's set-up showed in profiles.)"""

    __slots__ = ("_queue_full", "_what")

    def __init__(self, what: str, *, queue_full: bool = False) -> None:
        self._what = what
        self._queue_full = queue_full

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        what = self._what
        if isinstance(exc, APIError):
            if exc.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                raise RevisionConflict(f"{what}: the subject changed meanwhile") from exc
            if self._queue_full and exc.err_code in (MAX_MSGS_EXCEEDED, MAX_BYTES_EXCEEDED):
                raise queue_full_error() from exc
            raise StoreUnavailable(f"{what} failed: {exc.description}") from exc
        if isinstance(exc, (TimeoutError, NatsError)):
            raise StoreUnavailable(f"{what} failed: {type(exc).__name__}") from exc


async def publish(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    what: str,
    ttl_s: int | None = None,
    expected: int | None = None,
    headers: Mapping[str, str] | None = None,
    queue_full: bool = False,
) -> int:
    """Publish to a stream and wait for its acknowledgement; the stream sequence. With
    `ttl_s` the message expires (`Nats-TTL`); with `expected` it is a compare-and-set on
    the subject's last sequence (`Nats-Expected-Last-Subject-Sequence`, 0 = create-only)."""
    sent = dict(headers or {})
    if ttl_s is not None:
        sent["Nats-TTL"] = f"{ttl_s}s"
    if expected is not None:
        sent["Nats-Expected-Last-Subject-Sequence"] = str(expected)
    with nats_errors(what, queue_full=queue_full):
        ack = await js.publish(subject, data, headers=sent)
    return int(ack.seq)


async def last_on_subject(
    js: JetStreamContext, stream: str, subject: str, what: str
) -> tuple[bytes, int]:
    """The data and stream sequence of the last message on `subject`, read from the
    stream's leader (every acknowledged write included), or (b"", 0) when there is none.
    Only JetStream's "no message found" means none: any other error (no leader, the
    stream not known yet on a recovering node) is StoreUnavailable."""
    with nats_errors(what):
        try:
            msg = await js.get_msg(stream, subject=subject, direct=False)
        except NotFoundError as exc:
            if exc.err_code != NO_MESSAGE_FOUND:
                raise
            return b"", 0
    return msg.data or b"", int(msg.seq or 0)


async def direct_batch(
    nc: Client,
    stream: str,
    request: Mapping[str, object],
    what: str,
    *,
    timeout_s: float,
    buffer_bytes: int = 64 * 1024 * 1024,
) -> list[Msg]:
    """A batched direct get (`batch`, `multi_last`: NATS >= 2.11), answered by one
    replica: its messages in order, up to the end-of-batch status (204) or a 404. A
    replica behind the latest writes may end early; `timeout_s` bounds the wait for each
    message. The replies are gathered by the subscription's callback, not one
    `next_msg` each (half the client's time per message, measured on 1,024 of them)."""
    found: list[Msg] = []
    ended = asyncio.Event()
    came = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        if (msg.headers or {}).get("Status"):  # 204 EOB, or 404 nothing
            ended.set()
        else:
            found.append(msg)
        came.set()

    with nats_errors(what):
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_reply, pending_bytes_limit=buffer_bytes)
        try:
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            while not ended.is_set():
                came.clear()
                await asyncio.wait_for(came.wait(), timeout_s)
        finally:
            await sub.unsubscribe()
    return found


async def leader_next(
    js: JetStreamContext, stream: str, subject: str, seq: int, what: str
) -> js_api.RawStreamMsg | None:
    """The first message on `subject` (a subject or a filter) at or after sequence `seq`,
    from the stream's leader; None when there is none."""
    with nats_errors(what):
        try:
            return await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return None


async def any_replica_last(
    js: JetStreamContext, stream: str, subject: str, what: str
) -> tuple[bytes, int]:
    """As `last_on_subject`, answered by any replica (a direct get): maybe not the latest
    write, and "none" may only mean that replica lacks it. For data that never changes once
    written, when the leader cannot answer."""
    with nats_errors(what):
        try:
            msg = await js.get_msg(stream, subject=subject, direct=True)
        except NotFoundError:
            return b"", 0
    return msg.data or b"", int(msg.seq or 0)


class StreamSubjects:
    """`Subjects` on one stream with one message per subject and per-message TTLs. Reads
    from any replica wait REPLICA_READ_TIMEOUT_S at most: one answers in milliseconds
    when any is up, and they stand in for a leader that did not answer in time."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str, what: str) -> None:
        self._nc = nc
        self._js = js
        self._replicas = nc.jetstream(timeout=REPLICA_READ_TIMEOUT_S)
        self._stream = stream
        self._what = what

    async def last(self, subject: str) -> tuple[bytes, int]:
        return await last_on_subject(self._js, self._stream, subject, f"{self._what} read")

    async def any_copy(self, subject: str) -> tuple[bytes, int]:
        return await any_replica_last(self._replicas, self._stream, subject, f"{self._what} read")

    async def any_copies(self, *patterns: str) -> dict[str, tuple[bytes, int]]:
        msgs = await direct_batch(
            self._nc,
            self._stream,
            {"multi_last": list(patterns), "batch": MULTI_LAST_BATCH},
            f"{self._what} read",
            timeout_s=REPLICA_READ_TIMEOUT_S,
        )
        return {
            m.headers["Nats-Subject"]: (m.data or b"", int(m.headers["Nats-Sequence"]))
            for m in msgs
            if m.headers
        }

    async def put(
        self, subject: str, data: bytes, *, ttl_s: int, expected: int | None = None
    ) -> int:
        return await publish(
            self._js, subject, data, what=f"{self._what} write", ttl_s=ttl_s, expected=expected
        )

    async def delete(self, subject: str, *, ttl_s: int, expected: int | None = None) -> int:
        return await publish(
            self._js,
            subject,
            b"",
            what=f"{self._what} delete",
            ttl_s=ttl_s,
            expected=expected,
            headers=DELETE_HEADERS,
        )

    # governance (issue 16): the budget holds of a key are listed to reclaim stale ones
    async def subjects(self, pattern: str) -> list[str]:
        """The subjects matching `pattern` that hold a message (one `STREAM.INFO`)."""
        with nats_errors(f"{self._what} list"):
            info = await self._js.stream_info(self._stream, subjects_filter=pattern)
        return list(info.state.subjects or {})


class StreamCounters:
    """`Counters` on a stream with `allow_msg_counter`: each increment is one atomic
    server-side `Nats-Incr`; the value is in the subject's last message."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str, timeout_s: float) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        self._timeout_s = timeout_s

    async def incr(self, subject: str, delta: int, *, msg_id: str = "") -> int:
        headers = {"Nats-Incr": f"{delta:+d}"}
        if msg_id:  # deduplicated by the stream within its duplicate window
            headers["Nats-Msg-Id"] = msg_id
        with nats_errors("counter"):
            reply = await self._nc.request(subject, b"", headers=headers, timeout=self._timeout_s)
        if msg_id and b'"duplicate"' in reply.data:  # counted before: the value as it is
            return await self.value(subject)
        return _counter_value(reply.data)

    async def value(self, subject: str) -> int:
        data, _ = await last_on_subject(self._js, self._stream, subject, "rate counter read")
        return _counter_value(data) if data else 0


def _counter_value(data: bytes) -> int:
    """A counter message's value (`{"val": "<n>"}`); StoreUnavailable for an error
    answer or anything unreadable."""
    try:
        answer = json.loads(data)
        if "error" in answer:
            raise StoreUnavailable(f"rate counter failed: {answer['error']}")
        return int(answer["val"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreUnavailable(f"rate counter failed: {type(exc).__name__}") from exc


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
    # every JetStream request fails within store_timeout_s: an election or a lost quorum
    # is a fast 503 for the caller, not a hang
    return nc, nc.jetstream(timeout=settings.store_timeout_s)


def _stream(settings: Settings, name: str, prefix: str, **config: Any) -> js_api.StreamConfig:
    """A file-backed stream on `<prefix>.>`, readable with direct gets."""
    return js_api.StreamConfig(
        name=name,
        subjects=[f"{prefix}.>"],
        allow_direct=True,
        num_replicas=settings.replicas,
        storage=js_api.StorageType.FILE,
        **config,
    )


def stream_configs(settings: Settings) -> list[js_api.StreamConfig]:
    """The streams: job records (a KV bucket), the work queue, the per-caller index,
    idempotency keys, quota slots and budget holds, request counters, image objects, spend
    counters, the webhook outbox, the webhook delivery records and the workers'
    heartbeats."""
    kv_prefix = f"$KV.{constants.JOBS_BUCKET}"
    last_only = {"max_msgs_per_subject": 1, "allow_msg_ttl": True}
    return [
        _stream(
            settings,
            f"KV_{constants.JOBS_BUCKET}",
            kv_prefix,
            discard=js_api.DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            deny_delete=True,
            # every write is re-published for in-process waiters (wait, watch)
            republish=js_api.RePublish(
                src=f"{kv_prefix}.>", dest=f"{constants.STATE_SUBJECT_PREFIX}.>"
            ),
            **last_only,
        ),
        _stream(
            settings,
            constants.QUEUE_STREAM,
            constants.QUEUE_SUBJECT_PREFIX,
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            max_msgs=settings.queue_max_jobs,
            discard=js_api.DiscardPolicy.NEW,
            duplicate_window=constants.DUPLICATE_WINDOW_S,
        ),
        # list: one empty message per job, the data in its subject
        _stream(settings, constants.INDEX_STREAM, constants.INDEX_SUBJECT_PREFIX, **last_only),
        # Idempotency-Key -> job id, written create-only
        _stream(
            settings,
            constants.IDEMPOTENCY_STREAM,
            constants.IDEMPOTENCY_SUBJECT_PREFIX,
            **last_only,
        ),
        # per-key quota slots, compare-and-set
        _stream(settings, constants.LIMIT_STREAM, constants.LIMIT_SUBJECT_PREFIX, **last_only),
        # per-key request counts per minute, atomic increments; a window is needed for two
        # minutes at most
        _stream(
            settings,
            constants.RATE_STREAM,
            constants.RATE_SUBJECT_PREFIX,
            allow_msg_counter=True,
            max_age=180.0,
        ),
        _stream(
            settings, constants.OBJECT_STREAM, constants.OBJECT_SUBJECT_PREFIX, allow_msg_ttl=True
        ),
        # per-key spend per budget period, atomic increments deduplicated by message id
        # (store/budgets.py); the last value per subject is all that is read
        _stream(
            settings,
            constants.SPEND_STREAM,
            constants.SPEND_SUBJECT_PREFIX,
            allow_msg_counter=True,
            max_msgs_per_subject=1,
            duplicate_window=constants.SPEND_DUPLICATE_WINDOW_S,
        ),
        # the webhook outbox: owed deliveries, one consumer per endpoint (store/outbox.py)
        _stream(
            settings,
            constants.OUTBOX_STREAM,
            constants.OUTBOX_SUBJECT_PREFIX,
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=constants.DUPLICATE_WINDOW_S,
            max_age=float(constants.OUTBOX_MAX_AGE_S),
        ),
        # webhook delivery records (history) and 410 markers, compare-and-set, TTL'd
        _stream(
            settings, constants.DELIVERY_STREAM, constants.DELIVERY_SUBJECT_PREFIX, **last_only
        ),
        # live workers' heartbeats, each TTL'd (store/presence.py)
        _stream(settings, constants.WORKERS_STREAM, constants.WORKERS_SUBJECT_PREFIX, **last_only),
    ]


def consumer_config(settings: Settings) -> js_api.ConsumerConfig:
    """The workers' shared durable pull consumer of the anonymous lane, and the template of
    every key's lane consumer (store/queue.py). Deliveries are unlimited here: the job
    record counts them and fails the job past `max_attempts` (worker/handler.py), so no
    job can be stranded by a missed max-deliveries advisory. At most `queue_max_in_flight`
    jobs are out with workers at once (by default derived from this process's view of
    the workers, which a deployment of one worker per container must override)."""
    return js_api.ConsumerConfig(
        durable_name=constants.WORKER_CONSUMER,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=settings.queue_max_in_flight
        or max(settings.worker_concurrency * settings.worker_processes * 4, 1024),
        max_waiting=4096,
        # the anonymous lane only: each key's lane has a consumer of its own (fairshare.py)
        filter_subject=f"{constants.QUEUE_SUBJECT_PREFIX}.*",
    )


async def declare(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and the worker consumer."""
    with nats_errors("declaring JetStream resources"):
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
