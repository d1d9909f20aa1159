"""The in-memory twin of the JetStream work queue and its shared worker consumer
(`store/memory.py` explains the twin).

Semantics kept: a publish is dropped when its job id was published within the duplicate
window (even if that message is gone since); the queue holds `max_jobs` messages at most
(QueueFull beyond); each job waits in its owner's lane, and a fetch takes the lanes in
weighted turns (the same `Rotation` as the JetStream workers, store/fairshare.py), each
lane in submit order; a delivered message not acked within `ack_wait_s` (restarted by
`in_progress`) is delivered again, to any fetcher, with `num_delivered` counting; `nak`
redelivers after its delay; `ack` and `term` remove the message. Cancel notices reach
every subscriber on a later turn of the event loop, as a core NATS message would.

The webhook outbox (`MemoryOutbox`) is one such queue per endpoint, as JetStream has one
consumer per endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from imagejobs.domain import constants
from imagejobs.domain.jobs import Job
from imagejobs.store.clock import EPSILON_S, Clock
from imagejobs.store.fairshare import ANONYMOUS, Rotation, lane_of
from imagejobs.store.jetstream import queue_full_error
from imagejobs.store.protocols import Closeable, Delivery, OutboxMessage
from imagejobs.store.queue import carried_job, first_delivery_record

OUTBOX_BOUND = 1_000_000  # the outbox has no bound of its own; this stands for none


@dataclass
class _Queued:
    job_id: str
    data: bytes
    revision: int
    seq: int
    available_at: float  # monotonic time from which it may be (re)delivered
    num_delivered: int = 0
    lane: str = ANONYMOUS
    trace: Mapping[str, str] = field(default_factory=dict)


class MemoryDelivery:
    """`Delivery` of one queued message."""

    def __init__(self, queue: MemoryQueue, message: _Queued) -> None:
        self._queue = queue
        self._message = message
        self.job_id = message.job_id
        self.num_delivered = message.num_delivered

    @property
    def data(self) -> bytes:
        return self._message.data

    def record(self) -> tuple[Job, int] | None:
        m = self._message
        revision = str(m.revision) if m.revision else ""
        return first_delivery_record(m.data, revision, self.num_delivered)

    def submitted(self) -> Job | None:
        return carried_job(self._message.data)

    @property
    def trace(self) -> Mapping[str, str]:
        return self._message.trace

    async def ack(self) -> None:
        self._queue.remove(self._message)

    async def ack_sync(self) -> None:
        self._queue.remove(self._message)

    async def nak(self, delay_s: float = 0.0) -> None:
        self._queue.deliver_after(self._message, delay_s)

    async def term(self) -> None:
        self._queue.remove(self._message)

    async def in_progress(self) -> None:
        self._queue.deliver_after(self._message, self._queue.ack_wait_s)


class _Subscription:
    def __init__(self, callbacks: list[Callable[[str], None]], cb: Callable[[str], None]) -> None:
        self._callbacks = callbacks
        self._cb = cb

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(self._cb)


class MemoryQueue:
    """`JobQueue` and `WorkQueue` in memory; `fair_share` and `weights` as the settings
    (and the JetStream queue) take them."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_jobs: int,
        ack_wait_s: float,
        duplicate_window_s: float,
        fair_share: bool = True,
        weights: Mapping[str, int] | None = None,
    ) -> None:
        self._clock = clock
        self._fair = fair_share
        self._rotation = Rotation(weights)
        self._max_jobs = max_jobs
        self.ack_wait_s = ack_wait_s
        self._window_s = duplicate_window_s
        self._messages: dict[int, _Queued] = {}
        self._published: dict[str, float] = {}  # msg id (job id) -> when, for dedupe
        self._seq = 0
        self._changed = asyncio.Event()
        self._cancel_callbacks: list[Callable[[str], None]] = []

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
        now = self._clock.monotonic()
        self._forget_old_ids(now)
        if job_id in self._published:
            return  # a duplicate within the window: dropped, as JetStream does
        if len(self._messages) >= self._max_jobs:
            raise queue_full_error()
        self._seq += 1
        self._messages[self._seq] = _Queued(
            job_id,
            record,
            revision if record else 0,
            self._seq,
            available_at=now,
            lane=lane_of(owner, self._fair),
            trace=dict(trace or {}),
        )
        self._published[job_id] = now
        self._changed.set()

    def _forget_old_ids(self, now: float) -> None:
        for job_id, when in list(self._published.items()):
            if now - when >= self._window_s:
                del self._published[job_id]

    async def contains(self, job_id: str, *, owner: str | None = None) -> bool:
        lane = lane_of(owner, self._fair) if owner is not None else None
        return any(
            m.job_id == job_id and (lane is None or m.lane == lane) for m in self._messages.values()
        )

    async def queued(self, owner: str) -> int:
        lane = lane_of(owner, self._fair)
        return sum(1 for m in self._messages.values() if m.lane == lane and not m.num_delivered)

    async def announce_cancel(self, job_id: str) -> None:
        loop = asyncio.get_running_loop()
        for callback in list(self._cancel_callbacks):
            loop.call_soon(callback, job_id)

    async def depth(self) -> tuple[int, int]:
        undelivered = sum(1 for m in self._messages.values() if m.num_delivered == 0)
        return len(self._messages), undelivered

    # --- the workers' side ------------------------------------------------------------

    async def fetch(self, batch: int, timeout_s: float) -> list[Delivery]:
        return list(await self.deliveries(batch, timeout_s))

    async def deliveries(self, batch: int, timeout_s: float) -> list[MemoryDelivery]:
        """`fetch`, typed as what it makes."""
        deadline = self._clock.monotonic() + timeout_s
        while True:
            now = self._clock.monotonic()
            ready = self._in_turns(now, batch)
            if ready:
                for m in ready:
                    m.num_delivered += 1
                    m.available_at = now + self.ack_wait_s
                return [MemoryDelivery(self, m) for m in ready]
            remaining = deadline - now
            if remaining <= EPSILON_S:
                return []
            due = min((m.available_at for m in self._messages.values()), default=math.inf)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await self._clock.wait_for(self._changed.wait(), min(remaining, due - now))

    def _in_turns(self, now: float, batch: int) -> list[_Queued]:
        """Up to `batch` deliverable messages, the lanes in weighted turns (lanes listed
        by their oldest deliverable message), each lane oldest first."""
        lanes: dict[str, list[_Queued]] = {}
        for m in sorted(self._messages.values(), key=lambda m: m.seq):
            if m.available_at <= now:
                lanes.setdefault(m.lane, []).append(m)
        plan = self._rotation.plan({lane: len(ms) for lane, ms in lanes.items()}, batch)
        return [m for lane, count in plan for m in lanes[lane][:count]]

    async def on_cancel(self, callback: Callable[[str], None]) -> Closeable:
        self._cancel_callbacks.append(callback)
        return _Subscription(self._cancel_callbacks, callback)

    # --- what deliveries do -----------------------------------------------------------

    def remove(self, message: _Queued) -> None:
        self._messages.pop(message.seq, None)

    def deliver_after(self, message: _Queued, delay_s: float) -> None:
        if message.seq in self._messages:
            message.available_at = self._clock.monotonic() + delay_s
            self._changed.set()


class MemoryOutbox:
    """`Outbox` and `OutboxWork` in memory: one `MemoryQueue` per endpoint (its consumer),
    keyed by the message id for deduplication; `open` sets the endpoint's ack_wait."""

    def __init__(self, clock: Clock, duplicate_window_s: float) -> None:
        self._clock = clock
        self._window_s = duplicate_window_s
        self._queues: dict[str, MemoryQueue] = {}

    def _queue(self, endpoint: str) -> MemoryQueue:
        queue = self._queues.get(endpoint)
        if queue is None:
            queue = self._queues[endpoint] = MemoryQueue(
                self._clock,
                max_jobs=OUTBOX_BOUND,
                ack_wait_s=constants.ACK_WAIT_S,
                duplicate_window_s=self._window_s,
            )
        return queue

    async def publish(self, endpoint: str, msg_id: str, job_id: str, data: bytes) -> None:
        await self._queue(endpoint).publish(msg_id, data, 1)

    async def open(self, endpoint: str, ack_wait_s: float) -> None:
        self._queue(endpoint).ack_wait_s = ack_wait_s

    async def fetch(self, endpoint: str, batch: int, timeout_s: float) -> list[OutboxMessage]:
        return list(await self._queue(endpoint).deliveries(batch, timeout_s))

    async def owed(self, endpoint: str) -> int:
        return (await self._queue(endpoint).depth())[0]
