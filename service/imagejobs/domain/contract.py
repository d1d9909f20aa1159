"""A job in the contract's terms, as plain data: its images response (`result`) and its
error body. Pure; shared by the API's REST and gRPC renderings (api/) and by webhook
payloads (webhooks/), so that a result or an error reads the same wherever it is sent."""

from __future__ import annotations

from typing import Any

import pybase64

from imagejobs.domain.errors import ErrorBody
from imagejobs.domain.jobs import Job


def image_url(base_url: str, job: Job, index: int) -> str:
    """The REST route of one result image (what the `url` response format links to)."""
    return f"{base_url}/v1/async/images/{job.kind.value}/{job.id}/images/{index}"


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
            item["url"] = image_url(base_url, job, i)
        elif images is not None:
            item["b64_json"] = pybase64.b64encode_as_string(images[i])
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
    if result.cost_usd is not None:  # absent, not 0, for a model with no price
        out["extra_fields"]["cost_usd"] = result.cost_usd
    if job.request.warnings:  # deprecated models named at submit (providers/catalogue.py)
        out["extra_fields"]["warnings"] = list(job.request.warnings)
    return out


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
