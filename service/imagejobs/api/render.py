"""Job records -> the wire's `Job` message (and so, through Envoy, the contract's JSON)."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from imagejobs.domain.errors import ErrorBody
from imagejobs.domain.jobs import Job, Status, rfc3339
from imagejobs.v1 import jobs_pb2


def _timestamp(epoch_s: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(epoch_s * 1000))  # the contract prints milliseconds
    return ts


def result_dict(
    job: Job, images: list[bytes] | None, base_url: str, *, links: bool = False
) -> dict[str, Any]:
    """The contract's images response for a completed job. `images` holds the bytes of
    each image for `b64_json`; for `url` (or with `links`, as in lists), links to our own
    image route are given."""
    assert job.result is not None
    result = job.result
    data: list[dict[str, Any]] = []
    for i, image in enumerate(result.images):
        item: dict[str, Any] = {"index": i}
        if links or job.request.response_format == "url":
            item["url"] = f"{base_url}/v1/async/images/{job.kind.value}/{job.id}/images/{i}"
        elif images is not None:
            item["b64_json"] = base64.b64encode(images[i]).decode()
        if image.revised_prompt:
            item["revised_prompt"] = image.revised_prompt
        data.append(item)
    out: dict[str, Any] = {"created": result.created, "data": data}
    out.update({k: v for k, v in result.fields.items() if v is not None})
    if result.usage:
        out["usage"] = result.usage
    out["extra_fields"] = {
        "request_type": job.kind.request_type,
        "provider": result.provider,
        "model_requested": job.request.model.name,
        "model_used": result.model,
        "latency": result.latency_ms,
    }
    if job.request.warnings:  # deprecated models named at submit (providers/catalogue.py)
        out["extra_fields"]["warnings"] = list(job.request.warnings)
    return out


def job_message(
    job: Job, images: list[bytes] | None = None, base_url: str = "", *, links: bool = False
) -> jobs_pb2.Job:
    """The `Job` message; unset fields stay unset (and are omitted from JSON)."""
    msg = jobs_pb2.Job(
        id=job.id,
        request_id=job.request_id,
        status=job.status.value,
        created_at=_timestamp(job.created_at),
    )
    if job.completed_at is not None:
        msg.completed_at.CopyFrom(_timestamp(job.completed_at))
    if job.expires_at is not None:
        msg.expires_at.CopyFrom(_timestamp(job.expires_at))
    if job.status_code is not None:
        msg.status_code = job.status_code
    if job.status is Status.COMPLETED and job.result is not None:
        struct = struct_pb2.Struct()
        struct.update(result_dict(job, images, base_url, links=links))
        msg.result.CopyFrom(struct)
    if job.error is not None:
        msg.error.CopyFrom(error_message(job))
    return msg


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


def error_body(job: Job) -> ErrorBody:
    """A failed or cancelled job's `error`, in the contract's error shape."""
    assert job.error is not None
    err = job.error
    return ErrorBody(
        status_code=err.status_code,
        type=err.type,
        code=err.code,
        message=err.message,
        param=err.param,
        event_id=err.event_id,
        provider=err.provider or job.provider,
        model=err.model or job.request.model.name,
        request_type=job.kind.request_type,
    )


def error_message(job: Job) -> jobs_pb2.ErrorResponse:
    """A failed or cancelled job's `error` as the `ErrorResponse` message."""
    return error_proto(error_body(job))


def job_json(
    job: Job, images: list[bytes] | None = None, base_url: str = "", *, links: bool = False
) -> bytes:
    """The job as the REST contract prints it: what Envoy's transcoder would print for
    `job_message` (proto field order, unset fields omitted), rendered here, so that a
    large result's base64 never passes through a protobuf Struct. Times always carry
    milliseconds."""
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
        pieces += [head, b'"', base64.b64encode(images[i]), b'"']
    pieces.append(text)
    return b"".join(pieces)


def list_json(jobs: list[bytes], next_page_token: str) -> bytes:
    """A list page as the REST contract prints it: `{"jobs": [...], "next_page_token": …}`
    with both keys always present; `jobs` are `job_json` renderings (with `links`)."""
    token = json.dumps(next_page_token).encode()
    return b'{"jobs":[' + b",".join(jobs) + b'],"next_page_token":' + token + b"}"
