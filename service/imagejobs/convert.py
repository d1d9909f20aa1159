"""Job records -> the wire's `Job` message (and so, through Envoy, the contract's JSON)."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from imagejobs.errors import error_response
from imagejobs.jobs import Job, Status
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
        "model_requested": job.request.model.split("/", 1)[1],
        "model_used": result.model,
        "latency": result.latency_ms,
    }
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
        err = job.error
        msg.error.CopyFrom(
            error_response(
                status_code=err.status_code,
                type=err.type,
                code=err.code,
                message=err.message,
                param=err.param,
                provider=err.provider or job.provider,
                model=err.model or job.request.model.split("/", 1)[1],
                request_type=job.kind.request_type,
            )
        )
    return msg
