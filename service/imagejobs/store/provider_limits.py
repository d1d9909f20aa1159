"""Per-provider limits, enforced across every worker of the cluster through the store
(an upstream account's limits are per account, not per worker process):

- concurrency: `concurrency` numbered slots per provider at
  `imagejobs.limit.provider.<provider>.<n>` in the LIMITS stream (one message per
  subject, compare-and-set writes, per-message TTLs). A slot is a *lease*: its holder's id,
  written with a TTL of `lease_s` and renewed by its holder (compare-and-set on the
  sequence it wrote) while its call runs, released with a delete marker when the call
  ends. A worker that dies stops renewing, so its slots free themselves within
  `lease_s`: no crash leaks one. Each process remembers the slots it knows to be free
  (from its last read, and the ones its own calls gave back) with the sequence a take
  must expect, so a take is one compare-and-set; only when none it knows of is left does
  it read every slot again (`any_copies`, any replica). The compare-and-set is what
  counts, so a stale memory or read only costs a retry. The lowest-numbered free slots
  are tried first, so that a read covers about the calls in flight, not every slot a
  large `concurrency` has. (Reading every slot at every take made a worker with 2,000
  calls in flight spend ~25 ms of CPU per job: bench/run.py section e.)
- rate: an optional `requests_per_minute`, as the virtual keys' one (`SlidingWindow`,
  store/quotas.py) on the RATES counters at `imagejobs.rate.provider.<provider>.<minute>`
  (a key's counters have one token fewer, so the two never meet).

Waiting for a slot or a request is the worker's business (worker/limits.py); this module
only takes, renews and gives back.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import random
from dataclasses import dataclass, field

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import RevisionConflict
from imagejobs.store.clock import Clock
from imagejobs.store.protocols import Counters, Subjects
from imagejobs.store.quotas import SlidingWindow

RELEASED_MARKER_TTL_S = 60  # a released slot's empty marker
LOWEST_CANDIDATES = 16  # free slots a take tries first, among the lowest-numbered


_SLOT_PREFIX = f"{constants.LIMIT_SUBJECT_PREFIX}.provider."


def slot_subject(provider: str, n: int) -> str:
    return f"{_SLOT_PREFIX}{provider}.{n}"


def slots_pattern(provider: str) -> str:
    """The subject filter of every slot of `provider`."""
    return f"{constants.LIMIT_SUBJECT_PREFIX}.provider.{provider}.*"


def lease_s_for(settings: Settings) -> int:
    """A slot lease's life: the work queue's ack_wait (2 s at least), so that a crashed
    worker's slots are free again about when its jobs are delivered again."""
    return max(math.ceil(settings.ack_wait_s), 2)


def rate_subject(provider: str, minute: int) -> str:
    return f"{constants.RATE_SUBJECT_PREFIX}.provider.{provider}.{minute}"


@dataclass
class _Free:
    """The slots of one provider this process knows to be free: number -> the sequence
    a take must expect (0: never written), and the numbers as a heap, smallest first
    (entries no longer in `seqs` are skipped, lazily)."""

    seqs: dict[int, int] = field(default_factory=dict)
    heap: list[int] = field(default_factory=list)

    def add(self, n: int, seq: int) -> None:
        if n not in self.seqs:
            heapq.heappush(self.heap, n)
        self.seqs[n] = seq

    def pick(self, limit: int) -> tuple[int, int] | None:
        """One of the lowest known free slots below `limit` (among LOWEST_CANDIDATES, at
        random, so that concurrent takers spread out), forgotten as it is returned."""
        low: list[int] = []
        while self.heap and len(low) < LOWEST_CANDIDATES:
            n = heapq.heappop(self.heap)
            if n in self.seqs and n < limit:
                low.append(n)
            else:
                self.seqs.pop(n, None)  # stale, or beyond a lowered limit
        if not low:
            return None
        n = low.pop(random.randrange(len(low)))
        for other in low:
            heapq.heappush(self.heap, other)
        return n, self.seqs.pop(n)


@dataclass(frozen=True)
class Lease:
    """A held slot: its subject, its holder, and the sequence the holder last wrote."""

    subject: str
    holder: str
    seq: int


class ProviderSlots:
    """`ProviderLimits` on `Subjects` (the slots) and `Counters` (the per-minute counts)."""

    def __init__(self, slots: Subjects, counters: Counters, *, lease_s: int, clock: Clock) -> None:
        self._slots = slots
        self._window = SlidingWindow(counters, clock)
        self.lease_s = lease_s
        self._free: dict[str, _Free] = {}  # provider -> the slots known to be free
        self._reading: dict[str, asyncio.Future[None]] = {}  # provider -> its shared read

    async def take(self, provider: str, limit: int, holder: str) -> Lease | None:
        """One of the provider's `limit` slots for `holder`, or None when all are held:
        a free slot this process knows of, else one found by reading every slot."""
        free = self._free.setdefault(provider, _Free())
        lease = await self._try(free, provider, limit, holder)
        if lease is None:
            await self._read(free, provider, limit)
            lease = await self._try(free, provider, limit, holder)
        return lease

    async def _read(self, free: _Free, provider: str, limit: int) -> None:
        """Read every slot and remember the free ones. Takes that find none known at the
        same time share one read (2,000 calls starting at once would make 2,000)."""
        reading = self._reading.get(provider)
        if reading is None:
            reading = asyncio.ensure_future(self._remember(free, provider, limit))
            self._reading[provider] = reading
            reading.add_done_callback(lambda _: self._reading.pop(provider, None))
        await asyncio.shield(reading)

    async def _remember(self, free: _Free, provider: str, limit: int) -> None:
        held: set[int] = set()
        seqs: dict[int, int] = {}
        for subject, (data, seq) in (await self._slots.any_copies(slots_pattern(provider))).items():
            n = int(subject.rpartition(".")[2])
            if data:
                held.add(n)
            else:
                seqs[n] = seq
        for n in range(limit):
            if n not in held:
                free.add(n, seqs.get(n, 0))

    async def _try(self, free: _Free, provider: str, limit: int, holder: str) -> Lease | None:
        """Take one of the free slots known, up to LOWEST_CANDIDATES tries (each a slot
        that was taken meanwhile, or whose marker expired: forgotten); None if none held."""
        for _ in range(LOWEST_CANDIDATES):
            picked = free.pick(limit)
            if picked is None:
                return None
            subject = slot_subject(provider, picked[0])
            with contextlib.suppress(RevisionConflict):
                seq = await self._slots.put(
                    subject, holder.encode(), ttl_s=self.lease_s, expected=picked[1]
                )
                return Lease(subject, holder, seq)
        return None

    async def renew(self, lease: Lease) -> Lease | None:
        """The lease, good for another `lease_s`; None if it was lost (it ran out and
        someone else took the slot)."""
        try:
            seq = await self._slots.put(
                lease.subject, lease.holder.encode(), ttl_s=self.lease_s, expected=lease.seq
            )
        except RevisionConflict:
            return None
        return Lease(lease.subject, lease.holder, seq)

    async def release(self, lease: Lease) -> None:
        """Give the slot back, if the lease still holds it (and remember it free)."""
        with contextlib.suppress(RevisionConflict):
            seq = await self._slots.delete(
                lease.subject, ttl_s=RELEASED_MARKER_TTL_S, expected=lease.seq
            )
            provider, _, n = lease.subject.removeprefix(_SLOT_PREFIX).rpartition(".")
            self._free.setdefault(provider, _Free()).add(int(n), seq)

    async def take_request(self, provider: str, per_minute: int) -> float:
        """Count one request to `provider`: 0.0 if within `per_minute`, else the seconds
        to wait before asking again (nothing counted)."""
        return await self._window.take(lambda minute: rate_subject(provider, minute), per_minute)
