"""Prices: what a finished job cost, and what a submit should reserve against a budget.
Pure (no I/O but reading the package's own data file once).

A deployment's `[[pricing]]` entries come first, then the shipped table
(`pricing.toml` beside this module, dated `read_on`, a `source` per entry); the first
entry whose `model` pattern (an fnmatch glob over `provider/model`) matches prices the
model. A model no entry matches has no price: its jobs carry no `cost_usd` (absent, not
0), and a virtual key with a budget may not submit it (403 `model_not_priced`).

An entry prices by tokens, by image, or both:

- token prices (`input_token_usd_per_1m`, `output_token_usd_per_1m`, and optionally
  `input_image_token_usd_per_1m` / `output_image_token_usd_per_1m` for the image part of
  the counts, as OpenAI and Google bill them) apply to the usage the provider reported;
- `per_image_usd` (refined by `by_quality`, then `by_size`, which also matches a
  `resolution` such as `1K`) times the images returned: the cost of an image-priced
  model, and the estimate a submit reserves for a token-priced one (its usage is known
  only at the end), or its cost when the provider reported no usage;

A provider that reports what it billed (xAI's `usage.cost_in_usd_ticks`, 10^10 ticks per
dollar; the mock's `mock_cost_usd_ticks`) is taken at its word, for any model, priced or
not: that figure is the job's cost, and no price is applied on top of it (a bill is
exact; a list price is an estimate). The entry of such a model still gives the estimate
a submit reserves.

Amounts are whole micro-dollars (domain/budget.py): a token count times a price per
million tokens in dollars is already micro-dollars.
"""

from __future__ import annotations

import fnmatch
import functools
import tomllib
from collections.abc import Iterable, Mapping
from datetime import date
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imagejobs.domain.budget import micro
from imagejobs.domain.errors import ConfigError
from imagejobs.domain.models import ModelRef

DATA_FILE = "pricing.toml"
TICKS_PER_MICRO_USD = 10_000  # xAI: 10^10 ticks per dollar

Rate = float | None


class PriceRule(BaseModel):
    """One `[[pricing]]` entry (the shipped table's entries have the same keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field(min_length=1)  # fnmatch pattern over `provider/model`
    input_token_usd_per_1m: Rate = Field(default=None, ge=0)
    output_token_usd_per_1m: Rate = Field(default=None, ge=0)
    input_image_token_usd_per_1m: Rate = Field(default=None, ge=0)
    output_image_token_usd_per_1m: Rate = Field(default=None, ge=0)
    per_image_usd: Rate = Field(default=None, ge=0)
    by_size: dict[str, float] = Field(default_factory=dict)  # `WxH` or a resolution (`1K`)
    by_quality: dict[str, float] = Field(default_factory=dict)
    source: str = ""  # where the list price was read
    note: str = ""

    @model_validator(mode="after")
    def _priced(self) -> PriceRule:
        if not self.token_priced and self.per_image_usd is None:
            raise ValueError(f"pricing for {self.model}: give token prices or per_image_usd")
        if any(v < 0 for v in (*self.by_size.values(), *self.by_quality.values())):
            raise ValueError(f"pricing for {self.model}: prices cannot be negative")
        return self

    @property
    def token_priced(self) -> bool:
        return self.input_token_usd_per_1m is not None or self.output_token_usd_per_1m is not None

    def image_price(self, sizes: Iterable[str], qualities: Iterable[str]) -> float | None:
        """One image's price: the first quality, then the first size (or resolution),
        with an entry of its own, else `per_image_usd`."""
        for table, keys in ((self.by_quality, qualities), (self.by_size, sizes)):
            for key in keys:
                if key in table:
                    return table[key]
        return self.per_image_usd

    def token_cost(self, usage: Mapping[str, Any]) -> int | None:
        """The cost of the counts in `usage` (µUSD); None when it holds none."""
        tokens_in, tokens_out = _count(usage, "input_tokens"), _count(usage, "output_tokens")
        if tokens_in is None and tokens_out is None:
            return None
        image_in = _detail(usage, "input_tokens_details")
        image_out = _detail(usage, "output_tokens_details")
        text_in, text_out = (tokens_in or 0) - image_in, (tokens_out or 0) - image_out
        rate_in, rate_out = self.input_token_usd_per_1m or 0.0, self.output_token_usd_per_1m or 0.0
        image_rate_in = _or(self.input_image_token_usd_per_1m, rate_in)
        image_rate_out = _or(self.output_image_token_usd_per_1m, rate_out)
        total = (
            text_in * rate_in
            + image_in * image_rate_in
            + text_out * rate_out
            + image_out * image_rate_out
        )
        return round(total)  # tokens x USD per million tokens = µUSD

    def cost(
        self, usage: Mapping[str, Any] | None, images: int, sizes: list[str], qualities: list[str]
    ) -> int | None:
        """What a job that returned `images` images with this `usage` cost (µUSD)."""
        usage = usage or {}
        if self.token_priced:
            by_tokens = self.token_cost(usage)
            if by_tokens is not None:
                return by_tokens
        price = self.image_price(sizes, qualities)
        return None if price is None else micro(price * images)


def reported_cost(usage: Mapping[str, Any] | None) -> int | None:
    """What the provider said it billed for the job (µUSD), from `cost_in_usd_ticks`; None
    when it said nothing (or something negative)."""
    ticks = _count(usage or {}, "cost_in_usd_ticks")
    return None if ticks is None or ticks < 0 else round(ticks / TICKS_PER_MICRO_USD)


def _or(rate: Rate, default: float) -> float:
    return default if rate is None else rate


def _count(usage: Mapping[str, Any], name: str) -> int | None:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _detail(usage: Mapping[str, Any], name: str) -> int:
    details = usage.get(name)
    found = _count(details, "image_tokens") if isinstance(details, Mapping) else None
    return found or 0


def _texts(*values: object) -> list[str]:
    """The given values that are non-empty text, in order (a job's size or quality as
    the provider reported it, then as requested)."""
    return [str(v) for v in values if isinstance(v, str | int) and str(v)]


class PriceTable:
    """Price rules in match order: a deployment's first, then the shipped ones."""

    def __init__(self, rules: Iterable[PriceRule], read_on: date | None = None) -> None:
        self.rules = tuple(rules)
        self.read_on = read_on

    @classmethod
    @functools.cache
    def builtin(cls) -> PriceTable:
        """The shipped table (read once)."""
        text = resources.files(__package__).joinpath(DATA_FILE).read_text()
        return cls.parse(tomllib.loads(text), DATA_FILE)

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str) -> PriceTable:
        """A table from TOML data (`read_on`, `[[pricing]]`); ConfigError naming `where`."""
        try:
            rules = [PriceRule.model_validate(r) for r in data.get("pricing", [])]
        except ValidationError as exc:
            raise ConfigError(f"{where}: {exc.errors()[0]['msg']}") from exc
        read_on = data.get("read_on")
        return cls(rules, read_on if isinstance(read_on, date) else None)

    def with_overrides(self, rules: Iterable[PriceRule]) -> PriceTable:
        """This table with `rules` matched before its own."""
        return PriceTable((*rules, *self.rules), self.read_on)

    def rule(self, model: ModelRef) -> PriceRule | None:
        """The first rule whose pattern matches `provider/model`, if any."""
        text = str(model)
        return next((r for r in self.rules if fnmatch.fnmatchcase(text, r.model)), None)

    def cost(
        self,
        model: ModelRef,
        usage: Mapping[str, Any] | None,
        images: int,
        fields: Mapping[str, Any],
        params: Mapping[str, Any],
    ) -> int | None:
        """A finished job's cost (µUSD) from the model that served it, the provider's
        usage and echoed `fields` (size, quality), and the request's `params`; None when
        the model has no price. What the provider reported billing wins over any price."""
        billed = reported_cost(usage)
        if billed is not None:
            return billed
        rule = self.rule(model)
        if rule is None:
            return None
        sizes = _texts(fields.get("size"), params.get("size"), params.get("resolution"))
        qualities = _texts(fields.get("quality"), params.get("quality"))
        return rule.cost(usage, images, sizes, qualities)

    def estimate(self, model: ModelRef, params: Mapping[str, Any]) -> int | None:
        """What a submit of `model` with these `params` should reserve (µUSD): `n` times
        one image's price at the requested size and quality; None when it has none."""
        rule = self.rule(model)
        if rule is None:
            return None
        sizes = _texts(params.get("size"), params.get("resolution"))
        price = rule.image_price(sizes, _texts(params.get("quality")))
        if price is None:
            return None
        n = params.get("n")
        return micro(price * (n if isinstance(n, int) and n > 0 else 1))
