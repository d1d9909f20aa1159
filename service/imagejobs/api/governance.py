"""Governance at submit and in the usage report (docs/governance.md): the per-key queue
bound, the budget reservation and its release, and what a key has spent.

The estimate a submit reserves is `n` times one image's price at the requested size and
quality, for the dearest of the model and its fallbacks (any of them may end up serving
the job); the job's end settles it to the real cost (worker/finish.py). A key with a
budget may name only priced models (403 `model_not_priced` otherwise): a model without a
price could spend without limit. A key without a budget has its spend tracked the same
way, for the report, and is never refused for it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from imagejobs.api.requests import ImageRequest
from imagejobs.domain.budget import BudgetHold, Spend
from imagejobs.domain.errors import ErrorCode, Forbidden, QueueFull, StoreError
from imagejobs.domain.keys import KeyPolicy
from imagejobs.providers.pricing import PriceTable
from imagejobs.store.protocols import Backend

KEY_QUEUE_RETRY_AFTER_S = 5  # a key's full queue: when to try again (its jobs drain meanwhile)


@dataclass(frozen=True)
class KeyUsage:
    """A key's governance state now: its spend in the current period and its queue."""

    policy: KeyPolicy
    spend: Spend
    queued_jobs: int


class Governance:
    """The submit's budget and queue checks on a `Backend`, with this deployment's
    prices."""

    def __init__(self, backend: Backend, prices: PriceTable) -> None:
        self._budgets = backend.budgets
        self._queue = backend.queue
        self._records = backend.records
        self._prices = prices

    def estimate(self, policy: KeyPolicy, request: ImageRequest) -> int | None:
        """What the submit would reserve (µUSD), None when nothing it names is priced;
        Forbidden (403) when the key has a budget and something it names is not."""
        named = [(request.model, "model"), *((f, "fallbacks") for f in request.fallbacks)]
        prices = [self._prices.estimate(model, request.params) for model, _ in named]
        if policy.budget_micro:
            for (model, param), price in zip(named, prices, strict=True):
                if price is None:
                    raise Forbidden(
                        f"model {model} has no price; a virtual key with a budget may use "
                        "priced models only",
                        code=ErrorCode.MODEL_NOT_PRICED,
                        param=param,
                        provider=model.provider,
                        model=model.name,
                    )
        known = [p for p in prices if p is not None]
        return max(known) if known else None

    async def check_queue(self, policy: KeyPolicy, owner: str) -> None:
        """QueueFull (429 `queue_full`) when the key already has `max_queued_jobs` jobs
        waiting; other keys are not affected."""
        limit = policy.max_queued_jobs
        if limit and await self._queue.queued(owner) >= limit:
            raise QueueFull(
                f"this virtual key has {limit} jobs waiting in the queue, its limit "
                "(max_queued_jobs); retry later",
                retry_after_s=KEY_QUEUE_RETRY_AFTER_S,
            )

    async def reserve(
        self, policy: KeyPolicy, job_id: str, estimate: int | None
    ) -> BudgetHold | None:
        """Hold the estimate against the key's spend (BudgetExceeded, 402, past its
        budget); None when there is nothing to hold."""
        if estimate is None:
            return None
        return await self._budgets.reserve(policy, job_id, estimate)

    async def release(self, hold: BudgetHold | None, job_id: str) -> None:
        """Give back the hold of a submit that was not accepted, unless a record of the
        job exists after all (a concurrent retry of the same submit made it, and shares
        the hold). Best effort: a hold left behind is reclaimed by the key's next sweep."""
        if hold is None:
            return
        with contextlib.suppress(StoreError):
            if await self._records.get(job_id) is None:
                await self._budgets.settle(hold, job_id, 0)

    async def usage(self, policy: KeyPolicy, owner: str) -> KeyUsage:
        """The key's spend in its current period and its jobs waiting now."""
        spend = await self._budgets.usage(policy)
        return KeyUsage(policy=policy, spend=spend, queued_jobs=await self._queue.queued(owner))
