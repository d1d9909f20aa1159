"""One job's webhook delivery: its record (the history a caller reads) and how each
attempt moves it. Pure: no I/O.

                 2xx                                      other 4xx, 3xx, refused target,
    pending ─────────────► delivered        pending ─────► failed   retries used up
      │  ▲                                     ▲
      │  └── 408, 429, 5xx, timeout,           │ Redeliver (same webhook-id, same body)
      │      connection error: the next        │
      │      attempt after the backoff     delivered, failed
      └── 410: held (the endpoint is disabled until its settings change; not counted)

The record holds the exact body bytes of the first attempt, so every attempt and every
redelivery of one `webhook-id` sends the same body. `round` counts redeliveries: an
outbox message of an older round than the record's is stale, one of a newer round moves
the record on (docs: webhooks/dispatcher.py).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from imagejobs.domain import constants
from imagejobs.domain.jobs import Job
from imagejobs.domain.kinds import Kind
from imagejobs.webhooks.endpoints import MAX_BACKOFF_S, Event, WebhookSettings

MAX_KEPT_ATTEMPTS = 50  # the history keeps this many latest attempts (and their count)
HISTORY_MARGIN_S = 300  # records outlive the job's TTL plus the retry window by this
RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
RETRY_AFTER_STATUSES = frozenset({429, 503})  # whose Retry-After is honoured
GONE_STATUS = 410


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # owed: waiting for its next attempt (or held, see above)
    DELIVERED = "delivered"
    FAILED = "failed"


class Outcome(enum.StrEnum):
    """What one attempt means for the delivery."""

    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # 408, 429, 5xx, timeout, connection error
    FAILED = "failed"  # other 4xx, every 3xx (redirects are never followed), refused
    GONE = "gone"  # 410: the endpoint is disabled until its settings change


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt gave: a status, or an error text (`refused`: the SSRF guard
    or the scheme rule refused the target, nothing was sent). Durations in ms, Retry-After
    in seconds."""

    status_code: int | None
    error: str = ""
    duration_ms: int = 0
    retry_after_s: float | None = None
    refused: bool = False

    @property
    def outcome(self) -> Outcome:
        status = self.status_code
        if status is None:
            return Outcome.FAILED if self.refused else Outcome.RETRY
        if 200 <= status < 300:
            return Outcome.DELIVERED
        if status == GONE_STATUS:
            return Outcome.GONE
        if status in RETRY_STATUSES or 500 <= status < 600:
            return Outcome.RETRY
        return Outcome.FAILED


class Attempt(BaseModel):
    """One attempt in the history (`at` in epoch seconds)."""

    model_config = ConfigDict(frozen=True)
    at: float
    status_code: int | None = None
    error: str = ""
    duration_ms: int = 0
    outcome: Outcome


def webhook_id(job_id: str, event: Event) -> str:
    """The `webhook-id` of a job's event: the same on every attempt and redelivery, so a
    receiver dedupes on it; also the outbox's deduplication id."""
    return f"{job_id}.{event.value}"


class DeliveryRecord(BaseModel):
    """A job's delivery and its history. Times in epoch seconds."""

    model_config = ConfigDict(frozen=True)
    webhook_id: str
    job_id: str
    kind: Kind
    owner: str = ""
    endpoint: str
    event: Event
    round: int = 0
    status: DeliveryStatus = DeliveryStatus.PENDING
    body: str = ""  # the exact payload (UTF-8), made once for the first attempt
    created_at: float  # when the delivery became owed: the job's end
    job_expires_at: float | None = None
    attempts: tuple[Attempt, ...] = ()  # the latest MAX_KEPT_ATTEMPTS
    total_attempts: int = 0
    tries: int = 0  # attempts of this round that count against max_retries
    next_attempt_at: float | None = None  # pending only
    gone: bool = False  # pending, held: the endpoint answered 410

    @classmethod
    def owed(cls, job: Job, event: Event, body: str) -> DeliveryRecord:
        """The delivery a terminal job with a webhook owes, not yet tried."""
        created = job.completed_at or job.created_at
        return cls(
            webhook_id=webhook_id(job.id, event),
            job_id=job.id,
            kind=job.kind,
            owner=job.owner,
            endpoint=job.webhook,
            event=event,
            body=body,
            created_at=created,
            job_expires_at=job.expires_at,
            next_attempt_at=created,
        )

    def dumps(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def loads(cls, data: bytes) -> DeliveryRecord:
        return cls.model_validate_json(data)

    # --- moves (each returns a new record) --------------------------------------------

    def attempted(
        self, result: AttemptResult, settings: WebhookSettings, now: float, rng: random.Random
    ) -> DeliveryRecord:
        """The record after one attempt at `now`: delivered, failed, held (410), or
        pending with the next attempt after its backoff (at least a Retry-After on
        429/503, capped at MAX_BACKOFF_S); failed once `max_retries` retries are used."""
        outcome = result.outcome
        attempt = Attempt(
            at=now,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            outcome=outcome,
        )
        changes: dict[str, object] = {
            "attempts": (*self.attempts, attempt)[-MAX_KEPT_ATTEMPTS:],
            "total_attempts": self.total_attempts + 1,
            "tries": self.tries + 1,
            "next_attempt_at": None,
            "gone": False,
        }
        if outcome is Outcome.DELIVERED:
            changes["status"] = DeliveryStatus.DELIVERED
        elif outcome is Outcome.GONE:
            # held, due again as soon as the endpoint changes; it uses up no retry
            changes.update(tries=self.tries, next_attempt_at=now, gone=True)
        elif outcome is Outcome.FAILED or self.tries >= settings.max_retries:
            changes["status"] = DeliveryStatus.FAILED
        else:
            wait = settings.backoff_s(self.tries + 1, rng)
            if result.status_code in RETRY_AFTER_STATUSES and result.retry_after_s is not None:
                wait = max(wait, min(result.retry_after_s, MAX_BACKOFF_S))
            changes["next_attempt_at"] = now + wait
        return self.model_copy(update=changes)

    def redelivered(self, round: int, now: float) -> DeliveryRecord:
        """A new round (Redeliver): pending again at once, with a fresh retry budget; the
        same webhook-id and body."""
        return self.model_copy(
            update={
                "round": round,
                "status": DeliveryStatus.PENDING,
                "tries": 0,
                "next_attempt_at": now,
                "gone": False,
            }
        )

    # --- queries -----------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.status is not DeliveryStatus.PENDING

    def ttl_s(self, settings: WebhookSettings | None, now: float) -> int:
        """How long the record must live from `now`: the job's remaining TTL plus the
        retry window (the longest schedule), plus a margin. While pending, at least as
        long as an outbox message may live, so that a message (delivered late after an
        outage of every dispatcher) always finds its record, and its body."""
        remaining = max((self.job_expires_at or now) - now, 0.0)
        window = settings.retry_window_s() if settings is not None else MAX_BACKOFF_S
        ttl = math.ceil(remaining + window) + HISTORY_MARGIN_S
        return ttl if self.finished else max(ttl, constants.OUTBOX_MAX_AGE_S + HISTORY_MARGIN_S)
