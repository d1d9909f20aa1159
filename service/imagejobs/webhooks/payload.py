"""What travels: the outbox message (`Intent`) a terminal writer publishes, and the JSON
payload a receiver gets, the gateway's:

    {"event": "async_job.completed", "created_at": "…",
     "data": {"job_id", "request_type", "status", "status_code", "created_at",
              "completed_at", "result_url", "result_expires_at", "request_id",
              "cost_usd" (a completed job of a priced model),
              "response": {…} | absent, "response_omitted": false,
              "error": {…} | absent, "error_omitted": false, "result_expired": false}}

`response` (a completed job's images response, as a poll prints it) and `error` (the
contract's error body) are inlined only for endpoints with `include_response`, and only
when each fits `max_response_payload_kbs`; past it, `*_omitted` is true and the receiver
fetches `result_url`. `result_expired` is true when the job's result was gone when the
body was made. The body is made once, for the first attempt, and stored with the
delivery: every retry and redelivery sends the very same bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from imagejobs.domain.contract import error_body, result_dict
from imagejobs.domain.jobs import Job, Status, rfc3339
from imagejobs.store.protocols import ObjectStore
from imagejobs.webhooks.delivery import webhook_id
from imagejobs.webhooks.endpoints import Event, WebhookSettings


class Intent(BaseModel):
    """One outbox message: deliver `event` of job `job_id` to `endpoint`. Round 0 (the
    job's end) carries the terminal record itself, so that the body can be made even
    after the job expired; a Redeliver (round n > 0) refers to the stored delivery."""

    model_config = ConfigDict(frozen=True)
    endpoint: str
    event: Event
    job_id: str
    round: int = 0
    job: Job | None = None
    trace: dict[str, str] | None = None  # the writer's trace context (W3C headers)

    @property
    def msg_id(self) -> str:
        """The outbox's deduplication id (`Nats-Msg-Id`): `<job id>.<event>`, and
        `.r<n>` for a redelivery round."""
        base = webhook_id(self.job_id, self.event)
        return base if self.round == 0 else f"{base}.r{self.round}"

    def dumps(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def loads(cls, data: bytes) -> Intent:
        return cls.model_validate_json(data)


def intent_of(job: Job, trace: dict[str, str] | None = None) -> Intent | None:
    """The intent a job's terminal record owes (None: no webhook, or not terminal), with
    the trace context its deliveries' spans belong to. The same record always makes an
    intent for the same delivery (its `msg_id`)."""
    if not job.webhook or not job.status.terminal:
        return None
    event = Event.of(job.status)
    return Intent(endpoint=job.webhook, event=event, job_id=job.id, job=job, trace=trace or None)


def poll_url(base_url: str, job: Job) -> str:
    return f"{base_url}/v1/async/images/{job.kind.value}/{job.id}"


async def build_body(
    job: Job,
    event: Event,
    settings: WebhookSettings,
    objects: ObjectStore,
    base_url: str,
    now: float,
) -> str:
    """The payload for `job`'s `event` as JSON text (compact, UTF-8), as of `now` (epoch
    s). Reads the result's images only to inline a small enough b64_json response."""
    expired = job.expired(now)
    data: dict[str, Any] = {
        "job_id": job.id,
        "request_type": job.kind.request_type,
        "status": job.status.value,
        "status_code": job.status_code,
        "created_at": rfc3339(job.created_at),
        "completed_at": rfc3339(job.completed_at or now),
        "result_url": poll_url(base_url, job),
        "result_expires_at": rfc3339(job.expires_at or now),
        "request_id": job.request_id,
    }
    if job.result is not None and job.result.cost_usd is not None:  # absent: no price
        data["cost_usd"] = job.result.cost_usd
    limit = settings.max_payload_bytes
    response_omitted = error_omitted = False
    if settings.include_response and job.status is Status.COMPLETED and not expired:
        response, gone = await _response(job, objects, base_url, limit)
        if response is not None:
            data["response"] = response
        expired = gone
        response_omitted = response is None and not gone
    data["response_omitted"] = response_omitted
    if settings.include_response and job.error is not None:
        error = error_body(job).to_dict()
        if _size(error) > limit:
            error_omitted = True
        else:
            data["error"] = error
    data["error_omitted"] = error_omitted
    data["result_expired"] = expired
    doc = {"event": event.value, "created_at": rfc3339(job.completed_at or now), "data": data}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


async def _response(
    job: Job, objects: ObjectStore, base_url: str, limit: int
) -> tuple[dict[str, Any] | None, bool]:
    """(the images response to inline, or None when it does not fit `limit` bytes;
    whether its images have expired meanwhile). A b64_json result is measured from its
    stored sizes first, so that a large one is never read."""
    assert job.result is not None
    images: list[bytes] | None = None
    if job.request.response_format == "b64_json":
        encoded = sum(4 * math.ceil(i.ref.size / 3) for i in job.result.images)
        if encoded > limit:
            return None, False
        found = [await objects.get(i.ref.object_id) for i in job.result.images]
        if any(f is None for f in found):
            return None, True
        images = [f.data for f in found if f is not None]
    response = result_dict(job, images, base_url)
    return (None if _size(response) > limit else response), False


def _size(value: dict[str, Any]) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
