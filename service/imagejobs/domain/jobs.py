"""The job record and its state machine. Pure: no I/O, unit-testable in microseconds.

                 claim                      complete
    pending ───────────────► processing ───────────────► completed
       │  ▲                   │  │  ▲ re-claim
       │  └──── (none) ───────┘  │  │ (redelivery after a crash)
       │                         │  └──┘
       │ cancel / give up        │ fail / cancel / give up
       ▼                         ▼
    cancelled, failed        failed, cancelled

Terminal states (`completed`, `failed`, `cancelled`) never change again. Every write of a
record is a compare-and-set on its KV revision (store.py), so two workers racing on one
job cannot both move it: the loser's write is rejected and its work discarded.

The record is what lives in the JOBS KV bucket, JSON-encoded. It holds references to
image bytes in the object store, never the bytes.
"""

from __future__ import annotations

import enum
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imagejobs.domain.budget import BudgetHold, micro
from imagejobs.domain.errors import ErrorCode, ErrorType, InvalidTransition, new_event_id
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelField


class Status(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


_LEGACY_EVENT_NAMESPACE = uuid.UUID("5b0f3c2e-8f6a-4f1e-9d57-6a3c1e0b9a11")

TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.PROCESSING, Status.FAILED, Status.CANCELLED}),
    Status.PROCESSING: frozenset(
        {Status.PROCESSING, Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    ),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class ObjectRef(BaseModel):
    """An image in the object store."""

    model_config = ConfigDict(frozen=True)
    object_id: str
    content_type: str
    size: int
    filename: str = ""


class StoredRequest(BaseModel):
    """The validated request, as a worker needs it."""

    model_config = ConfigDict(frozen=True)
    model: ModelField
    prompt: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    images: tuple[ObjectRef, ...] = ()
    mask: ObjectRef | None = None
    fallbacks: tuple[ModelField, ...] = ()
    # the model catalogue's word on deprecated models the request named, at submit
    warnings: tuple[str, ...] = ()

    @property
    def response_format(self) -> str:
        value = self.params.get("response_format")
        return value if value in ("url", "b64_json") else "b64_json"


class ResultImage(BaseModel):
    model_config = ConfigDict(frozen=True)
    ref: ObjectRef
    revised_prompt: str | None = None


class StoredResult(BaseModel):
    """A completed job's images response, with images as object references."""

    model_config = ConfigDict(frozen=True)
    created: int
    images: tuple[ResultImage, ...]
    fields: dict[str, Any] = Field(default_factory=dict)  # background, output_format, …
    usage: dict[str, Any] | None = None
    provider: str
    model: str  # the model that served it (a fallback's, when one did)
    latency_ms: int
    # USD, from the price of the model that served it (providers/pricing.py); None when
    # it has no price (never 0 for "unknown")
    cost_usd: float | None = None


class StoredError(BaseModel):
    """A failed or cancelled job's error, in the contract's terms. Its `event_id` is
    chosen once, when the error happens, so every read of the job shows the same one."""

    model_config = ConfigDict(frozen=True)
    status_code: int
    type: str
    code: str = ""
    message: str
    param: str = ""
    provider: str = ""
    model: str = ""
    event_id: str = Field(default_factory=new_event_id)


class Job(BaseModel):
    """One job record. Times are seconds since the epoch (float, UTC)."""

    model_config = ConfigDict(frozen=True)
    id: str
    kind: Kind
    status: Status = Status.PENDING
    request_id: str
    owner: str = ""  # virtual-key id; '' = anonymous
    slot: str = ""  # the key's concurrency slot it holds until terminal ('' = none)
    webhook: str = ""  # the endpoint its end is delivered to (`x-bf-async-webhook`; '' = none)
    budget: BudgetHold | None = None  # its reservation against the key's spend, until it ends
    created_at: float
    ttl_s: int
    request: StoredRequest
    attempts: int = 0  # provider calls made so far (retries and redeliveries included)
    deliveries: int = 0  # times a worker claimed it
    worker: str = ""
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    status_code: int | None = None
    result: StoredResult | None = None
    error: StoredError | None = None

    @model_validator(mode="before")
    @classmethod
    def _stable_event_id(cls, data: Any) -> Any:
        """A record written before errors kept their event id gets one derived from the
        job id, so that it too reads the same every time."""
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict) and not error.get("event_id") and data.get("id"):
                derived = str(uuid.uuid5(_LEGACY_EVENT_NAMESPACE, str(data["id"])))
                data = {**data, "error": {**error, "event_id": derived}}
        return data

    # --- serialisation --------------------------------------------------------------

    def dumps(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def loads(cls, data: bytes) -> Job:
        return cls.model_validate_json(data)

    # --- queries --------------------------------------------------------------------

    @property
    def provider(self) -> str:
        return self.request.model.provider

    def settled_cost(self) -> int:
        """What an ended job's budget hold settles to (µUSD): a completed job's cost (its
        estimate when its model had no price by then), nothing for a failed or cancelled
        one."""
        if self.status is not Status.COMPLETED or self.result is None:
            return 0
        if self.result.cost_usd is not None:
            return micro(self.result.cost_usd)
        return self.budget.reserved_micro if self.budget is not None else 0

    def expired(self, now: float | None = None) -> bool:
        """True once a terminal job's result lifetime has passed."""
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    # --- transitions (each returns a new record) ------------------------------------

    def _move(self, to: Status, **changes: Any) -> Job:
        if to not in TRANSITIONS[self.status]:
            raise InvalidTransition(f"{self.status} -> {to} is not allowed")
        return self.model_copy(update={"status": to, **changes})

    def claim(self, worker: str, now: float) -> Job:
        """A worker takes the job (again, after a redelivery)."""
        return self._move(
            Status.PROCESSING, worker=worker, started_at=now, deliveries=self.deliveries + 1
        )

    def with_attempts(self, attempts: int) -> Job:
        return self.model_copy(update={"attempts": attempts})

    def _end(self, to: Status, now: float, status_code: int, **changes: Any) -> Job:
        """The move to a terminal state: the result's lifetime starts `now`."""
        return self._move(
            to, status_code=status_code, completed_at=now, expires_at=now + self.ttl_s, **changes
        )

    def complete(self, result: StoredResult, now: float) -> Job:
        return self._end(Status.COMPLETED, now, 200, result=result)

    def fail(self, error: StoredError, now: float) -> Job:
        return self._end(Status.FAILED, now, error.status_code, error=error)

    def cancel(self, now: float) -> Job:
        error = StoredError(
            status_code=499,
            type=ErrorType.CANCELLED,
            code=ErrorCode.CANCELLED,
            message="job cancelled",
        )
        return self._end(Status.CANCELLED, now, 499, error=error)


def age_limit_error(max_age_s: float) -> StoredError:
    """Why a job still not terminal `max_age_s` after its submit is failed (by whichever
    of a read or a delivery finds it first)."""
    return StoredError(
        status_code=500,
        type=ErrorType.TIMEOUT,
        code=ErrorCode.JOB_EXPIRED,
        message=f"job did not finish within {max_age_s:g} s of its submit",
    )


_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def new_job_id() -> str:
    """A new job's id: a random UUIDv4 in its canonical lower-case form."""
    return str(uuid.uuid4())


def is_job_id(text: str) -> bool:
    """Whether `text` could be a job id: a UUID in the canonical lower-case form that
    `new_job_id` makes. Python's own UUID parser is laxer (it accepts braces, a `urn:`
    prefix, no hyphens and surrounding whitespace), and such text must never reach a
    JetStream subject."""
    return _JOB_ID.fullmatch(text) is not None


def rfc3339(epoch_s: float) -> str:
    """`2026-02-19T08:10:17.831Z` for a time in epoch seconds."""
    text = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def resolve_ttl(header: str | None, default_s: int, max_s: int) -> int:
    """The contract's lenient `x-bf-async-job-result-ttl` rules: absent, empty, not an
    integer or negative -> the default; 0 -> 3600; positive -> as given (capped)."""
    if header is None:
        return default_s
    text = header.strip()
    try:
        value = int(text)
    except ValueError:
        return default_s
    if value < 0:
        return default_s
    if value == 0:
        return 3600
    return min(value, max_s)
