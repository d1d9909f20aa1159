"""A `Clock` for tests: sleeps return at once, and each records the delay asked for.

    clock = FakeClock()
    await call_with_retries(provider, request, policy=..., deadline=clock.now() + 10,
                            clock=clock)
    assert clock.sleeps == [1.0]  # Retry-After: 1 honoured, without waiting a second

`now()` moves on by every sleep, so deadlines computed from it still pass.
"""

from __future__ import annotations

import asyncio


class FakeClock:
    """Monotonic time in seconds that advances only by the sleeps asked of it."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []  # every delay asked for, in seconds, in order

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += max(seconds, 0.0)
        await asyncio.sleep(0)  # still yield to the loop, as a real sleep does
