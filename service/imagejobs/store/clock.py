"""The clock the service, the worker and the in-memory store read: wall time for job
records, monotonic time for deadlines, and the sleeps and timeouts between them.

`SystemClock` is the real one. `FakeClock` moves only when a test calls `advance`, so a
unit test can cross an ack_wait, a TTL or a job's age limit in microseconds; every sleeper
whose deadline the advance passes wakes, in deadline order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")

_SETTLE_ROUNDS = 100  # event-loop turns a FakeClock gives woken tasks to run (cheap)
EPSILON_S = 1e-6  # deadlines this close count as reached (float sums of durations)


class Clock(Protocol):
    def time(self) -> float:
        """Wall time, seconds since the epoch (job records, TTLs)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend for `seconds`."""
        ...

    async def wait_for(self, aw: Awaitable[T], timeout_s: float) -> T:
        """`aw`'s result, or TimeoutError after `timeout_s` (then `aw` is cancelled)."""
        ...


class SystemClock:
    """The real clock (`time`, `asyncio`)."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_for(self, aw: Awaitable[T], timeout_s: float) -> T:
        return await asyncio.wait_for(aw, timeout_s)


async def settle() -> None:
    """Let every task that can run, run (a fixed number of loop turns: nothing in the
    in-memory backend waits on real I/O, so chains of ready tasks end within them)."""
    for _ in range(_SETTLE_ROUNDS):
        await asyncio.sleep(0)


class FakeClock:
    """A clock for tests: time stands still until `advance`. Wall and monotonic time
    move together; `start` is the wall time it begins at (epoch seconds). Deadlines are
    kept as elapsed seconds (small numbers), so that a deadline and the advance meant to
    reach it are the same float."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._start = start
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._start + self._elapsed

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._order), wake))
        await wake

    async def wait_for(self, aw: Awaitable[T], timeout_s: float) -> T:
        task = asyncio.ensure_future(aw)
        timer = asyncio.ensure_future(self.sleep(timeout_s))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise TimeoutError

    async def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, waking each sleeper whose deadline is passed (in
        order, letting the woken tasks run before the next one wakes)."""
        target = self._elapsed + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target + EPSILON_S:
            deadline, _, wake = heapq.heappop(self._sleepers)
            self._elapsed = max(self._elapsed, deadline)
            if not wake.done():
                wake.set_result(None)
                await settle()
        self._elapsed = max(self._elapsed, target)
        await settle()
