"""Per-key spend per budget period, shared by every API process and worker (`Budgets`).

State (on JetStream; the in-memory twin uses the same class on its own primitives):

- two counters per key and period window in the SPEND stream (atomic server-side
  increments, µUSD): `imagejobs.spend.<key>.<window>.used` (spent + reserved) and
  `.reserved` (reserved for jobs not ended yet, for the usage report);
- one hold per reserving job in LIMITS, `imagejobs.limit.hold.<key>.<job_id>`, saying
  which window, how much, and whether its settlement has begun (with the cost).

Exact under concurrency: a submit adds its estimate to `used` with one atomic increment
and reads the sum back in the same reply; it is admitted only if that sum is within the
budget, else it takes its increment back and is refused (402). However many API processes
race, no two admitted reservations can together pass the budget; a submit racing with a
refused one may be refused too (the refusal's increment is not yet taken back), never
wrongly admitted. A job's real cost can exceed its estimate (token-priced models): the
excess is counted when it settles, and the next submits are refused.

Crash-safe: every increment carries a message id derived from its hold (`<job>.<hold
created ms>.r`, `.s`, ...), so repeating it within the stream's duplicate window counts
it once. A settlement first marks the hold `settling` with the cost (compare-and-set: one
writer decides), then applies the increments, then deletes the hold; whoever finds a
hold `settling` completes it with the same ids. Ends that died before settling are
found again: the worker that gets the job's message next (its redelivery; worker/
finish.py), and a sweep of the key's holds (at a refused submit and at a usage read, at
most every `SWEEP_EVERY_S` per key and process) settles each hold whose job is terminal,
and releases each whose job record never appeared (its submit died). A repeat that comes
after the duplicate window is applied only where that can over-count, never under-count:
a late repair may leave a key charged its estimate, but never lets it overspend.
"""

from __future__ import annotations

import contextlib

from pydantic import BaseModel, ConfigDict

from imagejobs.domain import constants
from imagejobs.domain.budget import BudgetHold, Spend, Window, dollars, window
from imagejobs.domain.errors import BudgetExceeded, RevisionConflict, StoreUnavailable
from imagejobs.domain.jobs import rfc3339
from imagejobs.domain.keys import KeyPolicy
from imagejobs.store.clock import Clock
from imagejobs.store.protocols import Counters, JobStore, ListedSubjects

HOLD_GRACE_S = 300.0  # a hold whose job record has not appeared this long: its submit died
SWEEP_EVERY_S = 30.0  # per key and process
REDO_MARGIN_S = 60.0  # a repeat counts once if this far inside the duplicate window
_MARKER_TTL_S = 60  # a settled hold's delete marker
_SETTLE_TRIES = 5


def spend_subject(key_id: str, period: str, part: str) -> str:
    """A key's `used` or `reserved` counter of one window."""
    return f"{constants.SPEND_SUBJECT_PREFIX}.{key_id}.{period}.{part}"


def hold_subject(key_id: str, job_id: str) -> str:
    return f"{constants.LIMIT_SUBJECT_PREFIX}.hold.{key_id}.{job_id}"


class HoldState(BaseModel):
    """A hold as stored: its window, the reserved µUSD, when it was made (ms, part of
    every increment's message id) and, once its settlement began, the cost and when."""

    model_config = ConfigDict(frozen=True)
    period: str
    reserved: int
    created_ms: int
    settling: bool = False
    cost: int = 0
    settling_at: float = 0.0

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()

    def msg_id(self, job_id: str, step: str) -> str:
        return f"{job_id}.{self.created_ms}.{step}"


class KeyBudgets:
    """`Budgets` on `ListedSubjects` (the holds) and `Counters` (the spend counters, with
    message-id deduplication); `records` tells which held jobs have ended."""

    def __init__(
        self, holds: ListedSubjects, counters: Counters, records: JobStore, *, clock: Clock
    ) -> None:
        self._holds = holds
        self._counters = counters
        self._records = records
        self._clock = clock
        self._swept: dict[str, float] = {}  # key -> when this process last swept it

    # --- reserve --------------------------------------------------------------------

    async def reserve(self, policy: KeyPolicy, job_id: str, estimate_micro: int) -> BudgetHold:
        """Hold `estimate_micro` for the job in the key's current window; BudgetExceeded
        when the key has a budget and this would pass it (the hold is then released)."""
        now = self._clock.time()
        current = window(policy.budget_period, now)
        state = await self._hold(policy.id, job_id, current, estimate_micro, now)
        hold = BudgetHold(key=policy.id, period=state.period, reserved_micro=state.reserved)
        used = await self._add(policy.id, job_id, state)
        budget = policy.budget_micro
        if not budget or used <= budget:
            return hold
        if await self._sweep(policy.id):  # stale holds may have kept the budget full
            used = await self._counters.value(spend_subject(policy.id, state.period, "used"))
        if used <= budget:
            return hold
        await self.settle(hold, job_id, 0)
        spend = await self._spend(policy.id, current)
        raise BudgetExceeded(_refusal(policy, current, spend, estimate_micro))

    async def _hold(
        self, key_id: str, job_id: str, current: Window, estimate: int, now: float
    ) -> HoldState:
        """The job's hold: made now, or the one a first try of the same submit made."""
        subject = hold_subject(key_id, job_id)
        for _ in range(_SETTLE_TRIES):
            data, seq = await self._holds.last(subject)
            if data:
                found = HoldState.model_validate_json(data)
                if not found.settling:  # an idempotent retry of the same submit: adopt it
                    return found
                await self._complete(key_id, job_id, found, seq)
                continue
            state = HoldState(period=current.id, reserved=estimate, created_ms=int(now * 1000))
            with contextlib.suppress(RevisionConflict):  # made meanwhile: adopt it next turn
                # over nothing, or over the delete marker of a settled earlier try
                await self._holds.put(
                    subject, state.dumps(), ttl_s=constants.HOLD_TTL_S, expected=seq
                )
                return state
        raise StoreUnavailable(f"the budget hold of job {job_id} kept changing")

    async def _add(self, key_id: str, job_id: str, state: HoldState) -> int:
        """Count the hold's reservation (once, by its message ids); `used` after it."""
        used = await self._counters.incr(
            spend_subject(key_id, state.period, "used"),
            state.reserved,
            msg_id=state.msg_id(job_id, "r"),
        )
        await self._counters.incr(
            spend_subject(key_id, state.period, "reserved"),
            state.reserved,
            msg_id=state.msg_id(job_id, "rr"),
        )
        return used

    # --- settle ---------------------------------------------------------------------

    async def settle(self, hold: BudgetHold, job_id: str, cost_micro: int) -> None:
        """Replace the job's reservation by `cost_micro` (0 releases it), once."""
        subject = hold_subject(hold.key, job_id)
        for _ in range(_SETTLE_TRIES):
            data, seq = await self._holds.last(subject)
            if not data:  # settled already, or never held
                return
            state = HoldState.model_validate_json(data)
            if not state.settling:
                settling = state.model_copy(
                    update={"settling": True, "cost": cost_micro, "settling_at": self._clock.time()}
                )
                try:
                    seq = await self._holds.put(
                        subject, settling.dumps(), ttl_s=constants.HOLD_TTL_S, expected=seq
                    )
                except RevisionConflict:
                    continue  # another writer moved it: decide on what it is now
                state = settling
            await self._complete(hold.key, job_id, state, seq)
            return
        raise StoreUnavailable(f"the budget hold of job {job_id} kept changing")

    async def _complete(self, key_id: str, job_id: str, state: HoldState, seq: int) -> None:
        """Apply a settling hold's increments (each once, by message id) and delete it."""
        within = (
            self._clock.time() - state.settling_at
            < constants.SPEND_DUPLICATE_WINDOW_S - REDO_MARGIN_S
        )
        delta = state.cost - state.reserved
        # past the duplicate window a repeat may count twice: repeat only what can only
        # over-count (a charge), never a refund
        if delta and (within or delta > 0):
            await self._counters.incr(
                spend_subject(key_id, state.period, "used"),
                delta,
                msg_id=state.msg_id(job_id, "s"),
            )
        if within:
            await self._counters.incr(
                spend_subject(key_id, state.period, "reserved"),
                -state.reserved,
                msg_id=state.msg_id(job_id, "sr"),
            )
        with contextlib.suppress(RevisionConflict):  # someone else completed it meanwhile
            await self._holds.delete(
                hold_subject(key_id, job_id), ttl_s=_MARKER_TTL_S, expected=seq
            )

    # --- reclaim ----------------------------------------------------------------------

    async def _sweep(self, key_id: str) -> bool:
        """Settle the key's holds whose job ended without settling (a crash), and release
        those whose job never got recorded. False when it was swept too recently."""
        now = self._clock.monotonic()
        if now - self._swept.get(key_id, -SWEEP_EVERY_S) < SWEEP_EVERY_S:
            return False
        self._swept[key_id] = now
        pattern = f"{constants.LIMIT_SUBJECT_PREFIX}.hold.{key_id}.*"
        for subject in await self._holds.subjects(pattern):
            await self._reclaim(key_id, subject.rsplit(".", 1)[-1])
        return True

    async def _reclaim(self, key_id: str, job_id: str) -> None:
        data, seq = await self._holds.last(hold_subject(key_id, job_id))
        if not data:
            return
        state = HoldState.model_validate_json(data)
        if state.settling:
            await self._complete(key_id, job_id, state, seq)
            return
        hold = BudgetHold(key=key_id, period=state.period, reserved_micro=state.reserved)
        found = await self._records.get(job_id)
        if found is not None:
            if found[0].status.terminal:
                await self.settle(hold, job_id, found[0].settled_cost())
            return
        if self._clock.time() - state.created_ms / 1000 > HOLD_GRACE_S:
            # its submit died: whether its reservation was counted is unknown, so count it
            # (once, within the window) before releasing it
            await self._add(key_id, job_id, state)
            await self.settle(hold, job_id, 0)

    # --- read -------------------------------------------------------------------------

    async def usage(self, policy: KeyPolicy) -> Spend:
        """The key's spend in its current window (stale holds reclaimed first)."""
        await self._sweep(policy.id)
        return await self._spend(policy.id, window(policy.budget_period, self._clock.time()))

    async def _spend(self, key_id: str, current: Window) -> Spend:
        used = await self._counters.value(spend_subject(key_id, current.id, "used"))
        reserved = await self._counters.value(spend_subject(key_id, current.id, "reserved"))
        return Spend(window=current, used=used, reserved=reserved)


def _refusal(policy: KeyPolicy, current: Window, spend: Spend, estimate: int) -> str:
    """The 402's message: the budget, its period, what is spent and held, when it resets."""
    if current.end is None:
        resets = "this total budget never resets"
    else:
        resets = f"it resets at {rfc3339(current.end)}"
    period = "in total" if current.end is None else f"per {policy.budget_period.value}"
    return (
        f"budget of {dollars(policy.budget_micro)} {period} for this virtual key would be "
        f"exceeded: {dollars(spend.spent)} spent, {dollars(spend.reserved)} reserved, this "
        f"request needs {dollars(estimate)}; {resets}"
    )
