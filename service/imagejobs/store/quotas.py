"""Per-key quotas, enforced across every API process through the store:

- rate: a sliding one-minute window per key, from atomic counters (with JetStream, the
  RATES stream with `allow_msg_counter`) at `imagejobs.rate.<key>.<minute>`: one
  server-side increment per submit, exact under any concurrency;
- concurrency (with JetStream, the LIMITS stream: one message per subject,
  compare-and-set writes): `max_concurrent_jobs` numbered slots per key at
  `imagejobs.limit.slot.<key>.<n>`, each holding the id of the job in it (empty = free).
  A submit takes a free slot with a create-only/compare-and-set write, so two API
  processes can never fill one slot twice; whoever writes the job's terminal state
  (worker, cancel, expiry: `worker/finish.py`) frees it. A slot whose job is terminal or
  gone (its releaser crashed) is reclaimed when the key is at its limit, so slots never
  leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import ErrorCode, RateLimited, RevisionConflict, StoreUnavailable
from imagejobs.domain.keys import KeyPolicy
from imagejobs.store.clock import Clock
from imagejobs.store.protocols import Counters, JobStore, Subjects

CONCURRENCY_RETRY_AFTER_S = 2
_MARKER_TTL_S = 60  # a freed slot's empty marker
_PAST_CACHE_MAX = 10_000


def slot_ttl_s(settings: Settings) -> int:
    """How long a concurrency slot lives at most: longer than any job may hold it."""
    return int(settings.max_job_age_s) + 60


def rate_subject(key_id: str, window: int) -> str:
    return f"{constants.RATE_SUBJECT_PREFIX}.{key_id}.{window}"


def slot_subject(key_id: str, n: int) -> str:
    return f"{constants.LIMIT_SUBJECT_PREFIX}.slot.{key_id}.{n}"


class SlidingWindow:
    """A per-minute request limit as a sliding one-minute window over atomic per-minute
    counters: this minute's count plus the previous minute's, weighted by how much of it
    still lies within the last 60 s. One atomic increment per request; a refused request
    is taken back. `subject(minute)` names a limited thing's counter of that minute."""

    def __init__(self, counters: Counters, clock: Clock) -> None:
        self._counters = counters
        self._clock = clock
        self._past: dict[str, int] = {}

    async def _previous(self, subject: str) -> int:
        """A past window's final count (cached: a past window no longer changes)."""
        cached = self._past.get(subject)
        if cached is not None:
            return cached
        value = await self._counters.value(subject)
        if len(self._past) > _PAST_CACHE_MAX:
            self._past.clear()
        self._past[subject] = value
        return value

    async def take(self, subject: Callable[[int], str], per_minute: int) -> float:
        """Count one request: 0.0 if it is within `per_minute`, else (nothing counted) the
        seconds until it would be: the previous minute's share shrinks by previous/60
        per second; failing that, the count starts over when this minute ends."""
        window, into = divmod(self._clock.time(), 60.0)
        current_subject = subject(int(window))
        current = await self._counters.incr(current_subject, +1)
        previous = await self._previous(subject(int(window) - 1))
        left_of_window = 60.0 - into
        estimate = previous * left_of_window / 60.0 + current
        if estimate <= per_minute:
            return 0.0
        with contextlib.suppress(StoreUnavailable):
            await self._counters.incr(current_subject, -1)
        wait = (estimate - per_minute) * 60.0 / previous if previous else left_of_window
        return max(min(wait, left_of_window), 0.001)


class KeyQuotas:
    """`Quotas` on `Subjects` (the slots) and `Counters` (the per-minute counts); a slot
    lives `slot_ttl_s` seconds at most, so a leaked one frees itself."""

    def __init__(
        self,
        slots: Subjects,
        counters: Counters,
        records: JobStore,
        *,
        slot_ttl_s: int,
        clock: Clock,
    ) -> None:
        self._slots = slots
        self._records = records
        self._slot_ttl_s = slot_ttl_s
        self._window = SlidingWindow(counters, clock)

    # --- rate -------------------------------------------------------------------------

    async def take_request(self, policy: KeyPolicy) -> None:
        """Count one request against the key's per-minute limit (`SlidingWindow`);
        RateLimited (429) over it, with the seconds until it would pass as Retry-After."""
        rpm = policy.requests_per_minute
        if not rpm:
            return
        wait = await self._window.take(lambda minute: rate_subject(policy.id, minute), rpm)
        if wait:
            raise RateLimited(
                f"rate limit of {rpm} requests per minute reached for this virtual key",
                retry_after_s=max(1, math.ceil(wait)),
            )

    # --- concurrency ------------------------------------------------------------------

    async def acquire(self, policy: KeyPolicy, job_id: str) -> str:
        """A slot for `job_id` (returned as `<key>.<n>`, '' when the key has no limit);
        RateLimited (429) when every slot holds a live job."""
        limit = policy.max_concurrent_jobs
        if not limit:
            return ""
        subjects = [slot_subject(policy.id, n) for n in range(limit)]
        states = await asyncio.gather(*(self._slots.last(s) for s in subjects))
        free = [n for n, (data, _) in enumerate(states) if not data]
        random.shuffle(free)  # concurrent submits spread out instead of colliding
        for n in free:
            if await self._take(policy.id, n, states[n][1], job_id):
                return f"{policy.id}.{n}"
        # all taken: reclaim slots whose job has finished or gone (a crashed releaser)
        held = [(n, data.decode(), seq) for n, (data, seq) in enumerate(states) if data]
        records = await asyncio.gather(*(self._records.get(j) for _, j, _ in held))
        for (n, _, seq), record in zip(held, records, strict=True):
            if (record is None or record[0].status.terminal) and await self._take(
                policy.id, n, seq, job_id
            ):
                return f"{policy.id}.{n}"
        raise RateLimited(
            f"concurrency limit of {limit} jobs in flight reached for this virtual key",
            code=ErrorCode.CONCURRENCY_LIMITED,
            retry_after_s=CONCURRENCY_RETRY_AFTER_S,
        )

    async def _take(self, key_id: str, n: int, expected: int, job_id: str) -> bool:
        try:
            await self._slots.put(
                slot_subject(key_id, n), job_id.encode(), ttl_s=self._slot_ttl_s, expected=expected
            )
        except RevisionConflict:
            return False
        return True

    async def release(self, slot: str, job_id: str) -> None:
        """Free the job's slot, if it still holds it (best effort; a slot left behind is
        reclaimed by `acquire`)."""
        if not slot:
            return
        key_id, _, n = slot.rpartition(".")
        subject = slot_subject(key_id, int(n))
        data, seq = await self._slots.last(subject)
        if data.decode() != job_id:
            return
        with contextlib.suppress(RevisionConflict):  # changed meanwhile: not ours any more
            await self._slots.delete(subject, ttl_s=_MARKER_TTL_S, expected=seq)
