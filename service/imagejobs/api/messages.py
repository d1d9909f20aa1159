"""Job records -> the typed gRPC `Job` message (enums, a typed result, raw image bytes).

These messages go to gRPC clients only: every REST answer is JSON rendered in render.py,
so nothing here passes through Envoy's transcoder. Pure: no I/O.

Message size: a `Job` inlines its result images only when the request asked for
`b64_json` and their total is at most `MAX_INLINE_RESULT_BYTES`, which keeps every answer
under gRPC's default 4 MiB receive limit; otherwise each image carries its `url`,
`mime_type` and `size_bytes` and the client streams it with StreamJobImage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from imagejobs.api.render import error_message
from imagejobs.domain.contract import image_url
from imagejobs.domain.jobs import Job, Status, StoredResult
from imagejobs.domain.wire import kind_enum, status_enum
from imagejobs.v1 import jobs_pb2
from imagejobs.webhooks.delivery import DeliveryRecord

MAX_INLINE_RESULT_BYTES = 3 * 1024 * 1024  # a Job's inlined image bytes, in total
IMAGE_CHUNK_BYTES = 1024 * 1024  # StreamJobImage's chunk size

_USAGE_COUNTS = ("input_tokens", "output_tokens", "total_tokens")
_USAGE_DETAILS = ("input_tokens_details", "output_tokens_details")
_RESULT_TEXT_FIELDS = ("background", "output_format", "quality", "size")


def inlines(job: Job) -> bool:
    """Whether the typed `Job` for this record carries its images' bytes: the request
    asked for `b64_json` and they total at most MAX_INLINE_RESULT_BYTES (sizes are in the
    record, so this reads no image)."""
    if job.result is None or job.request.response_format != "b64_json":
        return False
    return sum(i.ref.size for i in job.result.images) <= MAX_INLINE_RESULT_BYTES


def _timestamp(epoch_s: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(epoch_s * 1000))  # the contract's precision
    return ts


def _whole(value: object) -> int | None:
    """A whole-number usage counter, or None (bools are not counters)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_message(usage: Mapping[str, Any]) -> jobs_pb2.Usage:
    """A provider's usage object as the typed `Usage`: the known counters, the by-modality
    details, and any other whole-number counter under `other` (anything else is left to
    the REST answer, which prints the object as the provider gave it)."""
    msg = jobs_pb2.Usage()
    for name, value in usage.items():
        count = _whole(value)
        if name in _USAGE_COUNTS and count is not None:
            setattr(msg, name, count)
        elif name in _USAGE_DETAILS and isinstance(value, Mapping):
            details = getattr(msg, name)
            for part in ("text_tokens", "image_tokens"):
                part_count = _whole(value.get(part))
                if part_count is not None:
                    setattr(details, part, part_count)
        elif count is not None:
            msg.other[name] = count
    return msg


def result_message(
    job: Job, result: StoredResult, images: list[bytes] | None, base_url: str
) -> jobs_pb2.JobResult:
    """The typed images response; `images` holds every image's bytes when inlined."""
    msg = jobs_pb2.JobResult(created=result.created)
    for i, image in enumerate(result.images):
        msg.images.append(
            jobs_pb2.ResultImage(
                index=i,
                data=images[i] if images is not None else b"",
                url=image_url(base_url, job, i),
                revised_prompt=image.revised_prompt or "",
                mime_type=image.ref.content_type,
                size_bytes=image.ref.size,
            )
        )
    for name in _RESULT_TEXT_FIELDS:
        value = result.fields.get(name)
        if value is not None:
            setattr(msg, name, str(value))
    if result.usage:
        msg.usage.CopyFrom(usage_message(result.usage))
    msg.extra_fields.CopyFrom(
        jobs_pb2.ResultExtraFields(
            request_type=job.kind.request_type,
            provider=result.provider,
            model_requested=job.request.model.name,
            model_used=result.model,
            latency_ms=result.latency_ms,
            warnings=list(job.request.warnings),
            cost_usd=result.cost_usd,  # unset (None) when the model has no price
        )
    )
    return msg


def job_message(job: Job, images: list[bytes] | None = None, base_url: str = "") -> jobs_pb2.Job:
    """The typed `Job`; unset fields stay unset. `images`: the result images' bytes when
    `inlines(job)` (the caller fetched them), else None."""
    msg = jobs_pb2.Job(
        id=job.id,
        request_id=job.request_id,
        status=status_enum(job.status),
        kind=kind_enum(job.kind),
        created_at=_timestamp(job.created_at),
    )
    if job.completed_at is not None:
        msg.completed_at.CopyFrom(_timestamp(job.completed_at))
    if job.expires_at is not None:
        msg.expires_at.CopyFrom(_timestamp(job.expires_at))
    if job.status_code is not None:
        msg.status_code = job.status_code
    if job.status is Status.COMPLETED and job.result is not None:
        msg.result.CopyFrom(result_message(job, job.result, images, base_url))
    if job.error is not None:
        msg.error.CopyFrom(error_message(job))
    return msg


def delivery_message(record: DeliveryRecord) -> jobs_pb2.WebhookDelivery:
    """A delivery as the `WebhookDelivery` message."""
    msg = jobs_pb2.WebhookDelivery(
        webhook_id=record.webhook_id,
        endpoint=record.endpoint,
        event=record.event.value,
        status=jobs_pb2.WebhookDelivery.Status.Value(f"STATUS_{record.status.name}"),
        created_at=_timestamp(record.created_at),
        endpoint_gone=record.gone,
        total_attempts=record.total_attempts,
        round=record.round,
    )
    if not record.finished and record.next_attempt_at is not None:
        msg.next_attempt_at.CopyFrom(_timestamp(record.next_attempt_at))
    for attempt in record.attempts:
        item = msg.attempts.add(
            attempted_at=_timestamp(attempt.at),
            error=attempt.error,
            duration_ms=attempt.duration_ms,
            outcome=jobs_pb2.WebhookAttempt.Outcome.Value(f"OUTCOME_{attempt.outcome.name}"),
        )
        if attempt.status_code is not None:
            item.status_code = attempt.status_code
    return msg
