"""Webhook delivery records and disabled-endpoint markers, on `Subjects` (the HOOKS stream
with JetStream, a dict in the twin): one record per job on
`imagejobs.hooks.delivery.<job_id>`, written with compare-and-set and a TTL that covers
the job's TTL plus the retry window; one marker per endpoint a 410 disabled on
`imagejobs.hooks.gone.<endpoint>`, naming the endpoint's settings at the time.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from imagejobs.domain import constants
from imagejobs.store.protocols import Subjects
from imagejobs.webhooks.delivery import DeliveryRecord

GONE_TTL_S = 365 * 24 * 3600  # a 410 marker is kept this long (it only counts while the
# endpoint's settings are unchanged)


class GoneMarker(BaseModel):
    """An endpoint answered 410 Gone at `at` (epoch s) while its settings hashed to
    `fingerprint`, delivering `webhook_id`."""

    model_config = ConfigDict(frozen=True)
    fingerprint: str
    at: float
    webhook_id: str


def delivery_subject(job_id: str) -> str:
    return f"{constants.DELIVERY_SUBJECT_PREFIX}.delivery.{job_id}"


def gone_subject(endpoint: str) -> str:
    return f"{constants.DELIVERY_SUBJECT_PREFIX}.gone.{endpoint}"


class DeliveryRecords:
    """`DeliveryStore` on `Subjects`."""

    def __init__(self, subjects: Subjects) -> None:
        self._subjects = subjects

    async def get(self, job_id: str) -> tuple[DeliveryRecord, int] | None:
        data, revision = await self._subjects.last(delivery_subject(job_id))
        if not data:
            return None
        return DeliveryRecord.loads(data), revision

    async def put(self, record: DeliveryRecord, *, ttl_s: int, expected: int) -> int:
        return await self._subjects.put(
            delivery_subject(record.job_id), record.dumps(), ttl_s=ttl_s, expected=expected
        )

    async def gone(self, endpoint: str) -> GoneMarker | None:
        data, _ = await self._subjects.last(gone_subject(endpoint))
        return GoneMarker.model_validate_json(data) if data else None

    async def mark_gone(self, endpoint: str, marker: GoneMarker) -> None:
        await self._subjects.put(
            gone_subject(endpoint), marker.model_dump_json().encode(), ttl_s=GONE_TTL_S
        )
