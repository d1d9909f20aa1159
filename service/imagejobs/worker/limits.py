"""A provider's limits as one worker applies them (the slots and counters themselves are
in store/provider_limits.py, shared by every worker of the cluster):

- `ProviderGate.held()`: a call to the provider first waits for one of this worker's
  `concurrency` places (a semaphore: calls beyond it wait in memory, asking nothing of the
  store), then for one of the provider's `concurrency` cluster-wide slots. A full
  cluster is asked again after a backoff (50 ms doubling to 1 s, with jitter), or at once
  when another call of this worker ends. The slot's lease is renewed while the call
  runs, before half its life has passed, by one renewer per gate for all its calls (a
  task and a timer per call showed in the profile of a worker running 2,000 calls at
  once), and given back when it ends; the time spent waiting is returned, so that the runner does
  not count it against the job's deadline.
- `RateLimited`: a provider wrapped so that every request (each retry included) first
  takes one of `requests_per_minute`, waiting as long as the window says.

So a job that finds its provider's slots full is not failed and not retried in a loop:
its worker holds its message (the handler's heartbeat keeps it) and waits; the jobs
behind it stay in the queue, since a worker fetches only as many as it has room for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from imagejobs.domain.errors import StoreError
from imagejobs.providers.base import Provider, ProviderRequest, ProviderResult
from imagejobs.store.clock import Clock, SystemClock
from imagejobs.store.protocols import ProviderLimits
from imagejobs.store.provider_limits import Lease

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 1.0


@dataclass(eq=False)
class _Held:
    """One call's slot: its lease as last written, and when (monotonic s)."""

    lease: Lease
    renewed_at: float
    lost: bool = False
    ended: bool = False


class ProviderGate:
    """`concurrency` calls to provider `name` at once across the cluster (and from this
    worker), `requests_per_minute` requests (0: no rate limit)."""

    def __init__(
        self,
        name: str,
        concurrency: int,
        requests_per_minute: int,
        limits: ProviderLimits,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self._limits = limits
        self._clock = clock or SystemClock()
        self._local = asyncio.Semaphore(concurrency)
        self._freed = asyncio.Event()
        self._held: set[_Held] = set()  # the leases of the calls under way
        self._renewer: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def held(self, holder: str) -> AsyncIterator[float]:
        """Hold a place for one call by `holder` (a job id); yields the seconds it
        waited for it. Cancellable while waiting (the job was cancelled)."""
        started = self._clock.monotonic()
        async with self._local:
            held = _Held(await self._take(holder), self._clock.monotonic())
            self._held.add(held)
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.create_task(self._renew_all())
            try:
                yield self._clock.monotonic() - started
            finally:
                self._held.discard(held)
                held.ended = True
                with contextlib.suppress(StoreError):
                    # shielded: a cancelled call still gives its slot back at once
                    await asyncio.shield(self._limits.release(held.lease))
                self._freed.set()

    async def _take(self, holder: str) -> Lease:
        delay = FIRST_RETRY_S
        while True:
            try:
                lease = await self._limits.take(self.name, self.concurrency, holder)
            except StoreError as exc:  # the store hiccuped: keep waiting, do not fail the job
                log.warning("provider %s: slot not taken (%s); trying again", self.name, exc)
                lease = None
            if lease is not None:
                return lease
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await self._clock.wait_for(self._freed.wait(), delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, MAX_RETRY_S)

    async def _renew_all(self) -> None:
        """While calls hold slots: every sixth of a lease's life, renew the leases last
        written a third of it ago or more (so none goes unrenewed past half its life).
        A lease lost (the store was out for longer than its life, and another call took
        the slot) is not fought for: the call goes on, since it cannot be taken back."""
        interval = self._limits.lease_s / 3
        while self._held:
            await self._clock.sleep(interval / 2)
            now = self._clock.monotonic()
            due = [h for h in self._held if not h.lost and now - h.renewed_at >= interval]
            await asyncio.gather(*(self._renew(h) for h in due))

    async def _renew(self, held: _Held) -> None:
        try:
            renewed = await self._limits.renew(held.lease)
        except StoreError as exc:
            log.warning("provider %s: slot lease not renewed: %s", self.name, exc)
            return
        if renewed is None:
            log.warning("provider %s: a slot lease ran out during a call", self.name)
            held.lost = True
            return
        held.lease, held.renewed_at = renewed, self._clock.monotonic()
        if held.ended:  # the call ended (and gave back the older write) meanwhile
            with contextlib.suppress(StoreError):
                await self._limits.release(renewed)

    async def request(self) -> None:
        """Wait until one more request to the provider is within its per-minute limit."""
        if not self.requests_per_minute:
            return
        while True:
            try:
                wait = await self._limits.take_request(self.name, self.requests_per_minute)
            except StoreError as exc:
                log.warning("provider %s: request not counted (%s); trying again", self.name, exc)
                wait = MAX_RETRY_S
            if not wait:
                return
            await self._clock.sleep(wait * random.uniform(1.0, 1.2))


class RateLimited:
    """`Provider` that takes a request from `gate` before each call of `inner`."""

    def __init__(self, inner: Provider, gate: ProviderGate) -> None:
        self._inner = inner
        self._gate = gate
        self.name = inner.name
        self.operations = inner.operations

    async def run(self, request: ProviderRequest) -> ProviderResult:
        await self._gate.request()
        return await self._inner.run(request)
