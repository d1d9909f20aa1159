"""Job records -> the REST contract's JSON (every REST answer is rendered here, never by
Envoy's transcoder), and the contract's error body as the `ErrorResponse` message (the
`google.rpc.Status` detail of every gRPC error). The typed gRPC `Job` is messages.py's.
Webhook delivery records -> `WebhookDelivery` and its REST JSON."""

from __future__ import annotations

import json
from typing import Any

import pybase64

from imagejobs.domain.contract import error_body, result_dict
from imagejobs.domain.errors import ErrorBody
from imagejobs.domain.jobs import Job, Status, rfc3339
from imagejobs.v1 import jobs_pb2
from imagejobs.webhooks.delivery import DeliveryRecord


def error_proto(body: ErrorBody) -> jobs_pb2.ErrorResponse:
    """The contract's error body as the `ErrorResponse` message."""
    extra = None
    if body.has_extra_fields:
        extra = jobs_pb2.ErrorExtraFields(
            provider=body.provider, model_requested=body.model, request_type=body.request_type
        )
    return jobs_pb2.ErrorResponse(
        event_id=body.event_id,
        type=body.type,
        is_bifrost_error=True,
        status_code=body.status_code,
        error=jobs_pb2.ErrorDetail(
            type=body.type,
            code=body.code,
            message=body.message,
            param=body.param,
            event_id=body.event_id,
        ),
        extra_fields=extra,
    )


def error_message(job: Job) -> jobs_pb2.ErrorResponse:
    """A failed or cancelled job's `error` as the `ErrorResponse` message."""
    return error_proto(error_body(job))


def job_json(
    job: Job, images: list[bytes] | None = None, base_url: str = "", *, links: bool = False
) -> bytes:
    """The job as the REST contract prints it, for every REST answer (submit, read,
    cancel, list entries, events): the fields in the contract's order, unset ones
    omitted, times always with milliseconds. `images` holds each result image's bytes
    for `b64_json`; with `links` (list entries) images are linked, never inlined."""
    doc: dict[str, Any] = {
        "id": job.id,
        "request_id": job.request_id,
        "status": job.status.value,
        "created_at": rfc3339(job.created_at),
    }
    if job.completed_at is not None:
        doc["completed_at"] = rfc3339(job.completed_at)
    if job.expires_at is not None:
        doc["expires_at"] = rfc3339(job.expires_at)
    if job.status_code is not None:
        doc["status_code"] = job.status_code
    placeholders: list[str] = []
    if job.status is Status.COMPLETED and job.result is not None:
        result = result_dict(job, None, base_url, links=links)
        if images is not None and not links:
            # base64 needs no JSON escaping: splice the encoded bytes in after dumping
            # the small rest, instead of scanning MBs of it in json.dumps
            for i, item in enumerate(result["data"]):
                placeholders.append(f"\u0000b64:{i}\u0000")
                item["b64_json"] = placeholders[-1]
        doc["result"] = result
    if job.error is not None:
        doc["error"] = error_body(job).to_dict()
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    if not placeholders:
        return text
    assert images is not None
    pieces: list[bytes] = []
    for i, placeholder in enumerate(placeholders):
        marker = json.dumps(placeholder).encode()  # how json.dumps printed it
        head, text = text.split(marker, 1)
        # SIMD base64 (pybase64): the same bytes as the stdlib's, several times faster
        pieces += [head, b'"', pybase64.b64encode(images[i]), b'"']
    pieces.append(text)
    return b"".join(pieces)


def list_json(jobs: list[bytes], next_page_token: str) -> bytes:
    """A list page as the REST contract prints it: `{"jobs": [...], "next_page_token": …}`
    with both keys always present; `jobs` are `job_json` renderings (with `links`)."""
    token = json.dumps(next_page_token).encode()
    return b'{"jobs":[' + b",".join(jobs) + b'],"next_page_token":' + token + b"}"


# --- webhook deliveries ----------------------------------------------------------------


def delivery_dict(record: DeliveryRecord) -> dict[str, Any]:
    """A delivery as REST prints it (`ListDeliveriesJson`): the `WebhookDelivery` fields,
    status and outcome as the lowercase words, `next_attempt_at` only while pending, an
    attempt's `status_code` only when an answer came and `error` only when one did not.
    The stored body is never shown (the job's own read has everything in it)."""
    doc: dict[str, Any] = {
        "webhook_id": record.webhook_id,
        "endpoint": record.endpoint,
        "event": record.event.value,
        "status": record.status.value,
        "created_at": rfc3339(record.created_at),
    }
    if not record.finished and record.next_attempt_at is not None:
        doc["next_attempt_at"] = rfc3339(record.next_attempt_at)
    doc["endpoint_gone"] = record.gone
    doc["total_attempts"] = record.total_attempts
    doc["round"] = record.round
    attempts = []
    for attempt in record.attempts:
        item: dict[str, Any] = {"attempted_at": rfc3339(attempt.at)}
        if attempt.status_code is not None:
            item["status_code"] = attempt.status_code
        if attempt.error:
            item["error"] = attempt.error
        item["duration_ms"] = attempt.duration_ms
        item["outcome"] = attempt.outcome.value
        attempts.append(item)
    doc["attempts"] = attempts
    return doc


def deliveries_json(records: list[DeliveryRecord]) -> bytes:
    """`{"deliveries": [...]}`, the key always present."""
    doc = {"deliveries": [delivery_dict(r) for r in records]}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
