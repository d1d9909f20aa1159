"""The in-memory twin of the JetStream store, for unit tests (as procrastinate's
`InMemoryConnector` is of its Postgres connector): the same Protocols, driven by an
injectable clock, so that the service and the worker run in one process, in
microseconds, with time moved by the test (`FakeClock.advance`).

What it keeps of JetStream's semantics (the conformance suite in
`tests/e2e/test_store_contract.py` runs the same checks against both):

- one message per subject with a stream-wide sequence; each written message has its own
  TTL, a write without one lives forever; an expired message leaves nothing behind;
- compare-and-set on the subject's last sequence (0 = create-only), RevisionConflict
  otherwise; a delete marker is a message (with its own TTL) like any other, so a
  create-only write over it fails until it expires;
- every record write announced to the state-change notifier (the bucket's republish);
- atomic counters that expire with the stream's max age, increments deduplicated by
  message id within the duplicate window (the spend counters);
- the work queue (`store/memory_queue.py`): msg-id dedupe within the duplicate window, a
  bound (QueueFull), a lane per job owner taken in weighted turns (fair share), ack_wait
  redelivery counting deliveries, nak with delay, term, in_progress, cancel notices; the
  webhook outbox as one such queue per endpoint.

Job records, idempotency keys, quota slots, budget holds and webhook delivery records are
the very classes the JetStream store uses (`JobRecords`, `IdempotencyClaims`,
`KeyQuotas`, `KeyBudgets`, `DeliveryRecords`), on `MemorySubjects` instead of a stream.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import RevisionConflict
from imagejobs.domain.kinds import Kind
from imagejobs.store.budgets import KeyBudgets
from imagejobs.store.clock import Clock
from imagejobs.store.deliveries import DeliveryRecords
from imagejobs.store.health import MemoryHealth
from imagejobs.store.idempotency import IdempotencyClaims
from imagejobs.store.index import (
    IndexPage,
    index_subject,
    index_ttl_s,
    owner_filter,
    page_of,
    parse_subject,
)
from imagejobs.store.memory_queue import MemoryOutbox, MemoryQueue
from imagejobs.store.notifier import Notifier
from imagejobs.store.presence import ALL_WORKERS, WorkerBeat, parse_beats, presence_subject
from imagejobs.store.protocols import Backend, StoredObject
from imagejobs.store.provider_limits import ProviderSlots, lease_s_for
from imagejobs.store.quotas import KeyQuotas, slot_ttl_s
from imagejobs.store.records import JobRecords, job_id_of_record

RATE_MAX_AGE_S = 180.0  # as the RATES stream's max_age


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


@dataclass
class _Message:
    data: bytes
    seq: int
    expires_at: float | None  # None: lives forever


class MemorySubjects:
    """`Subjects` in a dict; `on_write(subject, seq, data)` sees every write."""

    def __init__(
        self, clock: Clock, on_write: Callable[[str, int, bytes], None] | None = None
    ) -> None:
        self._clock = clock
        self._on_write = on_write
        self._messages: dict[str, _Message] = {}
        self._seq = 0

    def _live(self, subject: str) -> _Message | None:
        message = self._messages.get(subject)
        expires_at = message.expires_at if message is not None else None
        if expires_at is not None and self._clock.time() >= expires_at:
            del self._messages[subject]
            return None
        return message

    def _last(self, subject: str) -> tuple[bytes, int]:
        message = self._live(subject)
        return (message.data, message.seq) if message is not None else (b"", 0)

    async def last(self, subject: str) -> tuple[bytes, int]:
        return self._last(subject)

    async def any_copy(self, subject: str) -> tuple[bytes, int]:
        return self._last(subject)  # one copy: always the latest

    async def any_copies(self, *patterns: str) -> dict[str, tuple[bytes, int]]:
        return {s: self._last(s) for p in patterns for s in await self.subjects(p)}

    async def put(
        self, subject: str, data: bytes, *, ttl_s: int, expected: int | None = None
    ) -> int:
        if expected is not None:
            message = self._live(subject)
            if (message.seq if message is not None else 0) != expected:
                raise RevisionConflict(f"{subject}: the subject changed meanwhile")
        self._seq += 1
        self._messages[subject] = _Message(data, self._seq, self._clock.time() + ttl_s)
        if self._on_write is not None:
            self._on_write(subject, self._seq, data)
        return self._seq

    async def delete(self, subject: str, *, ttl_s: int, expected: int | None = None) -> int:
        return await self.put(subject, b"", ttl_s=ttl_s, expected=expected)

    async def subjects(self, pattern: str) -> list[str]:
        """The live subjects matching a NATS subject filter."""
        return [s for s in list(self._messages) if subject_matches(pattern, s) and self._live(s)]


class MemoryCounters:
    """`Counters` in a dict; a counter not written for `max_age_s` is gone; a message id
    seen within `duplicate_window_s` is not counted again."""

    def __init__(
        self,
        clock: Clock,
        max_age_s: float = RATE_MAX_AGE_S,
        duplicate_window_s: float = constants.DUPLICATE_WINDOW_S,
    ) -> None:
        self._clock = clock
        self._max_age_s = max_age_s
        self._window_s = duplicate_window_s
        self._values: dict[str, tuple[int, float]] = {}  # subject -> (value, last write)
        self._ids: dict[str, float] = {}  # message id -> when it was counted

    async def incr(self, subject: str, delta: int, *, msg_id: str = "") -> int:
        now = self._clock.time()
        if msg_id:
            self._ids = {i: t for i, t in self._ids.items() if now - t < self._window_s}
            if msg_id in self._ids:  # a repeat within the window: dropped, as JetStream does
                return await self.value(subject)
            self._ids[msg_id] = now
        value = await self.value(subject) + delta
        self._values[subject] = (value, now)
        return value

    async def value(self, subject: str) -> int:
        value, written = self._values.get(subject, (0, 0.0))
        if self._clock.time() - written >= self._max_age_s:
            self._values.pop(subject, None)
            return 0
        return value


class MemoryObjects:
    """`ObjectStore` in a dict, each object with its TTL."""

    def __init__(self, clock: Clock) -> None:
        self._subjects = MemorySubjects(clock)
        self._types: dict[str, str] = {}

    async def put(self, object_id: str, data: bytes, content_type: str, ttl_s: int) -> int:
        self._types[object_id] = content_type
        await self._subjects.put(object_id, data, ttl_s=ttl_s)
        return len(data)

    async def get(self, object_id: str) -> StoredObject | None:
        data, seq = await self._subjects.last(object_id)
        if not seq:
            return None
        return StoredObject(data=data, content_type=self._types[object_id])


class MemoryIndex:
    """`JobIndex` as subjects in a dict (the same subjects JetStream's index writes)."""

    def __init__(self, clock: Clock, ttl_s: int) -> None:
        self._subjects = MemorySubjects(clock)
        self._ttl_s = ttl_s

    async def add(self, owner: str, kind: Kind, created_s: float, job_id: str) -> None:
        subject = index_subject(owner, kind, created_s, job_id)
        with contextlib.suppress(RevisionConflict):  # create-only, as on JetStream
            await self._subjects.put(subject, b"", ttl_s=self._ttl_s, expected=0)

    async def page(self, owner: str, kind: Kind | None, before: int, limit: int) -> IndexPage:
        live = await self._subjects.any_copies(owner_filter(owner, kind))
        found = (parse_subject(subject, seq) for subject, (_, seq) in live.items())
        return page_of((e for e in found if e is not None), before, limit)


class MemoryPresence:
    """`Presence` as subjects in a dict (the same subjects the WORKERS stream holds)."""

    def __init__(self, clock: Clock) -> None:
        self._subjects = MemorySubjects(clock)

    async def beat(self, beat: WorkerBeat, ttl_s: int) -> None:
        await self._subjects.put(presence_subject(beat.id), beat.dumps(), ttl_s=ttl_s)

    async def leave(self, worker_id: str) -> None:
        # a marker, skipped when listing, as JetStream's purge leaves nothing to list
        await self._subjects.delete(presence_subject(worker_id), ttl_s=1)

    async def workers(self) -> list[WorkerBeat]:
        found = [await self._subjects.last(s) for s in await self._subjects.subjects(ALL_WORKERS)]
        return parse_beats([data for data, _ in found])


def memory_backend(clock: Clock, settings: Settings | None = None) -> Backend:
    """A complete in-memory `Backend`, its limits (queue bound, ack_wait, TTLs) taken
    from `settings` as the JetStream one takes them."""
    settings = settings or Settings()
    changes = Notifier()

    def republish(subject: str, seq: int, data: bytes) -> None:
        job_id = job_id_of_record(subject)
        if job_id is not None:
            changes.announce(job_id, seq, data)

    records = JobRecords(MemorySubjects(clock, on_write=republish))
    queue = MemoryQueue(
        clock,
        max_jobs=settings.queue_max_jobs,
        ack_wait_s=settings.ack_wait_s,
        duplicate_window_s=constants.DUPLICATE_WINDOW_S,
        fair_share=settings.fair_share,
        weights=settings.lane_weights(),
    )
    limits = MemorySubjects(clock)  # as the LIMITS stream: quota slots and budget holds
    outbox = MemoryOutbox(clock, duplicate_window_s=constants.DUPLICATE_WINDOW_S)
    return Backend(
        records=records,
        queue=queue,
        work=queue,
        objects=MemoryObjects(clock),
        index=MemoryIndex(clock, ttl_s=index_ttl_s(settings)),
        idempotency=IdempotencyClaims(
            MemorySubjects(clock), ttl_s=settings.idempotency_ttl_s, clock=clock
        ),
        quotas=KeyQuotas(
            limits,
            MemoryCounters(clock),
            records,
            slot_ttl_s=slot_ttl_s(settings),
            clock=clock,
        ),
        changes=changes,
        outbox=outbox,
        outbox_work=outbox,
        deliveries=DeliveryRecords(MemorySubjects(clock)),
        health=MemoryHealth(),
        providers=ProviderSlots(
            MemorySubjects(clock), MemoryCounters(clock), lease_s=lease_s_for(settings), clock=clock
        ),
        budgets=KeyBudgets(
            limits,
            MemoryCounters(
                clock, max_age_s=math.inf, duplicate_window_s=constants.SPEND_DUPLICATE_WINDOW_S
            ),
            records,
            clock=clock,
        ),
        presence=MemoryPresence(clock),
    )
