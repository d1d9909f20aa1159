"""What the SDK hands back: frozen dataclasses made from the typed gRPC messages.

`Job.status` and `Job.kind` are the package's `Status` and `Kind` (string enums whose
values are the REST contract's words, `"completed"`, `"generations"`); times are aware
UTC datetimes; image bytes are raw (`Image.data`), never base64.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from imagejobs.client.errors import error_body
from imagejobs.domain.errors import ErrorBody
from imagejobs.domain.jobs import Status, rfc3339
from imagejobs.domain.kinds import Kind
from imagejobs.domain.wire import kind_of, status_of
from imagejobs.v1 import jobs_pb2

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True)
class Image:
    """One result image. `data` is its bytes; it is empty (b"") only in jobs from
    `list()`, which never carry image bytes: `get()` the job for them."""

    index: int
    data: bytes
    mime_type: str
    size_bytes: int
    url: str = ""
    revised_prompt: str | None = None

    @property
    def extension(self) -> str:
        """`png`, `jpg` or `webp` (from `mime_type`; `bin` for anything else)."""
        return EXTENSIONS.get(self.mime_type, "bin")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image's bytes to `path` (a file, replaced if it exists); returns it.
        ValueError for an image without bytes (a `list()` entry's)."""
        if not self.data and self.size_bytes:
            raise ValueError(f"image {self.index} has no bytes here; get() the job for them")
        target = Path(path)
        target.write_bytes(self.data)
        return target


@dataclass(frozen=True)
class TokenDetails:
    """Tokens by modality."""

    text_tokens: int = 0
    image_tokens: int = 0


@dataclass(frozen=True)
class Usage:
    """Token counts as the provider reported them; `other` holds any further whole-number
    counter it reported (e.g. xAI's `cost_in_usd_ticks`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: TokenDetails | None = None
    output_tokens_details: TokenDetails | None = None
    other: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    """A completed job's images response. `created` is in seconds since the epoch;
    `provider`, `model_used` and `latency_ms` are REST's `extra_fields`."""

    created: int
    images: tuple[Image, ...]
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    usage: Usage | None = None
    request_type: str = ""
    provider: str = ""
    model_requested: str = ""
    model_used: str = ""
    latency_ms: int = 0
    cost_usd: float | None = None  # None when the serving model has no price


@dataclass(frozen=True)
class Job:
    """A job as the server reported it. `result` only when completed; `error` (the
    contract's error body) only when failed or cancelled."""

    id: str
    kind: Kind
    status: Status
    request_id: str
    created_at: datetime
    completed_at: datetime | None = None
    expires_at: datetime | None = None
    status_code: int | None = None
    result: JobResult | None = None
    error: ErrorBody | None = None

    @property
    def terminal(self) -> bool:
        """True once completed, failed or cancelled (the job never changes again)."""
        return self.status.terminal

    def with_images(self, images: tuple[Image, ...]) -> Job:
        """This job with its result's images replaced (once their bytes are fetched)."""
        assert self.result is not None
        return dataclasses.replace(self, result=dataclasses.replace(self.result, images=images))

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready data in the REST contract's shape and words, images
        described (`index`, `url`, `mime_type`, `size_bytes`, `revised_prompt`) but never
        inlined; `kind` added. Unset fields are left out."""
        doc: dict[str, Any] = {
            "id": self.id,
            "request_id": self.request_id,
            "kind": self.kind.value,
            "status": self.status.value,
            "created_at": rfc3339(self.created_at.timestamp()),
        }
        for name in ("completed_at", "expires_at"):
            value: datetime | None = getattr(self, name)
            if value is not None:
                doc[name] = rfc3339(value.timestamp())
        if self.status_code is not None:
            doc["status_code"] = self.status_code
        if self.result is not None:
            doc["result"] = _result_dict(self.result)
        if self.error is not None:
            doc["error"] = self.error.to_dict()
        return doc


def _result_dict(result: JobResult) -> dict[str, Any]:
    images = [
        {
            k: v
            for k, v in {
                "index": i.index,
                "url": i.url,
                "mime_type": i.mime_type,
                "size_bytes": i.size_bytes,
                "revised_prompt": i.revised_prompt,
            }.items()
            if v not in (None, "")
        }
        for i in result.images
    ]
    out: dict[str, Any] = {"created": result.created, "data": images}
    for name in ("background", "output_format", "quality", "size"):
        if getattr(result, name) is not None:
            out[name] = getattr(result, name)
    if result.usage is not None:
        usage = dataclasses.asdict(result.usage)
        out["usage"] = {k: v for k, v in usage.items() if v not in (None, {})}
    out["extra_fields"] = {
        "request_type": result.request_type,
        "provider": result.provider,
        "model_requested": result.model_requested,
        "model_used": result.model_used,
        "latency": result.latency_ms,
    }
    if result.cost_usd is not None:
        out["extra_fields"]["cost_usd"] = result.cost_usd
    return out


# --- from the wire ------------------------------------------------------------------------


def _time(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _details(msg: jobs_pb2.TokenDetails) -> TokenDetails:
    return TokenDetails(text_tokens=msg.text_tokens, image_tokens=msg.image_tokens)


def _usage(msg: jobs_pb2.Usage) -> Usage:
    return Usage(
        input_tokens=msg.input_tokens,
        output_tokens=msg.output_tokens,
        total_tokens=msg.total_tokens,
        input_tokens_details=(
            _details(msg.input_tokens_details) if msg.HasField("input_tokens_details") else None
        ),
        output_tokens_details=(
            _details(msg.output_tokens_details) if msg.HasField("output_tokens_details") else None
        ),
        other=dict(msg.other),
    )


def _text(value: str) -> str | None:
    return value or None


def result_of(msg: jobs_pb2.JobResult) -> JobResult:
    """The typed result message as a `JobResult` (image bytes as inlined, maybe none)."""
    extra = msg.extra_fields
    return JobResult(
        created=msg.created,
        images=tuple(
            Image(
                index=i.index,
                data=i.data,
                mime_type=i.mime_type,
                size_bytes=i.size_bytes,
                url=i.url,
                revised_prompt=_text(i.revised_prompt),
            )
            for i in msg.images
        ),
        background=_text(msg.background),
        output_format=_text(msg.output_format),
        quality=_text(msg.quality),
        size=_text(msg.size),
        usage=_usage(msg.usage) if msg.HasField("usage") else None,
        request_type=extra.request_type,
        provider=extra.provider,
        model_requested=extra.model_requested,
        model_used=extra.model_used,
        latency_ms=extra.latency_ms,
        cost_usd=extra.cost_usd if extra.HasField("cost_usd") else None,
    )


def job_of(msg: jobs_pb2.Job) -> Job:
    """The typed `Job` message as a `Job`. ValueError for a status or kind this SDK does
    not know (a newer server's)."""
    status = status_of(msg.status)
    kind = kind_of(msg.kind)
    if status is None or kind is None:
        raise ValueError(f"job {msg.id} came without a status or kind")
    return Job(
        id=msg.id,
        kind=kind,
        status=status,
        request_id=msg.request_id,
        created_at=_time(msg.created_at),
        completed_at=_time(msg.completed_at) if msg.HasField("completed_at") else None,
        expires_at=_time(msg.expires_at) if msg.HasField("expires_at") else None,
        status_code=msg.status_code if msg.HasField("status_code") else None,
        result=result_of(msg.result) if msg.HasField("result") else None,
        error=error_body(msg.error) if msg.HasField("error") else None,
    )


@dataclass(frozen=True)
class KeyUsage:
    """A virtual key's spend in its current budget period (USD): `spent_usd` by jobs that
    ended, `reserved_usd` by jobs not ended yet; `budget_usd` and `remaining_usd` None
    without a budget, `period_start` and `resets_at` None for a `total` one."""

    key: str
    period: str
    spent_usd: float
    reserved_usd: float
    queued_jobs: int
    max_queued_jobs: int
    budget_usd: float | None = None
    remaining_usd: float | None = None
    period_start: datetime | None = None
    resets_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """As `GET /v1/async/images/usage` prints it (unset fields left out)."""
        doc: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, datetime):
                value = rfc3339(value.timestamp())
            if value is not None:
                doc[item.name] = value
        return doc


def key_usage_of(msg: jobs_pb2.GetUsageResponse) -> KeyUsage:
    """The usage report message as a `KeyUsage`."""
    has = msg.HasField
    return KeyUsage(
        key=msg.key,
        period=msg.period,
        spent_usd=msg.spent_usd,
        reserved_usd=msg.reserved_usd,
        queued_jobs=msg.queued_jobs,
        max_queued_jobs=msg.max_queued_jobs,
        budget_usd=msg.budget_usd if has("budget_usd") else None,
        remaining_usd=msg.remaining_usd if has("remaining_usd") else None,
        period_start=_time(msg.period_start) if has("period_start") else None,
        resets_at=_time(msg.resets_at) if has("resets_at") else None,
    )
