"""Retrying one provider call: exponential backoff with jitter, `Retry-After` honoured,
bounded by a retry count and by the job's deadline.

Only `ProviderError`s marked `retryable` (429, 5xx, timeouts, connection errors) are
retried; other 4xx fail at once. tenacity drives the loop; this module only says when.
Waits and the deadline go through a `Clock` (production: `time.monotonic` and
`asyncio.sleep`), so tests check the delays asked for without sleeping them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_exponential_jitter

from imagejobs.domain import constants
from imagejobs.providers.base import (
    SYSTEM_CLOCK,
    Clock,
    Provider,
    ProviderError,
    ProviderRequest,
    ProviderResult,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one provider before giving up (or falling back)."""

    max_retries: int = constants.PROVIDER_MAX_RETRIES  # retries after the first attempt
    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter_s: float = 0.5
    max_retry_after_s: float = 120.0  # a larger Retry-After is capped to this


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


class _Wait:
    """Exponential backoff with jitter, but never shorter than the upstream's Retry-After
    and never past the deadline. Returns seconds. `before` attempts were made before
    tenacity's loop began (its attempt n is the call's attempt n + before)."""

    def __init__(self, policy: RetryPolicy, deadline: float, clock: Clock, before: int) -> None:
        self._policy = policy
        self._deadline = deadline
        self._clock = clock
        self._before = before
        self._backoff = wait_exponential_jitter(
            multiplier=policy.initial_delay_s, max=policy.max_delay_s, jitter=policy.jitter_s
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.after(state.attempt_number + self._before, exc)

    def after(self, attempt_number: int, exc: BaseException | None) -> float:
        """The wait after the call's attempt `attempt_number` failed with `exc`."""
        delay = self._backoff(cast(RetryCallState, SimpleNamespace(attempt_number=attempt_number)))
        if isinstance(exc, ProviderError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self._policy.max_retry_after_s))
        return max(min(delay, self._deadline - self._clock.now()), 0.0)


class _StopAtDeadline(stop_base):
    """Stop once the job's deadline (an instant of `clock`) has passed."""

    def __init__(self, deadline: float, clock: Clock) -> None:
        self._deadline = deadline
        self._clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock.now() >= self._deadline


async def call_with_retries(
    provider: Provider,
    request: ProviderRequest,
    *,
    policy: RetryPolicy,
    deadline: float,
    on_attempt: Callable[[int], None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> ProviderResult:
    """Run `provider.run(request)` until it succeeds, fails for good, runs out of
    retries, or `deadline` (an instant of `clock`: `time.monotonic()` by default) passes,
    waiting between calls with `clock.sleep`. The request's `attempt` goes up by one per
    call; `on_attempt(n)` is told each number before the call. Raises the last
    ProviderError."""
    # the first attempt outside tenacity's loop: nearly every call succeeds at once, and
    # the loop's own bookkeeping was ~12% of a busy worker's CPU (bench/RESULTS.md)
    wait = _Wait(policy, deadline, clock, before=1)
    if on_attempt is not None:
        on_attempt(request.attempt)
    try:
        return await provider.run(request)
    except ProviderError as exc:
        if not exc.retryable or policy.max_retries == 0 or clock.now() >= deadline:
            raise
        await clock.sleep(wait.after(1, exc))
    attempt = request.attempt + 1
    retrying = AsyncRetrying(
        sleep=clock.sleep,
        retry=retry_if_exception(_is_retryable),
        stop=stop_after_attempt(policy.max_retries) | _StopAtDeadline(deadline, clock),
        wait=wait,
        reraise=True,
    )
    async for try_ in retrying:
        with try_:
            current = dataclasses.replace(request, attempt=attempt)
            attempt += 1
            if on_attempt is not None:
                on_attempt(current.attempt)
            return await provider.run(current)
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover
