"""Idempotent submits: an `Idempotency-Key` maps, per caller, to one job for
`idempotency_ttl_s` (24 h by default).

The mapping `imagejobs.idem.<owner>.<sha256(key)>` -> {job id, request fingerprint} is
written create-only (`Nats-Expected-Last-Subject-Sequence: 0`), so of concurrent
duplicates exactly one claims the key and every other one reads the winner's job id. The
fingerprint is a hash of the validated request (kind, model, prompt, parameters, image
bytes), so a multipart body re-sent with another boundary is still the same request.
"""

from __future__ import annotations

import hashlib
import time

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError
from pydantic import BaseModel, ConfigDict

from imagejobs.domain import constants
from imagejobs.domain.errors import StoreUnavailable
from imagejobs.store.jetstream import WRONG_LAST_SEQUENCE, last_on_subject


class Claim(BaseModel):
    """What a key is bound to."""

    model_config = ConfigDict(frozen=True)
    job_id: str
    fingerprint: str
    created_at: float


class IdempotencyStore:
    def __init__(self, js: JetStreamContext, ttl_s: int) -> None:
        self._js = js
        self._ttl_s = ttl_s

    @staticmethod
    def _subject(owner: str, key: str) -> str:
        token = hashlib.sha256(key.encode()).hexdigest()
        return f"{constants.IDEMPOTENCY_SUBJECT_PREFIX}.{owner or 'anon'}.{token}"

    async def claim(self, owner: str, key: str, job_id: str, fp: str) -> Claim | None:
        """Bind the key to `job_id`; None if this call did, else the existing binding."""
        subject = self._subject(owner, key)
        claim = Claim(job_id=job_id, fingerprint=fp, created_at=time.time())
        expected = 0
        for _ in range(5):
            headers = {
                "Nats-TTL": f"{self._ttl_s}s",
                "Nats-Expected-Last-Subject-Sequence": str(expected),
            }
            try:
                await self._js.publish(subject, claim.model_dump_json().encode(), headers=headers)
                return None
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise StoreUnavailable(f"idempotency write failed: {exc.description}") from exc
            except (TimeoutError, NatsError) as exc:
                raise StoreUnavailable(f"idempotency write failed: {type(exc).__name__}") from exc
            existing, expected = await self._get(subject)
            if existing is not None:
                return existing
            # released (or expired) meanwhile: claim it over the marker's sequence
        raise StoreUnavailable("idempotency key kept changing")

    async def release(self, owner: str, key: str) -> None:
        """Unbind a key whose submit was not accepted (the client may retry with it)."""
        headers = {"Nats-TTL": f"{constants.DELETE_MARKER_TTL_S}s"}
        try:
            await self._js.publish(self._subject(owner, key), b"", headers=headers)
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"idempotency release failed: {type(exc).__name__}") from exc

    async def _get(self, subject: str) -> tuple[Claim | None, int]:
        """The binding (None if absent or released) and the subject's last sequence."""
        data, seq = await last_on_subject(
            self._js, constants.IDEMPOTENCY_STREAM, subject, "idempotency read"
        )
        return (Claim.model_validate_json(data) if data else None), seq
