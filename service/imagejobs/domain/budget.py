"""Money and budget periods, as plain values. Pure: no I/O.

Amounts are kept as whole **micro-dollars** (1 USD = 1,000,000 µUSD): the store's counters
are integers, and sums of integers are exact. `usd(micro)` turns one back into dollars for
display (`cost_usd`, the usage report); `micro(usd)` rounds a dollar amount to the nearest
micro-dollar.

A budget period (`budget_period` of a virtual key) is a UTC calendar window: the current
hour, day, ISO week (from Monday 00:00), month, or `total` (one window that never ends).
A reservation belongs to the window it was made in, and its job's cost is settled there,
even when the job ends in the next one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict

MICRO_PER_USD = 1_000_000


def micro(usd: float) -> int:
    """Dollars as whole micro-dollars, rounded to the nearest."""
    return round(usd * MICRO_PER_USD)


def usd(micro_usd: int) -> float:
    """Whole micro-dollars as dollars (exact to the sixth decimal)."""
    return round(micro_usd / MICRO_PER_USD, 6)


def dollars(micro_usd: int) -> str:
    """`$1.234567` trimmed to cents where it can be (`$10.00`, `$0.0425`)."""
    text = f"{micro_usd / MICRO_PER_USD:.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


class Period(enum.StrEnum):
    """`budget_period`: the window a budget is spent in before it starts over."""

    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


@dataclass(frozen=True)
class Window:
    """One budget window: its id (a subject token: `d20261201`, `total`), and its start
    and end in epoch seconds (None for `total`, which has neither)."""

    id: str
    start: float | None
    end: float | None


def window(period: Period, now: float) -> Window:
    """The window of `period` that holds `now` (epoch seconds), in UTC."""
    if period is Period.TOTAL:
        return Window("total", None, None)
    at = datetime.fromtimestamp(now, UTC)
    if period is Period.HOUR:
        start = at.replace(minute=0, second=0, microsecond=0)
        end, tag = start + timedelta(hours=1), start.strftime("h%Y%m%d%H")
    elif period is Period.DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        end, tag = start + timedelta(days=1), start.strftime("d%Y%m%d")
    elif period is Period.WEEK:
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        start = day - timedelta(days=day.weekday())
        end, tag = start + timedelta(days=7), start.strftime("w%Y%m%d")
    else:
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        tag = start.strftime("m%Y%m")
    return Window(tag, start.timestamp(), end.timestamp())


class BudgetHold(BaseModel):
    """What a job reserved against its key's spend at submit, kept in the job record: the
    key, the window (`Window.id`) and the amount (µUSD). Its end settles it there."""

    model_config = ConfigDict(frozen=True)
    key: str
    period: str
    reserved_micro: int


@dataclass(frozen=True)
class Spend:
    """A key's spend in one window (µUSD): `used` counts what is spent and what is
    reserved for jobs not yet ended; `reserved` is the latter part."""

    window: Window
    used: int
    reserved: int

    @property
    def spent(self) -> int:
        return max(self.used - self.reserved, 0)

    def remaining(self, budget_micro: int) -> int:
        return max(budget_micro - self.used, 0)
