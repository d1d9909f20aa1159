"""What the API service and the worker need from the job store, as Protocols, and the
`Backend` bundle that carries one implementation of each.

Two implementations sit behind them: JetStream (`store/factory.py` builds it on one NATS
connection) and the in-memory twin for unit tests (`store/memory.py`). The conformance
suite `tests/e2e/test_store_contract.py` runs the same checks against both.

Two primitives carry the keyed state (records, idempotency keys, quota slots and
counters), so that the logic on top of them is written once for both implementations:

- `Subjects`: the last message per subject, each with its own TTL, written
  unconditionally or as a compare-and-set on the subject's last sequence (0 = create-only);
- `Counters`: atomic per-subject counters, each increment optionally deduplicated by an
  id (the spend counters: a settlement retried after a crash counts once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imagejobs.domain.budget import BudgetHold, Spend
from imagejobs.domain.jobs import Job
from imagejobs.domain.keys import KeyPolicy
from imagejobs.domain.kinds import Kind

if TYPE_CHECKING:  # the value types live with their JetStream implementation
    from imagejobs.store.deliveries import GoneMarker
    from imagejobs.store.idempotency import Claim
    from imagejobs.store.index import IndexPage
    from imagejobs.store.notifier import Listener
    from imagejobs.store.presence import WorkerBeat
    from imagejobs.store.provider_limits import Lease
    from imagejobs.webhooks.delivery import DeliveryRecord


# --- primitives ------------------------------------------------------------------------


class Subjects(Protocol):
    """One stream holding the last message of each subject (records, keys, slots)."""

    async def last(self, subject: str) -> tuple[bytes, int]:
        """The subject's last message data and sequence: (b"", 0) when there is none
        (never written, or expired); data b"" with a sequence for a delete marker. Sees
        every write acknowledged before the call (on a cluster: read from the leader)."""
        ...

    async def any_copy(self, subject: str) -> tuple[bytes, int]:
        """As `last`, from any copy of the stream (on a cluster: any replica, also while
        there is no leader): maybe an older value, and (b"", 0) may only mean that copy
        lacks it. Only for values that never change once written."""
        ...

    async def any_copies(self, *patterns: str) -> dict[str, tuple[bytes, int]]:
        """The last message of every subject matching one of `patterns` (NATS wildcards,
        or subjects), from any copy in one request: maybe older values, so only for reads
        that a compare-and-set then confirms (a free slot taken, a job claimed)."""
        ...

    async def put(
        self, subject: str, data: bytes, *, ttl_s: int, expected: int | None = None
    ) -> int:
        """Write `data`, living `ttl_s` seconds; with `expected`, only if the subject's
        last sequence is `expected` (0: only if there is none), else RevisionConflict.
        Returns the new sequence."""
        ...

    async def delete(self, subject: str, *, ttl_s: int, expected: int | None = None) -> int:
        """Write a delete marker (empty data) living `ttl_s` seconds; `expected` as in
        `put`. Returns its sequence."""
        ...


class ListedSubjects(Subjects, Protocol):
    """`Subjects` that can also list their live subjects (budget holds, per key)."""

    async def subjects(self, pattern: str) -> list[str]:
        """The subjects matching a NATS filter that hold a message (delete markers too)."""
        ...


class Counters(Protocol):
    """Atomic per-subject counters (per-minute request counts, per-period spend)."""

    async def incr(self, subject: str, delta: int, *, msg_id: str = "") -> int:
        """Add `delta` (may be negative); the new value. With `msg_id`, a repeat of that
        id within the counters' duplicate window is dropped (and the value returned as
        it stands), so an increment retried after a crash counts once."""
        ...

    async def value(self, subject: str) -> int:
        """The current value; 0 for a counter never written or expired."""
        ...


# --- what the service and the worker use ---------------------------------------------


class JobStore(Protocol):
    """Job records. Every write states the revision it replaces."""

    async def create(self, job: Job) -> int:
        """Write a new record; RevisionConflict if the id exists. Its revision."""
        ...

    async def recreate(self, job: Job) -> int:
        """Write a record again over its delete marker; RevisionConflict if one exists."""
        ...

    async def update(self, job: Job, expected_revision: int) -> int:
        """Replace revision `expected_revision`; RevisionConflict if it is not the latest."""
        ...

    async def delete(self, job_id: str) -> None:
        """Remove a record (a submit that was not accepted after all)."""
        ...

    async def get(self, job_id: str, *, leaderless: bool = False) -> tuple[Job, int] | None:
        """The record and its revision as last written, or None when absent, deleted or
        expired. While the latest write cannot be read (or with `leaderless`: the caller
        knows it cannot), only a terminal record is returned; else StoreUnavailable."""
        ...

    async def any_copies(self, job_ids: list[str]) -> dict[str, tuple[Job, int]]:
        """The records of `job_ids` that are there, in one request to any copy: maybe
        older than the latest write, so only for what a compare-and-set then confirms (a
        worker's claim of the jobs it fetched)."""
        ...


class QueueDepth(Protocol):
    async def depth(self) -> tuple[int, int]:
        """(messages in the queue, of those not yet handed to any worker)."""
        ...


class JobQueue(QueueDepth, Protocol):
    """The work queue as the API uses it. Jobs queue in their owner's lane (fair share:
    workers take from the lanes in turn, store/fairshare.py); `owner` is the job's."""

    async def publish(
        self,
        job_id: str,
        record: bytes = b"",
        revision: int = 0,
        trace: Mapping[str, str] | None = None,
        *,
        owner: str = "",
    ) -> None:
        """Enqueue the job, once per job id within the duplicate window (a repeat is
        dropped); QueueFull when the queue is at its bound. With the record as written
        and its revision, the first delivery carries them (`Delivery.record`); every
        delivery carries `trace`, the submit's trace context (`Delivery.trace`)."""
        ...

    async def contains(self, job_id: str, *, owner: str | None = None) -> bool:
        """Whether the job's message is in the queue (waiting or being worked on): in
        `owner`'s lane, or in any lane when `owner` is None."""
        ...

    async def queued(self, owner: str) -> int:
        """How many of `owner`'s jobs wait in its lane, not yet taken by any worker."""
        ...

    async def announce_cancel(self, job_id: str) -> None:
        """Tell whichever worker runs the job to abort it (at most once: a worker that
        misses it finds the job terminal at its next heartbeat)."""
        ...


class Settle(Protocol):
    """The replies to one delivered message of a work queue (jobs, or the outbox)."""

    async def ack(self) -> None:
        """Done: remove the message (not waiting for the server's confirmation)."""
        ...

    async def ack_sync(self) -> None:
        """Done, confirmed by the server."""
        ...

    async def nak(self, delay_s: float = 0.0) -> None:
        """Not done: deliver it again after `delay_s` seconds."""
        ...

    async def term(self) -> None:
        """Never deliver it again (its job is gone)."""
        ...

    async def in_progress(self) -> None:
        """Still working: restart the ack_wait timer."""
        ...


class Delivery(Settle, Protocol):
    """One delivery of a job's message to a worker."""

    @property
    def job_id(self) -> str: ...

    @property
    def num_delivered(self) -> int:
        """1 for the first delivery, 2 for the first redelivery, …"""
        ...

    def record(self) -> tuple[Job, int] | None:
        """The pending record (and revision) a first delivery carries; None otherwise."""
        ...

    def submitted(self) -> Job | None:
        """The job as its submit queued it (any delivery); None for a message without."""
        ...

    @property
    def trace(self) -> Mapping[str, str]:
        """The trace context the message was published with (W3C headers; {} if none)."""
        ...


class Closeable(Protocol):
    async def close(self) -> None: ...


class WorkQueue(QueueDepth, Protocol):
    """The work queue as a worker uses it: one shared consumer; a delivery not acked
    within ack_wait is delivered again, to any worker."""

    async def fetch(self, batch: int, timeout_s: float) -> list[Delivery]:
        """Up to `batch` deliveries, waiting up to `timeout_s` for the first (0: only
        what is there now; JetStream waits at least a moment); [] when none came."""
        ...

    async def on_cancel(self, callback: Callable[[str], None]) -> Closeable:
        """Call `callback(job_id)` for every cancel notice until closed."""
        ...


class ObjectStore(Protocol):
    """Image bytes, each object expiring on its own TTL."""

    async def put(self, object_id: str, data: bytes, content_type: str, ttl_s: int) -> int:
        """Store `data` for `ttl_s` seconds; its size in bytes."""
        ...

    async def get(self, object_id: str) -> StoredObject | None:
        """The object, or None when absent or expired."""
        ...


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    content_type: str


class JobIndex(Protocol):
    """Each caller's jobs, for the list."""

    async def add(self, owner: str, kind: Kind, created_s: float, job_id: str) -> None:
        """Index a job (`created_s` in epoch seconds), once: a repeat keeps its place."""
        ...

    async def page(self, owner: str, kind: Kind | None, before: int, limit: int) -> IndexPage:
        """Up to `limit` of the owner's indexed jobs (of one kind, or all) whose index
        writes were acknowledged below stream sequence `before` (0: from the newest),
        newest (highest sequence) first, and the sequence the next page starts below (0:
        none left). Every entry acknowledged before the call is seen (on a cluster: as
        the leader has it)."""
        ...


class IdempotencyStore(Protocol):
    async def claim(self, owner: str, key: str, job_id: str, fp: str) -> Claim | None:
        """Bind the caller's key to `job_id` (request fingerprint `fp`): None if this
        call did, else the binding that exists."""
        ...

    async def release(self, owner: str, key: str) -> None:
        """Unbind a key whose submit was not accepted."""
        ...


class Quotas(Protocol):
    """Per-virtual-key rate and concurrency limits, shared by every API process."""

    async def take_request(self, policy: KeyPolicy) -> None:
        """Count one request against the per-minute limit; RateLimited over it."""
        ...

    async def acquire(self, policy: KeyPolicy, job_id: str) -> str:
        """A concurrency slot for the job ('' when the key has none); RateLimited when
        every slot holds a live job."""
        ...

    async def release(self, slot: str, job_id: str) -> None:
        """Free the job's slot if it still holds it."""
        ...


class Budgets(Protocol):
    """Per-virtual-key spend per budget period, shared by every API process and worker:
    reserved at submit, settled to the real cost when the job ends (store/budgets.py)."""

    async def reserve(self, policy: KeyPolicy, job_id: str, estimate_micro: int) -> BudgetHold:
        """Reserve `estimate_micro` µUSD for the job in the key's current period;
        BudgetExceeded (402) if that would pass its budget (nothing is then held)."""
        ...

    async def settle(self, hold: BudgetHold, job_id: str, cost_micro: int) -> None:
        """Replace the job's reservation with its real cost (0: release it). Idempotent:
        a reservation settled already is left alone. StoreError if it could not be."""
        ...

    async def usage(self, policy: KeyPolicy) -> Spend:
        """The key's spend in its current period."""
        ...


class ProviderLimits(Protocol):
    """Per-provider concurrency slots (leases) and request rates, shared by every worker
    (store/provider_limits.py)."""

    lease_s: int  # a slot lease's life: renew it within this

    async def take(self, provider: str, limit: int, holder: str) -> Lease | None:
        """One of the provider's `limit` slots for `holder`, or None when all are held."""
        ...

    async def renew(self, lease: Lease) -> Lease | None:
        """The lease for another `lease_s`; None if it was lost meanwhile."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the slot back (if the lease still holds it)."""
        ...

    async def take_request(self, provider: str, per_minute: int) -> float:
        """Count one request: 0.0 if within `per_minute`, else seconds to wait first."""
        ...


class StateChanges(Protocol):
    """Wakes waiters (long-poll, watch) on every write of a job's record."""

    @property
    def closed(self) -> asyncio.Event:
        """Set at shutdown: waiters answer at once."""
        ...

    def listen(self, job_id: str) -> AbstractContextManager[Listener]:
        """Receive the job's changes for the duration of the block."""
        ...

    async def stop(self) -> None:
        """Wake every waiter for good (shutdown)."""
        ...


class StoreHealth(Protocol):
    """Whether this process can accept jobs now (store/health.py)."""

    @property
    def accepting(self) -> bool:
        """The job records and the work queue can take writes (as of the last probe)."""
        ...

    @property
    def reason(self) -> str:
        """Why not ('' while accepting)."""
        ...

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(accepting)` whenever `accepting` changes."""
        ...


class Presence(Protocol):
    """The live worker processes, each by its latest heartbeat (GetStats)."""

    async def beat(self, beat: WorkerBeat, ttl_s: int) -> None:
        """Announce the worker as `beat` says, listed for `ttl_s` seconds."""
        ...

    async def leave(self, worker_id: str) -> None:
        """Remove the worker's announcement (it is stopping)."""
        ...

    async def workers(self) -> list[WorkerBeat]:
        """Every worker whose last beat has not expired, by id."""
        ...


# --- webhooks ---------------------------------------------------------------------------


class OutboxMessage(Settle, Protocol):
    """One delivery of an outbox message (a webhook intent) to a dispatcher."""

    @property
    def data(self) -> bytes: ...


class Outbox(Protocol):
    """Owed webhook deliveries, as terminal writers (workers, the API) publish them."""

    async def publish(self, endpoint: str, msg_id: str, job_id: str, data: bytes) -> None:
        """Owe a delivery to `endpoint`, confirmed by the store; a repeat of `msg_id`
        within the duplicate window is dropped."""
        ...


class OutboxWork(Protocol):
    """The outbox as dispatchers take from it: one shared consumer per endpoint, so that
    a slow endpoint cannot hold up another; a message not settled within the endpoint's
    ack_wait is delivered again, to any dispatcher."""

    async def open(self, endpoint: str, ack_wait_s: float) -> None:
        """Make (or update) the endpoint's consumer."""
        ...

    async def fetch(self, endpoint: str, batch: int, timeout_s: float) -> list[OutboxMessage]:
        """Up to `batch` messages for `endpoint`, waiting up to `timeout_s` for the first."""
        ...

    async def owed(self, endpoint: str) -> int:
        """Messages the endpoint still owes (waiting, in flight or waiting to retry)."""
        ...


class DeliveryStore(Protocol):
    """Each job's delivery record (its history) and the endpoints a 410 disabled."""

    async def get(self, job_id: str) -> tuple[DeliveryRecord, int] | None:
        """The job's delivery record and its revision, or None."""
        ...

    async def put(self, record: DeliveryRecord, *, ttl_s: int, expected: int) -> int:
        """Write the record, living `ttl_s` seconds, if its revision is `expected` (0:
        only if there is none), else RevisionConflict. The new revision."""
        ...

    async def gone(self, endpoint: str) -> GoneMarker | None:
        """Why the endpoint is disabled by a 410, if it is (for its settings then)."""
        ...

    async def mark_gone(self, endpoint: str, marker: GoneMarker) -> None:
        """Disable the endpoint (until its settings change)."""
        ...


@dataclass(frozen=True)
class Backend:
    """One implementation of each part, as the API service, the worker and the webhook
    dispatcher receive it. `queue` and `work` are the two sides of the same work queue;
    `outbox` and `outbox_work` those of the webhook outbox; `health` says whether jobs can
    be accepted now; `providers` the providers' cluster-wide limits; workers announce
    themselves in `presence`."""

    records: JobStore
    queue: JobQueue
    work: WorkQueue
    objects: ObjectStore
    index: JobIndex
    idempotency: IdempotencyStore
    quotas: Quotas
    changes: StateChanges
    outbox: Outbox
    outbox_work: OutboxWork
    deliveries: DeliveryStore
    budgets: Budgets
    health: StoreHealth
    providers: ProviderLimits
    presence: Presence
