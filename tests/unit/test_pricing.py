"""Prices and budget periods, pure: what a job costs by tokens, by image (with size,
quality and resolution refinements) or as the provider reported it; which rule wins; what
a submit reserves; the shipped table; the settings that must fail at start; and the
UTC windows budgets are spent in."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from imagejobs.config import Settings
from imagejobs.domain.budget import Period, dollars, micro, usd, window
from imagejobs.domain.errors import ConfigError
from imagejobs.domain.models import ModelRef
from imagejobs.providers.catalogue import Catalogue
from imagejobs.providers.pricing import PriceRule, PriceTable
from pydantic import ValidationError

KEY = "0" * 64
TOKENS = PriceRule(
    model="openai/*",
    input_token_usd_per_1m=5.0,
    input_image_token_usd_per_1m=8.0,
    output_token_usd_per_1m=30.0,
    per_image_usd=0.2,
    by_quality={"low": 0.006},
)
IMAGES = PriceRule(
    model="bfl/flux-pro-1.1",
    per_image_usd=0.04,
    by_size={"1024x1024": 0.05, "2K": 0.08},
    by_quality={"low": 0.011, "high": 0.167},
)


def ref(text: str) -> ModelRef:
    return ModelRef.parse(text)


def test_a_token_priced_job_costs_its_counts_at_each_rate() -> None:
    usage = {
        "input_tokens": 1050,
        "output_tokens": 4160,
        "input_tokens_details": {"text_tokens": 50, "image_tokens": 1000},
    }
    # 50 text x $5 + 1000 image x $8 + 4160 x $30, per million tokens
    assert TOKENS.cost(usage, 1, [], []) == 50 * 5 + 1000 * 8 + 4160 * 30
    # without details, every input token is at the text rate
    assert TOKENS.cost({"input_tokens": 10, "output_tokens": 20}, 1, [], []) == 10 * 5 + 20 * 30


def test_a_token_priced_job_without_usage_costs_its_per_image_price() -> None:
    assert TOKENS.cost(None, 3, [], ["low"]) == micro(3 * 0.006)
    assert TOKENS.cost({}, 2, [], []) == micro(0.4)


def test_an_image_priced_job_takes_quality_then_size_then_the_base_price() -> None:
    assert IMAGES.cost(None, 2, ["1024x1024"], ["high"]) == micro(2 * 0.167)
    assert IMAGES.cost(None, 2, ["1024x1024"], ["auto"]) == micro(2 * 0.05)
    assert IMAGES.cost(None, 1, ["512x512", "2K"], []) == micro(0.08)  # the resolution
    assert IMAGES.cost(None, 4, ["640x480"], []) == micro(0.16)


def test_a_reported_cost_wins_when_the_provider_sent_one() -> None:
    table = PriceTable([PriceRule(model="xai/*", per_image_usd=0.08)])
    billed = {"cost_in_usd_ticks": 200_000_000}
    assert table.cost(ref("xai/grok-imagine-image"), billed, 1, {}, {}) == micro(0.02)
    assert table.cost(ref("xai/grok-imagine-image"), {}, 2, {}, {}) == micro(0.16)  # list price
    # a bill prices a model the table does not know; without one such a model has none
    assert table.cost(ref("mock/m"), billed, 1, {}, {}) == micro(0.02)
    assert table.cost(ref("mock/m"), {"cost_in_usd_ticks": -5}, 1, {}, {}) is None


def test_the_first_matching_rule_wins_and_the_config_comes_first() -> None:
    shipped = PriceTable([PriceRule(model="bfl/*", per_image_usd=0.5)])
    table = shipped.with_overrides([IMAGES])
    assert table.cost(ref("bfl/flux-pro-1.1"), None, 1, {}, {}) == micro(0.04)
    assert table.cost(ref("bfl/flux-2-pro"), None, 1, {}, {}) == micro(0.5)
    assert table.cost(ref("mock/m"), None, 1, {}, {}) is None  # no price: none, not 0


def test_the_size_and_quality_reported_win_over_those_requested() -> None:
    table = PriceTable([IMAGES])
    fields: dict[str, Any] = {"size": "1024x1024", "quality": "low"}
    params: dict[str, Any] = {"size": "2048x2048", "quality": "high"}
    assert table.cost(ref("bfl/flux-pro-1.1"), None, 1, fields, params) == micro(0.011)
    assert table.cost(ref("bfl/flux-pro-1.1"), None, 1, {}, params) == micro(0.167)


def test_the_estimate_is_n_images_at_the_requested_size_and_quality() -> None:
    table = PriceTable([IMAGES, TOKENS])
    assert table.estimate(ref("bfl/flux-pro-1.1"), {"n": 3, "quality": "high"}) == micro(0.501)
    assert table.estimate(ref("bfl/flux-pro-1.1"), {}) == micro(0.04)
    assert table.estimate(ref("openai/gpt-image-2"), {"n": 2}) == micro(0.4)
    assert table.estimate(ref("mock/m"), {"n": 2}) is None
    no_estimate = PriceTable([PriceRule(model="x/*", output_token_usd_per_1m=1.0)])
    assert no_estimate.estimate(ref("x/y"), {}) is None


def test_a_rule_without_any_price_or_with_a_negative_one_is_refused() -> None:
    with pytest.raises(ValidationError, match="give token prices or per_image_usd"):
        PriceRule(model="a/*", by_size={"1K": 1.0})
    with pytest.raises(ValidationError):
        PriceRule(model="a/*", per_image_usd=-1)
    with pytest.raises(ValidationError, match="cannot be negative"):
        PriceRule(model="a/*", per_image_usd=1, by_quality={"low": -0.1})


def test_a_budget_with_a_token_priced_rule_without_an_estimate_fails_at_start() -> None:
    rule = {"model": "mock/*", "output_token_usd_per_1m": 1.0}
    key = {"key_sha256": KEY, "budget_usd": 5.0}
    with pytest.raises(ValidationError, match="a budget reserves per_image_usd"):
        Settings.model_validate({"pricing": [rule], "virtual_keys": {"a": key}})
    # no budget: fine
    Settings.model_validate({"pricing": [rule], "virtual_keys": {"a": {"key_sha256": KEY}}})


def test_max_queued_jobs_needs_fair_share() -> None:
    key = {"key_sha256": KEY, "max_queued_jobs": 5}
    with pytest.raises(ValidationError, match="max_queued_jobs needs fair_share"):
        Settings.model_validate({"fair_share": False, "virtual_keys": {"a": key}})


def test_the_shipped_table_is_dated_sourced_and_prices_the_current_models() -> None:
    table = PriceTable.builtin()
    assert table.read_on == date(2026, 12, 1)
    assert all(rule.source for rule in table.rules)
    for model in ("openai/gpt-image-2.6-sunburst", "gemini/gemini-3.1-flash-image"):
        assert table.estimate(ref(model), {}) is not None, model
        family = Catalogue.builtin().family(ref(model))
        assert family is not None and family.status.value == "current", model
    assert table.estimate(ref("mock/image-1"), {}) is None  # the offline mock is free


def test_the_documented_price_table_is_the_shipped_one() -> None:
    """docs/governance.md prints the shipped table: its date, each pattern and its
    per-image price, in order (a price changed in one place only fails here)."""
    text = (Path(__file__).parents[2] / "docs" / "governance.md").read_text()
    table = PriceTable.builtin()
    assert table.read_on is not None and f"read {table.read_on.isoformat()}" in text
    rows = re.findall(r"^\| `([^`]+)` \|[^|]*\| \$([\d.]+)", text, flags=re.MULTILINE)
    shipped = [(r.model, r.per_image_usd) for r in table.rules]
    assert [(model, float(price)) for model, price in rows] == shipped


def test_a_broken_shipped_table_fails_with_its_name() -> None:
    with pytest.raises(ConfigError, match=r"pricing\.toml"):
        PriceTable.parse({"pricing": [{"model": "a/*"}]}, "pricing.toml")


def test_amounts_round_to_micro_dollars_and_print_as_dollars() -> None:
    assert micro(0.1) + micro(0.2) == micro(0.3)  # exact, unlike floats
    assert usd(125_050) == 0.12505
    assert dollars(10_000_000) == "$10.00"
    assert dollars(42_500) == "$0.0425"


def _at(*parts: int) -> float:
    """Epoch seconds of a UTC time given as (year, month, day[, hour, minute, second])."""
    year, month, day, hour, minute, second = (*parts, 0, 0, 0)[:6]
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "wid", "start", "end"),
    [
        (Period.HOUR, "h2026120114", (2026, 12, 1, 14), (2026, 12, 1, 15)),
        (Period.DAY, "d20261201", (2026, 12, 1), (2026, 12, 2)),
        (Period.WEEK, "w20261130", (2026, 11, 30), (2026, 12, 7)),  # Monday to Monday
        (Period.MONTH, "m202612", (2026, 12, 1), (2027, 1, 1)),
    ],
)
def test_a_budget_window_is_the_utc_calendar_period(
    period: Period, wid: str, start: tuple[int, ...], end: tuple[int, ...]
) -> None:
    now = _at(2026, 12, 1, 14, 30, 5)
    found = window(period, now)
    assert (found.id, found.start, found.end) == (wid, _at(*start), _at(*end))
    assert window(period, _at(*end)).id != wid  # the next one starts at its end


def test_a_total_budget_has_one_window_without_bounds() -> None:
    found = window(Period.TOTAL, 1.0)
    assert (found.id, found.start, found.end) == ("total", None, None)
    assert window(Period.TOTAL, _at(2030, 1, 1)).id == "total"
