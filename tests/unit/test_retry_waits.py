"""`call_with_retries` on a fake clock: the waits it asks for between attempts
(exponential backoff, a longer Retry-After honoured, never past the deadline), the
attempt numbers the calls see, and when it gives up."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from imagejobs.domain.kinds import Kind
from imagejobs.providers.base import ProviderError, ProviderRequest, ProviderResult
from imagejobs.worker.retry import RetryPolicy, call_with_retries

from tests.fakes.clock import FakeClock

POLICY = RetryPolicy(max_retries=3, initial_delay_s=0.5, max_delay_s=30.0, jitter_s=0.0)
DONE = ProviderResult(images=())


def busy(retry_after: float | None = None) -> ProviderError:
    return ProviderError("busy", status_code=503, retryable=True, retry_after=retry_after)


@dataclass
class Scripted:
    """A provider answering each call with the next of `answers` (an error is raised)."""

    answers: list[ProviderError | ProviderResult]
    attempts: list[int] = field(default_factory=list)
    name: str = "scripted"

    async def run(self, request: ProviderRequest) -> ProviderResult:
        self.attempts.append(request.attempt)
        answer = self.answers.pop(0)
        if isinstance(answer, ProviderError):
            raise answer
        return answer


async def attempt(provider: Scripted, clock: FakeClock, deadline_s: float = 100.0) -> None:
    request = ProviderRequest(Kind.GENERATION, "m", "p", {}, attempt=1)
    seen: list[int] = []
    try:
        await call_with_retries(
            provider,  # type: ignore[arg-type]
            request,
            policy=POLICY,
            deadline=clock.now() + deadline_s,
            on_attempt=seen.append,
            clock=clock,
        )
    finally:
        assert seen == provider.attempts  # each call's number was told before it


async def test_a_first_success_waits_for_nothing() -> None:
    clock, provider = FakeClock(), Scripted([DONE])
    await attempt(provider, clock)
    assert clock.sleeps == [] and provider.attempts == [1]


async def test_retries_back_off_exponentially_and_honour_a_longer_retry_after() -> None:
    clock, provider = FakeClock(), Scripted([busy(), busy(retry_after=3.0), busy(), DONE])
    await attempt(provider, clock)
    assert clock.sleeps == [0.5, 3.0, 2.0] and provider.attempts == [1, 2, 3, 4]


async def test_the_last_retry_failing_raises_its_error() -> None:
    clock, provider = FakeClock(), Scripted([busy(), busy(), busy(), busy(retry_after=9.0)])
    with pytest.raises(ProviderError) as info:
        await attempt(provider, clock)
    assert info.value.retry_after == 9.0 and clock.sleeps == [0.5, 1.0, 2.0]


async def test_a_first_failure_that_is_not_retryable_is_raised_at_once() -> None:
    clock = FakeClock()
    provider = Scripted([ProviderError("bad", status_code=400), DONE])
    with pytest.raises(ProviderError):
        await attempt(provider, clock)
    assert clock.sleeps == [] and provider.attempts == [1]


async def test_no_wait_goes_past_the_deadline() -> None:
    clock, provider = FakeClock(), Scripted([busy(retry_after=5.0), busy(), DONE])
    with pytest.raises(ProviderError):
        await attempt(provider, clock, deadline_s=2.0)
    assert clock.sleeps == [2.0] and provider.attempts == [1, 2]
