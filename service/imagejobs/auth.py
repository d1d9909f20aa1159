"""Who is calling: virtual keys, read from the contract's identity headers (REST) or the
same gRPC metadata.

With `[virtual_keys.<id>]` configured, every ImageJobService call needs a valid key: the
config holds only each key's SHA-256, and a presented key is hashed and looked up (keys
are random 128-bit+ tokens, so a fast hash is the right tool; a slow password hash would
only cost CPU). The caller is then `vk-<id>`, and the key's policy (models, rate,
concurrency, TTL) applies. With none configured the service runs open, for development:
any key (or none) is accepted, and a presented key still scopes the jobs it makes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from imagejobs.errors import Forbidden, Unauthenticated

log = logging.getLogger(__name__)

VK_PREFIX = "sk-bf-"


def key_hash(key: str) -> str:
    """How a virtual key is stored in the config: the hex SHA-256 of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyPolicy:
    """What one virtual key may do. Zero means "no limit of this kind"."""

    id: str
    allowed_models: tuple[str, ...] = ()  # fnmatch patterns over "provider/model"
    allowed_providers: tuple[str, ...] = ()
    max_concurrent_jobs: int = 0
    requests_per_minute: int = 0
    max_ttl_s: int = 0

    def allows(self, model: str) -> bool:
        provider = model.split("/", 1)[0]
        if self.allowed_providers and provider not in self.allowed_providers:
            return False
        return not self.allowed_models or any(
            fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models
        )

    def check_models(self, model: str, fallbacks: tuple[str, ...]) -> None:
        """Forbidden (403) unless the key may use the model and every fallback."""
        for name, param in [(model, "model"), *((f, "fallbacks") for f in fallbacks)]:
            if not self.allows(name):
                raise Forbidden(
                    f"model {name} is not allowed for this virtual key",
                    param=param,
                    provider=name.split("/", 1)[0],
                    model=name.split("/", 1)[-1],
                )

    def cap_ttl(self, ttl_s: int) -> int:
        return min(ttl_s, self.max_ttl_s) if self.max_ttl_s else ttl_s


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` is '' for anonymous callers, else a stable id; `policy` is
    the virtual key's, when keys are configured."""

    owner: str = ""
    policy: KeyPolicy | None = None

    @classmethod
    def from_key(cls, key: str | None) -> Caller:
        """Open mode: a presented key scopes the caller's jobs, nothing more."""
        if not key:
            return cls()
        return cls(owner="k-" + key_hash(key)[:24])


def presented_key(md: Mapping[str, str]) -> str | None:
    """The contract's identity headers, in order of precedence: `x-bf-vk: <key>`, then
    `Authorization: Bearer sk-bf-…`, `x-api-key: sk-bf-…`, `x-goog-api-key: sk-bf-…`."""
    if md.get("x-bf-vk"):
        return md["x-bf-vk"].strip()
    auth = md.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip().startswith(VK_PREFIX):
        return auth[7:].strip()
    for name in ("x-api-key", "x-goog-api-key"):
        value = md.get(name, "").strip()
        if value.startswith(VK_PREFIX):
            return value
    return None


class Authenticator:
    def __init__(self, policies_by_hash: Mapping[str, KeyPolicy]) -> None:
        self._by_hash = dict(policies_by_hash)

    @property
    def open(self) -> bool:
        return not self._by_hash

    def caller(self, md: Mapping[str, str]) -> Caller:
        """The caller for a request's metadata; Unauthenticated (401) when keys are
        configured and none, or an unknown one, was presented."""
        key = presented_key(md)
        if self.open:
            return Caller.from_key(key)
        if not key:
            raise Unauthenticated(
                "a virtual key is required: x-bf-vk, or Authorization: Bearer sk-bf-…",
                code="missing_virtual_key",
            )
        policy = self._by_hash.get(key_hash(key))
        if policy is None:
            raise Unauthenticated("invalid virtual key", code="invalid_virtual_key")
        return Caller(owner=f"vk-{policy.id}", policy=policy)
