"""Budgets per virtual key on the in-memory store with a fake clock: the reservation at
submit, the 402 at the edge (its message, nothing held), settlement to the real cost,
release on failure and cancel, the window a cost belongs to, priced models only for a key
with a budget, and every crash repair: a settlement redone by the job's next delivery, a
dead submit's hold released by the sweep, a half-done settlement completed once, and a
late repair that never refunds twice. The per-key queue bound is here too."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from imagejobs.api.requests import ImageRequest
from imagejobs.api.service import JobService
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.budget import BudgetHold, Period, micro
from imagejobs.domain.errors import (
    BudgetExceeded,
    ErrorCode,
    Forbidden,
    QueueFull,
    StoreUnavailable,
    Unauthenticated,
)
from imagejobs.domain.jobs import Job, ObjectRef, ResultImage, Status, StoredError, StoredResult
from imagejobs.domain.keys import Caller, KeyPolicy, owner_of
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.providers.pricing import PriceRule, PriceTable
from imagejobs.store.budgets import (
    HOLD_GRACE_S,
    SWEEP_EVERY_S,
    HoldState,
    hold_subject,
    spend_subject,
)
from imagejobs.store.clock import FakeClock
from imagejobs.store.memory import memory_backend
from imagejobs.store.protocols import Backend
from imagejobs.worker.handler import WorkerOptions
from imagejobs.worker.worker import Worker

from tests.unit.conftest import ANONYMOUS

PRICE = 0.01  # mock/priced-*: per image
DEAR = 0.05  # mock/dear: per image
COST = 0.004  # what the runner says a completed job cost
TABLE = PriceTable(
    [
        PriceRule(model="mock/priced-*", per_image_usd=PRICE),
        PriceRule(model="mock/dear", per_image_usd=DEAR),
    ]
)
DAY_START = 1_800_057_600.0  # 2027-01-16T00:00:00Z


def caller(key: str, **limits: Any) -> Caller:
    return Caller(owner=owner_of(key), policy=KeyPolicy(id=key, **limits))


def req(model: str = "mock/priced-a", *fallbacks: str, **params: Any) -> ImageRequest:
    return ImageRequest(
        kind=Kind.GENERATION,
        model=ModelRef.parse(model),
        prompt="a fox",
        params=params,
        fallbacks=tuple(ModelRef.parse(f) for f in fallbacks),
    )


class PricedRunner:
    """Completes each job with one image and `cost_usd`, or fails it with `fail`."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.cost_usd: float | None = COST
        self.fail: StoredError | None = None

    async def run(self, job: Job) -> Job:
        now = self.clock.time()
        if self.fail is not None:
            return job.fail(self.fail, now)
        ref = ObjectRef(object_id=f"{job.id}.out0", content_type="image/png", size=4)
        result = StoredResult(
            created=int(now),
            images=(ResultImage(ref=ref),),
            provider="mock",
            model=job.request.model.name,
            latency_ms=1,
            cost_usd=self.cost_usd,
        )
        return job.complete(result, now)


@dataclasses.dataclass
class Rig:
    clock: FakeClock
    backend: Backend
    service: JobService
    runner: PricedRunner

    async def submit(self, who: Caller, request: ImageRequest | None = None) -> Job:
        return await self.service.submit(request or req(), ttl_s=600, request_id="r", caller=who)

    async def run_all(self, backend: Backend | None = None) -> None:
        worker = Worker(
            backend or self.backend,
            self.runner,
            options=WorkerOptions(worker_concurrency=8, worker_drain_s=1),
            clock=self.clock,
            worker_id="w",
        )
        await worker.run(burst=True)

    async def spend(self, who: Caller) -> tuple[int, int]:
        """(spent, reserved) of the key's current window, in µUSD, as the usage report
        gives them (which reclaims stale holds first)."""
        assert who.policy is not None
        report = await self.service.usage(who)
        return report.spend.spent, report.spend.reserved

    async def counted(self, key: str, period: str = "total") -> tuple[int, int]:
        """(spent, reserved) as the counters hold them now (no reclaim)."""
        counters = self.backend.budgets._counters  # type: ignore[attr-defined]
        used = await counters.value(spend_subject(key, period, "used"))
        reserved = await counters.value(spend_subject(key, period, "reserved"))
        return used - reserved, reserved


def rig_at(start: float = 1_800_000_000.0) -> Rig:
    clock = FakeClock(start)
    backend = memory_backend(clock, Settings(queue_max_jobs=100, ack_wait_s=30))
    service = JobService(backend, clock=clock, prices=TABLE)
    return Rig(clock, backend, service, PricedRunner(clock))


@pytest.fixture
def rig() -> Rig:
    return rig_at()


async def test_a_submit_reserves_its_estimate_and_completion_settles_the_real_cost(
    rig: Rig,
) -> None:
    team = caller("team", budget_usd=1.0, budget_period=Period.DAY)
    job = await rig.submit(team, req(n=2))
    assert job.budget is not None and job.budget.reserved_micro == micro(2 * PRICE)
    assert await rig.spend(team) == (0, micro(2 * PRICE))
    await rig.run_all()
    done = await rig.service.get(None, job.id, team)
    assert done.status is Status.COMPLETED and done.result is not None
    assert done.result.cost_usd == COST
    assert await rig.spend(team) == (micro(COST), 0)


async def test_failure_and_cancel_release_the_reservation(rig: Rig) -> None:
    team = caller("team", budget_usd=1.0)
    rig.runner.fail = StoredError(status_code=500, type="api_error", message="no")
    await rig.submit(team)
    cancelled = await rig.submit(team)
    await rig.service.cancel(None, cancelled.id, team)
    assert await rig.spend(team) == (0, micro(PRICE))  # the cancel released its own
    await rig.run_all()
    assert await rig.spend(team) == (0, 0)


async def test_a_submit_past_the_budget_is_402_naming_the_period_and_holds_nothing(
    rig: Rig,
) -> None:
    team = caller("team", budget_usd=3 * PRICE, budget_period=Period.DAY)
    for _ in range(3):
        await rig.submit(team)
    with pytest.raises(BudgetExceeded) as refused:
        await rig.submit(team)
    assert refused.value.http_status == 402 and refused.value.code == ErrorCode.BUDGET_EXCEEDED
    message = refused.value.message
    assert "$0.03 per day" in message and "$0.03 reserved" in message
    assert "resets at 2027-01-16T00:00:00.000Z" in message
    assert await rig.spend(team) == (0, micro(3 * PRICE))  # the refused one holds nothing
    page = await rig.service.list(team, status=None, kind=None, limit=10, page_token="")
    assert len(page.jobs) == 3
    await rig.clock.advance(24 * 3600)  # the next day starts over
    await rig.submit(team)


async def test_a_total_budget_never_resets(rig: Rig) -> None:
    team = caller("team", budget_usd=PRICE, budget_period=Period.TOTAL)
    await rig.submit(team)
    with pytest.raises(BudgetExceeded, match=r"in total .* never resets"):
        await rig.submit(team)


async def test_a_key_with_a_budget_may_name_priced_models_only(rig: Rig) -> None:
    team = caller("team", budget_usd=1.0)
    with pytest.raises(Forbidden) as primary:
        await rig.submit(team, req("mock/m"))
    assert (primary.value.code, primary.value.param) == (ErrorCode.MODEL_NOT_PRICED, "model")
    with pytest.raises(Forbidden) as fallback:
        await rig.submit(team, req("mock/priced-a", "mock/m"))
    assert fallback.value.param == "fallbacks"
    free = caller("free")  # no budget: any model; spend tracked where it is priced
    assert (await rig.submit(free, req("mock/m"))).budget is None
    assert (await rig.submit(free)).budget is not None
    assert (await rig.submit(ANONYMOUS)).budget is None  # nobody to charge


async def test_the_estimate_is_the_dearest_of_the_model_and_its_fallbacks(rig: Rig) -> None:
    team = caller("team", budget_usd=1.0)
    job = await rig.submit(team, req("mock/priced-a", "mock/dear", n=2))
    assert job.budget is not None and job.budget.reserved_micro == micro(2 * DEAR)


async def test_a_key_without_a_budget_is_tracked_and_never_refused(rig: Rig) -> None:
    free = caller("free")
    for _ in range(5):
        await rig.submit(free)
    await rig.run_all()
    assert await rig.spend(free) == (micro(5 * COST), 0)


async def test_a_job_without_a_price_by_its_end_is_charged_its_estimate(rig: Rig) -> None:
    team = caller("team", budget_usd=1.0)
    rig.runner.cost_usd = None  # the price table changed between submit and end
    await rig.submit(team)
    await rig.run_all()
    assert await rig.spend(team) == (micro(PRICE), 0)


async def test_settling_twice_counts_once_and_a_retried_reserve_counts_once(rig: Rig) -> None:
    budgets = rig.backend.budgets
    team = KeyPolicy(id="team", budget_usd=1.0)
    first = await budgets.reserve(team, "job-1", micro(PRICE))
    again = await budgets.reserve(team, "job-1", micro(PRICE))  # an idempotent retry
    assert first == again
    assert (await budgets.usage(team)).used == micro(PRICE)
    await budgets.settle(first, "job-1", micro(COST))
    await budgets.settle(first, "job-1", micro(COST))
    spend = await budgets.usage(team)
    assert (spend.used, spend.reserved) == (micro(COST), 0)


class FailingSettle:
    """The budgets, whose first `failures` settlements fail as a store outage would."""

    def __init__(self, inner: Any, failures: int) -> None:
        self._inner = inner
        self.failures = failures

    async def reserve(self, *args: Any) -> BudgetHold:
        return await self._inner.reserve(*args)  # type: ignore[no-any-return]

    async def settle(self, *args: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("budgets down")
        await self._inner.settle(*args)

    async def usage(self, *args: Any) -> Any:
        return await self._inner.usage(*args)


async def test_a_job_that_ended_without_settling_is_settled_by_its_next_delivery(
    rig: Rig,
) -> None:
    team = caller("team", budget_usd=1.0, budget_period=Period.TOTAL)
    job = await rig.submit(team)
    broken = dataclasses.replace(rig.backend, budgets=FailingSettle(rig.backend.budgets, 1))
    await rig.run_all(broken)  # the terminal write wins, the settlement fails: nak'd
    assert (await rig.service.get(None, job.id, team)).status is Status.COMPLETED
    assert await rig.counted("team") == (0, micro(PRICE))
    assert await rig.backend.queue.contains(job.id)  # kept for its debts
    await rig.clock.advance(5)
    await rig.run_all(broken)  # the redelivery finds it terminal and settles it
    assert await rig.counted("team") == (micro(COST), 0)
    assert not await rig.backend.queue.contains(job.id)


async def test_a_hold_whose_submit_died_is_released_by_a_later_refused_submit(rig: Rig) -> None:
    team = caller("team", budget_usd=2 * PRICE)
    assert team.policy is not None
    await rig.backend.budgets.reserve(team.policy, "died-before-recording", micro(2 * PRICE))
    with pytest.raises(BudgetExceeded):  # too young to be judged dead
        await rig.submit(team)
    await rig.clock.advance(max(HOLD_GRACE_S, SWEEP_EVERY_S) + 1)
    await rig.submit(team)  # the sweep released it first
    assert await rig.spend(team) == (0, micro(PRICE))


async def half_settled(rig: Rig, team: Caller, *, counted: bool) -> Job:
    """A completed job whose settler died after marking its hold `settling` (and, with
    `counted`, after applying the increments too)."""
    job = await rig.submit(team)
    assert job.budget is not None and team.policy is not None
    budgets = rig.backend.budgets
    subject = hold_subject("team", job.id)
    holds = budgets._holds  # type: ignore[attr-defined]
    data, seq = await holds.last(subject)
    state = HoldState.model_validate_json(data).model_copy(
        update={"settling": True, "cost": micro(COST), "settling_at": rig.clock.time()}
    )
    await holds.put(subject, state.dumps(), ttl_s=constants.HOLD_TTL_S, expected=seq)
    if counted:
        counters = budgets._counters  # type: ignore[attr-defined]
        used = spend_subject("team", state.period, "used")
        reserved = spend_subject("team", state.period, "reserved")
        await counters.incr(used, micro(COST - PRICE), msg_id=state.msg_id(job.id, "s"))
        await counters.incr(reserved, -micro(PRICE), msg_id=state.msg_id(job.id, "sr"))
    return job


@pytest.mark.parametrize("counted", [False, True])
async def test_a_settlement_that_died_midway_is_completed_once(rig: Rig, counted: bool) -> None:
    team = caller("team", budget_usd=1.0, budget_period=Period.TOTAL)
    await half_settled(rig, team, counted=counted)
    before = (micro(COST), 0) if counted else (0, micro(PRICE))
    assert await rig.counted("team") == before
    assert await rig.spend(team) == (micro(COST), 0)  # the usage read's sweep completed it
    await rig.clock.advance(SWEEP_EVERY_S + 1)
    assert await rig.spend(team) == (micro(COST), 0)


async def test_past_the_duplicate_window_a_late_repair_never_refunds_twice(rig: Rig) -> None:
    team = caller("team", budget_usd=1.0)
    await half_settled(rig, team, counted=True)
    await rig.clock.advance(constants.SPEND_DUPLICATE_WINDOW_S + 1)
    spend = await rig.service.usage(team)
    # the refund (cost < estimate) was applied once; repeating it could under-count
    assert spend.spend.used == micro(COST)


async def test_a_cost_is_settled_in_the_window_its_reservation_was_made_in() -> None:
    rig = rig_at(DAY_START - 10)  # ten seconds before midnight
    team = caller("team", budget_usd=1.0, budget_period=Period.DAY)
    await rig.submit(team)
    await rig.clock.advance(20)
    await rig.run_all()
    assert await rig.spend(team) == (0, 0)  # the new day is untouched
    assert await rig.counted("team", "d20270115") == (micro(COST), 0)


async def test_usage_needs_a_configured_virtual_key(rig: Rig) -> None:
    with pytest.raises(Unauthenticated):
        await rig.service.usage(ANONYMOUS)
    report = await rig.service.usage(caller("team", budget_usd=2.5, max_queued_jobs=7))
    assert (report.policy.id, report.queued_jobs, report.spend.used) == ("team", 0, 0)


async def test_a_key_at_max_queued_jobs_gets_429_for_itself_only(rig: Rig) -> None:
    bounded = caller("bounded", max_queued_jobs=2)
    await rig.submit(bounded, req("mock/m"))
    await rig.submit(bounded, req("mock/m"))
    with pytest.raises(QueueFull) as full:
        await rig.submit(bounded, req("mock/m"))
    assert full.value.code == ErrorCode.QUEUE_FULL and full.value.retry_after_s
    await rig.submit(caller("other"), req("mock/m"))  # another key is not affected
    await rig.submit(ANONYMOUS, req("mock/m"))
    taken = await rig.backend.work.fetch(3, 0)  # workers take the oldest of each lane
    assert len(taken) == 3
    assert (await rig.service.usage(bounded)).queued_jobs == 1
    await rig.submit(bounded, req("mock/m"))
