"""Per-provider limits, enforced across every worker of the cluster through the store
(an upstream account's limits are per account, not per worker process):

- concurrency: `concurrency` numbered slots per provider at
  `imagejobs.limit.provider.<provider>.<n>` in the LIMITS stream (one message per
  subject, compare-and-set writes, per-message TTLs). A slot is a *lease*: its holder's id,
  written with a TTL of `lease_s` and renewed by its holder (compare-and-set on the
  sequence it wrote) while its call runs, released with a delete marker when the call
  ends. A worker that dies stops renewing, so its slots free themselves within
  `lease_s`: no crash leaks one. Free slots are found with one read of every slot
  (`any_copies`, any replica); the compare-and-set that takes one is what counts, so a
  stale read only costs a retry. The lowest-numbered free slots are tried first, so that
  the read covers about the calls in flight, not every slot a large `concurrency` has.
- rate: an optional `requests_per_minute`, as the virtual keys' one (`SlidingWindow`,
  store/quotas.py) on the RATES counters at `imagejobs.rate.provider.<provider>.<minute>`
  (a key's counters have one token fewer, so the two never meet).

Waiting for a slot or a request is the worker's business (worker/limits.py); this module
only takes, renews and gives back.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import RevisionConflict
from imagejobs.store.clock import Clock
from imagejobs.store.protocols import Counters, Subjects
from imagejobs.store.quotas import SlidingWindow

RELEASED_MARKER_TTL_S = 60  # a released slot's empty marker
LOWEST_CANDIDATES = 16  # free slots a take tries first, among the lowest-numbered


def slot_subject(provider: str, n: int) -> str:
    return f"{constants.LIMIT_SUBJECT_PREFIX}.provider.{provider}.{n}"


def slots_pattern(provider: str) -> str:
    """The subject filter of every slot of `provider`."""
    return f"{constants.LIMIT_SUBJECT_PREFIX}.provider.{provider}.*"


def lease_s_for(settings: Settings) -> int:
    """A slot lease's life: the work queue's ack_wait (2 s at least), so that a crashed
    worker's slots are free again about when its jobs are delivered again."""
    return max(math.ceil(settings.ack_wait_s), 2)


def rate_subject(provider: str, minute: int) -> str:
    return f"{constants.RATE_SUBJECT_PREFIX}.provider.{provider}.{minute}"


def _lowest_first(free: list[int]) -> list[int]:
    """The free slots in the order to try them: the LOWEST_CANDIDATES lowest, shuffled
    (concurrent takers spread out instead of colliding), then the rest, shuffled. Taking
    low slots first keeps the slots ever written, and so what every take reads, near the
    calls actually in flight instead of `concurrency` (measured: a worker did ~4x fewer
    jobs per CPU-second with 600 slots spread over than with 64; bench/cluster.py)."""
    low, rest = free[:LOWEST_CANDIDATES], free[LOWEST_CANDIDATES:]
    random.shuffle(low)
    random.shuffle(rest)
    return low + rest


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

    async def take(self, provider: str, limit: int, holder: str) -> Lease | None:
        """One of the provider's `limit` slots for `holder`, or None when all are held."""
        held = await self._slots.any_copies(slots_pattern(provider))
        free = [n for n in range(limit) if not held.get(slot_subject(provider, n), (b"", 0))[0]]
        for n in _lowest_first(free):
            subject = slot_subject(provider, n)
            expected = held.get(subject, (b"", 0))[1]
            with contextlib.suppress(RevisionConflict):  # taken meanwhile (or the read was old)
                seq = await self._slots.put(
                    subject, holder.encode(), ttl_s=self.lease_s, expected=expected
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
        """Give the slot back, if the lease still holds it."""
        with contextlib.suppress(RevisionConflict):
            await self._slots.delete(lease.subject, ttl_s=RELEASED_MARKER_TTL_S, expected=lease.seq)

    async def take_request(self, provider: str, per_minute: int) -> float:
        """Count one request to `provider`: 0.0 if within `per_minute`, else the seconds
        to wait before asking again (nothing counted)."""
        return await self._window.take(lambda minute: rate_subject(provider, minute), per_minute)
