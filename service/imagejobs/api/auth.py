"""Who is calling: virtual keys, read from the contract's identity headers (REST) or the
same gRPC metadata.

The gateway we follow decides, and so do we:

- With `[virtual_keys.<id>]` configured, a presented key must be one of them: the config
  holds only each key's SHA-256, and a presented key is hashed and looked up (keys are
  random 128-bit+ tokens, so a fast hash is the right tool; a slow password hash would
  only cost CPU). The caller is then `vk-<id>`, and the key's policy (models, rate,
  concurrency, TTL) applies. An unknown key is a 400 `invalid_virtual_key`.
- A call without a key is anonymous and still served, unless `require_virtual_key = true`
  (then it is a 401 `missing_virtual_key`).
- With no keys configured the service runs open, for development: any key is accepted,
  and a presented key scopes the jobs it makes.

A job submitted with a key is readable only with that key (anything else is 404); a job
submitted without one is public: any caller may read it, with a key or without.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from imagejobs.domain.errors import ErrorCode, InvalidRequest, Unauthenticated
from imagejobs.domain.keys import Caller, KeyPolicy, key_hash, owner_of

log = logging.getLogger(__name__)

VK_PREFIX = "sk-bf-"


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
    def __init__(
        self, policies_by_hash: Mapping[str, KeyPolicy], *, require_key: bool = False
    ) -> None:
        self._by_hash = dict(policies_by_hash)
        self._require_key = require_key

    @property
    def open(self) -> bool:
        return not self._by_hash

    def caller(self, md: Mapping[str, str]) -> Caller:
        """The caller for a request's metadata. With keys configured: InvalidRequest
        (400) for an unknown key; Unauthenticated (401) for none when a key is required."""
        key = presented_key(md)
        if not key:
            if self._require_key:
                raise Unauthenticated(
                    "a virtual key is required: x-bf-vk, or Authorization: Bearer sk-bf-…",
                    code=ErrorCode.MISSING_VIRTUAL_KEY,
                )
            return Caller()
        if self.open:
            return Caller.from_key(key)
        policy = self._by_hash.get(key_hash(key))
        if policy is None:
            raise InvalidRequest("invalid virtual key", code=ErrorCode.INVALID_VIRTUAL_KEY)
        return Caller(owner=owner_of(policy.id), policy=policy)
