"""Idempotent submits: an `Idempotency-Key` maps, per caller, to one job for
`idempotency_ttl_s` (24 h by default).

The mapping `imagejobs.idem.<owner>.<sha256(key)>` -> {job id, request fingerprint} is
written create-only (expected last sequence 0), so of concurrent duplicates exactly one
claims the key and every other one reads the winner's job id. The fingerprint is a hash
of the validated request (kind, model, prompt, parameters, image bytes), so a multipart
body re-sent with another boundary is still the same request.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict

from imagejobs.domain import constants
from imagejobs.domain.errors import RevisionConflict, StoreUnavailable
from imagejobs.store.clock import Clock
from imagejobs.store.protocols import Subjects

_CLAIM_TRIES = 5  # a key released and re-claimed this often during one claim: give up


class Claim(BaseModel):
    """What a key is bound to (`created_at` in epoch seconds)."""

    model_config = ConfigDict(frozen=True)
    job_id: str
    fingerprint: str
    created_at: float


def key_subject(owner: str, key: str) -> str:
    token = hashlib.sha256(key.encode()).hexdigest()
    return f"{constants.IDEMPOTENCY_SUBJECT_PREFIX}.{owner or 'anon'}.{token}"


class IdempotencyClaims:
    """`IdempotencyStore` on `Subjects`; bindings live `ttl_s` seconds."""

    def __init__(self, subjects: Subjects, ttl_s: int, clock: Clock) -> None:
        self._subjects = subjects
        self._ttl_s = ttl_s
        self._clock = clock

    async def claim(self, owner: str, key: str, job_id: str, fp: str) -> Claim | None:
        """Bind the key to `job_id`; None if this call did, else the existing binding."""
        subject = key_subject(owner, key)
        claim = Claim(job_id=job_id, fingerprint=fp, created_at=self._clock.time())
        expected = 0
        for _ in range(_CLAIM_TRIES):
            try:
                await self._subjects.put(
                    subject, claim.model_dump_json().encode(), ttl_s=self._ttl_s, expected=expected
                )
                return None
            except RevisionConflict:
                pass
            data, expected = await self._subjects.last(subject)
            if data:
                return Claim.model_validate_json(data)
            # released (or expired) meanwhile: claim it over the marker's sequence
        raise StoreUnavailable("idempotency key kept changing")

    async def release(self, owner: str, key: str) -> None:
        """Unbind a key whose submit was not accepted (the client may retry with it)."""
        await self._subjects.delete(key_subject(owner, key), ttl_s=constants.DELETE_MARKER_TTL_S)
