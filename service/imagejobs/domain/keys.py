"""Virtual keys: how a key is stored (its SHA-256), what it may do (its policy), and who a
caller is (`Caller`: whose jobs it may see)."""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass

from imagejobs.domain.budget import MICRO_PER_USD, Period
from imagejobs.domain.errors import Forbidden
from imagejobs.domain.models import ModelRef


def key_hash(key: str) -> str:
    """How a virtual key is stored in the config: the hex SHA-256 of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyPolicy:
    """What one virtual key may do. Zero means "no limit of this kind".

    Governance (docs/governance.md): `budget_usd` per `budget_period` (its spend is
    tracked per period either way, for every priced model); `weight`, the key's share of
    the workers against other keys with queued jobs; `max_queued_jobs`, how many of its
    jobs may wait in the queue at once."""

    id: str
    allowed_models: tuple[str, ...] = ()  # fnmatch patterns over "provider/model"
    allowed_providers: tuple[str, ...] = ()
    max_concurrent_jobs: int = 0
    requests_per_minute: int = 0
    max_ttl_s: int = 0
    budget_usd: float = 0.0
    budget_period: Period = Period.MONTH
    weight: int = 1
    max_queued_jobs: int = 0

    @property
    def budget_micro(self) -> int:
        """The budget in µUSD (0: none)."""
        return round(self.budget_usd * MICRO_PER_USD)

    def allows(self, model: ModelRef) -> bool:
        if self.allowed_providers and model.provider not in self.allowed_providers:
            return False
        return not self.allowed_models or any(
            fnmatch.fnmatchcase(str(model), pattern) for pattern in self.allowed_models
        )

    def check_models(self, model: ModelRef, fallbacks: tuple[ModelRef, ...]) -> None:
        """Forbidden (403) unless the key may use the model and every fallback."""
        for name, param in [(model, "model"), *((f, "fallbacks") for f in fallbacks)]:
            if not self.allows(name):
                raise Forbidden(
                    f"model {name} is not allowed for this virtual key",
                    param=param,
                    provider=name.provider,
                    model=name.name,
                )

    def cap_ttl(self, ttl_s: int) -> int:
        return min(ttl_s, self.max_ttl_s) if self.max_ttl_s else ttl_s


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` is '' for anonymous callers, else a stable id; `policy` is
    the virtual key's, when keys are configured."""

    owner: str = ""
    policy: KeyPolicy | None = None

    def can_access(self, owner: str) -> bool:
        """Whether this caller may read (or cancel) a job made by `owner`: its own, or
        an anonymous (public) one."""
        return owner == "" or owner == self.owner

    @classmethod
    def from_key(cls, key: str | None) -> Caller:
        """Open mode: a presented key scopes the caller's jobs, nothing more."""
        if not key:
            return cls()
        return cls(owner="k-" + key_hash(key)[:24])


def owner_of(key_id: str) -> str:
    """The job owner a configured virtual key's callers have (`vk-<id>`)."""
    return f"vk-{key_id}"


def key_label(owner: str) -> str:
    """A job owner as a bounded label (metrics): a configured key's id, `anonymous`
    without a key, `open` for any key presented in open mode."""
    if owner.startswith("vk-"):
        return owner[3:]
    return "open" if owner else "anonymous"
