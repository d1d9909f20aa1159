"""Webhook endpoints: the `[[webhooks]]` settings (their keys are fixed, other tools write
them), the events, and each endpoint's retry schedule. Pure: no I/O.

```toml
[[webhooks]]
name = "orders"                      # what a submit names in `x-bf-async-webhook`
url = "https://hooks.example.com/imagejobs"
secret_env = "ORDERS_WEBHOOK_SECRET"  # the whsec_... secret lives in the environment
previous_secret_env = ""             # during a rotation: sign with both
events = ["async_job.completed", "async_job.failed"]   # also "async_job.cancelled"
headers = {}                         # extra headers; cannot override the signature ones
include_response = false
max_response_payload_kbs = 256
allow_private_network = false        # else private/loopback targets refused, https required
disabled = false
max_retries = 4
initial_backoff_s = 30               # doubling, +-20% jitter, capped at 1800 s
timeout_s = 10
```
"""

from __future__ import annotations

import enum
import hashlib
import random
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imagejobs.domain.jobs import Status

MAX_BACKOFF_S = 1800.0  # no wait between two attempts is longer (Retry-After included)
JITTER = 0.2  # each backoff is drawn from [1 - JITTER, 1 + JITTER] of its nominal value
MAX_IN_FLIGHT_PER_ENDPOINT = 10  # per dispatcher process, as the gateway does per node
MAX_PAYLOAD_KBS = 768  # a stored body must fit a NATS message (1 MiB) with its record

# headers the request itself sets: an endpoint's extra `headers` may not name them
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
        "user-agent",
        "x-bifrost-event",
    }
)
_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # a NATS subject token and a consumer name
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


class Event(enum.StrEnum):
    """What happened to the job; the payload's `event` and the `X-Bifrost-Event` header."""

    COMPLETED = "async_job.completed"
    FAILED = "async_job.failed"
    CANCELLED = "async_job.cancelled"  # ours: the gateway has no cancel event

    @classmethod
    def of(cls, status: Status) -> Event:
        """The event of a terminal status (ValueError for a running one)."""
        return _EVENTS[status]


_EVENTS = {
    Status.COMPLETED: Event.COMPLETED,
    Status.FAILED: Event.FAILED,
    Status.CANCELLED: Event.CANCELLED,
}


class WebhookSettings(BaseModel):
    """One `[[webhooks]]` table (module docstring). Checked once, at load: the name is a
    subject token, the URL absolute http(s) (https unless `allow_private_network`), the
    extra headers valid and none of the request's own."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=_NAME)
    url: str
    secret_env: str = Field(min_length=1)
    previous_secret_env: str = ""
    events: tuple[Event, ...] = (Event.COMPLETED, Event.FAILED)
    headers: dict[str, str] = Field(default_factory=dict)
    include_response: bool = False
    max_response_payload_kbs: int = Field(default=256, ge=1, le=MAX_PAYLOAD_KBS)
    allow_private_network: bool = False
    disabled: bool = False
    max_retries: int = Field(default=4, ge=0, le=20)
    initial_backoff_s: float = Field(default=30.0, gt=0, le=MAX_BACKOFF_S)
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by every delivery and cannot be given")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name}: value has a line break or NUL")
        return value

    @model_validator(mode="after")
    def _url(self) -> WebhookSettings:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook {self.name}: url must be an absolute http(s) URL")
        if parts.scheme != "https" and not self.allow_private_network:
            raise ValueError(
                f"webhook {self.name}: url must be https (or set allow_private_network)"
            )
        if parts.username or parts.password:
            raise ValueError(f"webhook {self.name}: url must not carry credentials")
        if not self.events:
            raise ValueError(f"webhook {self.name}: events must name at least one event")
        return self

    # --- derived --------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A hash of every setting: an endpoint disabled by a 410 stays disabled until this
        changes (its secrets live in the environment and do not count)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]

    @property
    def max_payload_bytes(self) -> int:
        return self.max_response_payload_kbs * 1024

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Seconds before retry number `retry` (1 = the first retry): `initial_backoff_s`
        doubling per retry, +-20 % jitter, never above MAX_BACKOFF_S."""
        nominal = self.initial_backoff_s * 2.0 ** min(retry - 1, 32)
        return min(nominal * rng.uniform(1 - JITTER, 1 + JITTER), MAX_BACKOFF_S)

    def retry_window_s(self) -> float:
        """The longest a delivery can stay owed once tried: every attempt's timeout and
        every backoff at its longest (Retry-After may stretch a wait up to the cap)."""
        waits = sum(
            min(self.initial_backoff_s * 2.0**i * (1 + JITTER), MAX_BACKOFF_S)
            for i in range(self.max_retries)
        )
        return waits + (self.max_retries + 1) * self.timeout_s


@dataclass(frozen=True)
class Endpoint:
    """An endpoint ready to deliver to: its settings and its signing keys (raw bytes,
    the current one first, then the previous one during a rotation)."""

    settings: WebhookSettings
    secrets: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return self.settings.name
