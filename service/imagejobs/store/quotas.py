"""Per-key quotas, enforced across every API process through JetStream:

- rate: a sliding one-minute window per key, from JetStream counters (the RATES stream,
  `allow_msg_counter`) at `imagejobs.rate.<key>.<minute>`: one atomic server-side
  increment per submit, exact under any concurrency;
- concurrency (the LIMITS stream, one message per subject, compare-and-set writes):
  `max_concurrent_jobs` numbered slots per key at
  `imagejobs.limit.slot.<key>.<n>`, each holding the id of the job in it (empty = free).
  A submit takes a free slot with a create-only/compare-and-set write, so two API
  processes can never fill one slot twice; whoever writes the job's terminal state
  (worker, cancel, expiry) frees it. A slot whose job is terminal or gone (its releaser
  crashed) is reclaimed when the key is at its limit, so slots never leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError

from imagejobs.domain import constants
from imagejobs.domain.errors import RateLimited, RevisionConflict, StoreUnavailable
from imagejobs.domain.keys import KeyPolicy
from imagejobs.store.jetstream import WRONG_LAST_SEQUENCE, last_on_subject
from imagejobs.store.records import JobStore

CONCURRENCY_RETRY_AFTER_S = 2
_MARKER_TTL_S = 60


def rate_subject(key_id: str, window: int) -> str:
    return f"{constants.RATE_SUBJECT_PREFIX}.{key_id}.{window}"


def slot_subject(key_id: str, n: int) -> str:
    return f"{constants.LIMIT_SUBJECT_PREFIX}.slot.{key_id}.{n}"


class Quotas:
    def __init__(self, nc: Client, js: JetStreamContext, store: JobStore, slot_ttl_s: int) -> None:
        self._nc = nc
        self._js = js
        self._past: dict[tuple[str, int], int] = {}
        self._store = store
        self._slot_ttl_s = slot_ttl_s

    # --- primitives -------------------------------------------------------------------

    async def _get(self, subject: str) -> tuple[bytes, int]:
        """The subject's last message data (b'' if none) and sequence (0 if none)."""
        return await last_on_subject(self._js, constants.LIMIT_STREAM, subject, "quota read")

    async def _put(self, subject: str, data: bytes, expected: int, ttl_s: int) -> None:
        headers = {"Nats-TTL": f"{ttl_s}s", "Nats-Expected-Last-Subject-Sequence": str(expected)}
        try:
            await self._js.publish(subject, data, headers=headers)
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise RevisionConflict(subject) from exc
            raise StoreUnavailable(f"quota write failed: {exc.description}") from exc
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"quota write failed: {type(exc).__name__}") from exc

    # --- rate -------------------------------------------------------------------------

    async def _incr(self, subject: str, delta: int) -> int:
        """Add `delta` to a JetStream counter; its new value (atomic on the server)."""
        try:
            reply = await self._nc.request(
                subject, b"", headers={"Nats-Incr": f"{delta:+d}"}, timeout=5
            )
            answer = json.loads(reply.data)
        except (TimeoutError, NatsError, ValueError) as exc:
            raise StoreUnavailable(f"rate counter failed: {type(exc).__name__}") from exc
        if "error" in answer:
            raise StoreUnavailable(f"rate counter failed: {answer['error']}")
        return int(answer["val"])

    async def _previous(self, key_id: str, window: int) -> int:
        """A past window's final count (cached: a past window no longer changes)."""
        cached = self._past.get((key_id, window))
        if cached is not None:
            return cached
        data, _ = await last_on_subject(
            self._js, constants.RATE_STREAM, rate_subject(key_id, window), "rate counter read"
        )
        try:
            value = int(json.loads(data)["val"]) if data else 0
        except ValueError as exc:
            raise StoreUnavailable(f"rate counter read failed: {type(exc).__name__}") from exc
        if len(self._past) > 10_000:
            self._past.clear()
        self._past[(key_id, window)] = value
        return value

    async def take_request(self, policy: KeyPolicy) -> None:
        """Count one request against the key's per-minute limit; RateLimited (429) over
        it. A sliding window: this minute's count plus the previous minute's, weighted by
        how much of it still lies within the last 60 s. One atomic counter increment per
        request (a refused request is taken back)."""
        rpm = policy.requests_per_minute
        if not rpm:
            return
        now = time.time()
        window, into = divmod(now, 60.0)
        subject = rate_subject(policy.id, int(window))
        current = await self._incr(subject, +1)
        previous = await self._previous(policy.id, int(window) - 1)
        left_of_window = 60.0 - into
        estimate = previous * left_of_window / 60.0 + current
        if estimate <= rpm:
            return
        with contextlib.suppress(StoreUnavailable):
            await self._incr(subject, -1)
        # the previous minute's share shrinks by previous/60 per second; failing that,
        # the count starts over when this minute ends
        wait = (estimate - rpm) * 60.0 / previous if previous else left_of_window
        raise RateLimited(
            f"rate limit of {rpm} requests per minute reached for this virtual key",
            retry_after_s=max(1, math.ceil(min(wait, left_of_window))),
        )

    # --- concurrency ------------------------------------------------------------------

    async def acquire(self, policy: KeyPolicy, job_id: str) -> str:
        """A slot for `job_id` (returned as `<key>.<n>`, '' when the key has no limit);
        RateLimited (429) when every slot holds a live job."""
        limit = policy.max_concurrent_jobs
        if not limit:
            return ""
        subjects = [slot_subject(policy.id, n) for n in range(limit)]
        states = await asyncio.gather(*(self._get(s) for s in subjects))
        free = [n for n, (data, _) in enumerate(states) if not data]
        random.shuffle(free)  # concurrent submits spread out instead of colliding
        for n in free:
            if await self._take(policy.id, n, states[n][1], job_id):
                return f"{policy.id}.{n}"
        # all taken: reclaim slots whose job has finished or gone (a crashed releaser)
        held = [(n, data.decode(), seq) for n, (data, seq) in enumerate(states) if data]
        records = await asyncio.gather(*(self._store.get(j) for _, j, _ in held))
        for (n, _, seq), record in zip(held, records, strict=True):
            if (record is None or record[0].status.terminal) and await self._take(
                policy.id, n, seq, job_id
            ):
                return f"{policy.id}.{n}"
        raise RateLimited(
            f"concurrency limit of {limit} jobs in flight reached for this virtual key",
            code="concurrency_limited",
            retry_after_s=CONCURRENCY_RETRY_AFTER_S,
        )

    async def _take(self, key_id: str, n: int, expected: int, job_id: str) -> bool:
        try:
            await self._put(slot_subject(key_id, n), job_id.encode(), expected, self._slot_ttl_s)
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
        data, seq = await self._get(subject)
        if data.decode() != job_id:
            return
        with contextlib.suppress(RevisionConflict):  # changed meanwhile: not ours any more
            await self._put(subject, b"", seq, _MARKER_TTL_S)
