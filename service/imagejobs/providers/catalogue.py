"""The model catalogue: per provider, the model families it serves, whether each is still
served, what replaces it, and what it supports. Pure (no I/O but reading the package's
own data file once).

The facts are in `catalogue.toml` beside this module, dated (`read_on`) and with a
`source` per family; a deployment extends or overrides them from its config file
(`[[catalogue.<provider>]]`, the same keys, see `Catalogue.with_overrides`).

A model (`provider/name`) belongs to the first family of its provider whose `pattern`
(an fnmatch glob over the name as the provider knows it, `imagen-*`, `nebius/*`) matches;
a model no family matches is unknown to the catalogue and allowed (vendors add models
faster than any catalogue). On a given day a family's status is:

- `current`: served;
- `deprecated`: still served, but each job carries a warning (and the API logs it once
  per model); from its `sunset` day on, a deprecated family counts as `retired`;
- `retired`: refused at submit (400 `model_retired`, the message naming `replacement`).

Who reads it: request validation (api/requests.py: the retired check and the warnings),
the model listing (`GET /v1/async/images/models`, gRPC `ListModels`), and the docs.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imagejobs.domain.errors import ConfigError
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef

DATA_FILE = "catalogue.toml"

OPERATIONS: Mapping[str, Kind] = {
    "generation": Kind.GENERATION,
    "edit": Kind.EDIT,
    "variation": Kind.VARIATION,
}
Operation = Literal["generation", "edit", "variation"]


class Status(enum.StrEnum):
    """A family's lifecycle status (see the module doc)."""

    CURRENT = "current"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


class Family(BaseModel):
    """One model family of one provider, as `[[providers.<name>]]` (or `[[catalogue.<name>]]`
    in a config file) states it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pattern: str = Field(min_length=1)
    status: Status
    models: tuple[str, ...] = ()  # known `provider/model` ids, for the listing
    sunset: date | None = None  # the vendor's shutdown day
    replacement: str = ""  # a `provider/model`; `*` = what the pattern's trailing `*` matched
    operations: tuple[Operation, ...] = ()
    n_per_call: Annotated[int, Field(ge=0)] = 0  # images per upstream call; 0 = not stated
    sizes: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ()
    reason: str = ""  # why, in a few words, for the caller's message
    source: str = ""  # where the facts were read
    note: str = ""  # anything else (disagreeing sources, caveats), for the listing and docs

    @field_validator("replacement")
    @classmethod
    def _replacement(cls, value: str) -> str:
        if value:
            ModelRef.parse(value)  # ValueError: not a provider/model string
        return value

    @property
    def kinds(self) -> frozenset[Kind]:
        """The operations as job kinds."""
        return frozenset(OPERATIONS[op] for op in self.operations)

    def matches(self, name: str) -> bool:
        """Whether model `name` (without the provider prefix) belongs to this family."""
        return fnmatch.fnmatchcase(name, self.pattern)

    def status_on(self, day: date) -> Status:
        """The status on `day`: a deprecated family is retired from its sunset on."""
        if self.status is Status.DEPRECATED and self.sunset is not None and day >= self.sunset:
            return Status.RETIRED
        return self.status

    def replacement_for(self, name: str) -> str:
        """The replacement of model `name`, its `*` filled with what the pattern's
        trailing `*` matched (`nebius/org/m` under `nebius/*` -> `org/m`)."""
        if "*" not in self.replacement or not self.pattern.endswith("*"):
            return self.replacement
        stem = self.pattern[:-1]
        rest = name[len(stem) :] if name.startswith(stem) and "*" not in stem else ""
        return self.replacement.replace("*", rest) if rest else self.replacement


@dataclass(frozen=True)
class Lifecycle:
    """What the catalogue says about one model on one day."""

    model: ModelRef
    status: Status | None  # None: no family matches (unknown to the catalogue)
    family: Family | None = None

    @property
    def retired(self) -> bool:
        return self.status is Status.RETIRED

    @property
    def deprecated(self) -> bool:
        return self.status is Status.DEPRECATED

    def message(self) -> str:
        """What a caller is told, e.g. `model X is retired (since D): why; use Y instead`."""
        family = self.family
        if family is None or self.status in (None, Status.CURRENT):
            return f"model {self.model} is current"
        day = family.sunset.isoformat() if family.sunset else ""
        if self.retired:
            text = f"model {self.model} is retired" + (f" (since {day})" if day else "")
        else:
            text = f"model {self.model} is deprecated" + (f" (retired on {day})" if day else "")
        if family.reason:
            text += f": {family.reason}"
        replacement = family.replacement_for(self.model.name)
        return f"{text}; use {replacement} instead" if replacement else text


class CatalogueFile(BaseModel):
    """The data file's shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    read_on: date
    providers: dict[str, tuple[Family, ...]]


@dataclass(frozen=True)
class Catalogue:
    """Every provider's families, in matching order, and the day their facts were read."""

    read_on: date
    families: Mapping[str, tuple[Family, ...]]

    @classmethod
    def parse(cls, text: str) -> Catalogue:
        """A catalogue from TOML text in `catalogue.toml`'s shape; ConfigError if invalid."""
        try:
            data = CatalogueFile.model_validate(tomllib.loads(text))
        except (tomllib.TOMLDecodeError, ValidationError) as exc:
            raise ConfigError(f"invalid model catalogue: {exc}") from exc
        return cls(read_on=data.read_on, families=data.providers)

    @classmethod
    def builtin(cls) -> Catalogue:
        """The catalogue shipped with the package (read once per process)."""
        return _builtin()

    def with_overrides(self, extra: Mapping[str, Iterable[Family]]) -> Catalogue:
        """This catalogue with a deployment's families: they are matched before the
        shipped ones, and one with the same pattern as a shipped family replaces it."""
        merged = dict(self.families)
        for provider, families in extra.items():
            own = tuple(families)
            patterns = {f.pattern for f in own}
            kept = tuple(f for f in self.families.get(provider, ()) if f.pattern not in patterns)
            merged[provider] = own + kept
        return Catalogue(read_on=self.read_on, families=merged)

    def of(self, provider: str) -> tuple[Family, ...]:
        """Provider `provider`'s families, in matching order (none when unknown)."""
        return self.families.get(provider, ())

    def family(self, model: ModelRef) -> Family | None:
        """The family `model` belongs to, or None."""
        return next((f for f in self.of(model.provider) if f.matches(model.name)), None)

    def lifecycle(self, model: ModelRef, day: date) -> Lifecycle:
        """What the catalogue says about `model` on `day`."""
        family = self.family(model)
        status = family.status_on(day) if family is not None else None
        return Lifecycle(model=model, status=status, family=family)


@functools.cache
def _builtin() -> Catalogue:
    text = resources.files("imagejobs.providers").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return Catalogue.parse(text)
