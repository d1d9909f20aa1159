"""The seam between workers and vendors: what a provider is given, returns and raises.

A provider adapter turns one normalised `ProviderRequest` into one vendor HTTP exchange
(or a few: fan-out for `n`, polling a prediction, downloading result URLs) and returns
image *bytes*. It never retries (the worker's retry policy does, from the error's
`retryable` flag and `retry_after`), never logs secrets, and never lets an httpx error
escape: `send()` and `download()` below translate them, here and nowhere else.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from imagejobs.domain.errors import ProviderError, ProviderNotConfigured, UnsupportedOperation
from imagejobs.domain.kinds import Kind
from imagejobs.safefetch import FetchPolicy

JSONValue = Any  # a value json.loads could return; kept loose at this single seam


# --- what an adapter is configured with ------------------------------------------------


@dataclass(frozen=True)
class WeightedKey:
    """One credential for a provider; keys are picked at random in proportion to weight."""

    value: str
    weight: float = 1.0

    def __repr__(self) -> str:  # never print the secret
        return f"WeightedKey(value=<redacted>, weight={self.weight})"


@dataclass(frozen=True)
class ProviderConfig:
    """Everything one provider needs, read once from settings. Secrets are redacted in repr."""

    name: str
    keys: tuple[WeightedKey, ...] = ()
    base_url: str = ""  # '' = the vendor's public default
    timeout_s: float = 300.0  # one upstream call; image models take minutes
    max_retries: int = 3
    concurrency: int = 16
    region: str = ""
    project: str = ""
    api_version: str = ""
    deployments: Mapping[str, str] = field(default_factory=dict)  # azure: model -> deployment
    credentials_file: str = ""  # vertex: a service-account JSON file
    aws_secret_access_key: str = field(default="", repr=False)  # bedrock; key id in `keys`
    aws_session_token: str = field(default="", repr=False)
    max_download_bytes: int = 64 * 1024 * 1024
    poll_interval_s: float = 1.0  # replicate/bfl: between prediction polls
    fetch: FetchPolicy = field(default_factory=FetchPolicy)  # caller-given input image URLs

    def pick_key(self) -> str:
        """A key chosen by weight; '' when none is configured."""
        if not self.keys:
            return ""
        if len(self.keys) == 1:
            return self.keys[0].value
        weights = [max(k.weight, 0.0) for k in self.keys]
        return random.choices(self.keys, weights=weights or None)[0].value

    def require_key(self) -> str:
        """A key chosen by weight; ProviderNotConfigured when none is configured."""
        key = self.pick_key()
        if not key:
            raise ProviderNotConfigured(self.name)
        return key

    def secrets(self) -> tuple[str, ...]:
        """Every secret in this config, for scrubbing error text."""
        values = [k.value for k in self.keys]
        values += [self.aws_secret_access_key, self.aws_session_token]
        return tuple(v for v in values if v)


# --- what an adapter is given -------------------------------------------------------------


@dataclass(frozen=True)
class ImageInput:
    """An uploaded image (or mask) as bytes."""

    data: bytes
    content_type: str = "image/png"
    filename: str = "image.png"


@dataclass(frozen=True)
class ProviderRequest:
    """One validated job request, as a provider sees it.

    `model` has the provider prefix removed (`openai/gpt-image-1` -> `gpt-image-1`).
    `params` holds every other request field the client sent — the known optional ones
    (`n`, `size`, `quality`, `style`, `response_format`, `background`, `moderation`,
    `output_format`, `output_compression`, `partial_images`, `seed`, `negative_prompt`,
    `num_inference_steps`, `user`, `input_images`, `aspect_ratio`, `resolution`, `type`,
    `input_fidelity`) with their JSON types, plus unknown keys to pass through unchanged.
    It never holds `model`, `prompt`, `fallbacks` or `stream`.
    `attempt` counts provider calls for this job, from 1, across retries and redeliveries.
    """

    kind: Kind
    model: str
    prompt: str | None = None
    params: Mapping[str, JSONValue] = field(default_factory=dict)
    images: tuple[ImageInput, ...] = ()
    mask: ImageInput | None = None
    attempt: int = 1

    @property
    def n(self) -> int:
        """How many images were asked for (default 1)."""
        value = self.params.get("n")
        return int(value) if isinstance(value, int) and value > 0 else 1

    def param_str(self, name: str) -> str | None:
        """A string parameter, or None when absent or empty."""
        value = self.params.get(name)
        return value if isinstance(value, str) and value else None

    def param_int(self, name: str) -> int | None:
        """An integer parameter, or None when absent."""
        value = self.params.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- what an adapter returns -----------------------------------------------------------


@dataclass(frozen=True)
class ImageOut:
    """One result image, always as bytes (URLs are downloaded by the adapter at once)."""

    data: bytes
    content_type: str = "image/png"
    revised_prompt: str | None = None


@dataclass(frozen=True)
class ProviderResult:
    """A provider's answer. `fields` holds the response's top-level extras the contract
    echoes (`background`, `output_format`, `quality`, `size`); `usage` is passed through
    when the vendor reports it."""

    images: tuple[ImageOut, ...]
    usage: Mapping[str, JSONValue] | None = None
    fields: Mapping[str, JSONValue] = field(default_factory=dict)


# --- what an adapter raises: ProviderError and its kin (domain/errors.py) ---------------

__all__ = ["ProviderError", "ProviderNotConfigured", "UnsupportedOperation"]

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


# --- the protocol --------------------------------------------------------------------------


class Provider(Protocol):
    """One vendor. Instances are built once per worker with `build(config, http)`."""

    name: str
    operations: frozenset[Kind]

    async def run(self, request: ProviderRequest) -> ProviderResult:
        """Perform `request` (its kind is in `operations`) and return image bytes."""
        ...


ProviderFactory = Callable[[ProviderConfig, httpx.AsyncClient], Provider]


# --- shared helpers for adapters -------------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _error_fields(body: JSONValue) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, type, code, param) from the common vendor error shapes."""
    if not isinstance(body, dict):
        return None, None, None, None
    err = body.get("error", body)
    if isinstance(err, str):
        return err, None, None, None
    if not isinstance(err, dict):
        return None, None, None, None
    message = err.get("message") or body.get("message") or body.get("detail")
    errors = body.get("errors")  # Stability: {"name": …, "errors": ["…", …]}
    if not message and isinstance(errors, list):
        message = "; ".join(str(e) for e in errors if e) or None
    if isinstance(message, list | dict):
        message = json.dumps(message)
    status = err.get("status")  # Google: "INVALID_ARGUMENT"; problem+json: 422 (no type)
    named_status = isinstance(status, str) and not status.isdigit()
    etype = err.get("type") or (status if named_status else None)
    if etype is None and isinstance(errors, list):
        etype = body.get("name")
    code = err.get("code")
    param = err.get("param")
    return (
        str(message) if message is not None else None,
        str(etype) if etype is not None else None,
        str(code) if code is not None else None,
        str(param) if param is not None else None,
    )


# AWS error names (the `x-amzn-ErrorType` header, or a JSON body's `__type`) -> the
# contract's error types; the name itself becomes `code`. Names not listed keep the
# status-based default type.
AWS_ERROR_TYPES = {
    "ValidationException": "invalid_request_error",
    "SerializationException": "invalid_request_error",
    "AccessDeniedException": "permission_error",
    "UnrecognizedClientException": "authentication_error",
    "InvalidSignatureException": "authentication_error",
    "IncompleteSignatureException": "authentication_error",
    "MissingAuthenticationTokenException": "authentication_error",
    "ExpiredTokenException": "authentication_error",
    "ResourceNotFoundException": "not_found_error",
    "ThrottlingException": "rate_limit_error",
    "ServiceQuotaExceededException": "rate_limit_error",
    "TooManyRequestsException": "rate_limit_error",
    "ModelTimeoutException": "timeout_error",
    "ModelNotReadyException": "api_error",
    "ModelErrorException": "api_error",
    "InternalServerException": "api_error",
    "ServiceUnavailableException": "api_error",
}
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)s\s*")


def aws_error_name(response: httpx.Response, body: JSONValue) -> str | None:
    """The AWS error code of an error response, as botocore reads it: the
    `x-amzn-ErrorType` header (`ThrottlingException:http://…`), else the body's `code` or
    `__type` (`com.amazon.coral.service#ThrottlingException`); None when neither is set."""
    raw = response.headers.get("x-amzn-errortype")
    if not raw and isinstance(body, dict):
        value = body.get("__type")
        raw = value if isinstance(value, str) else None
    if not raw:
        return None
    name = raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return name or None


def google_retry_delay(body: JSONValue) -> float | None:
    """The `retryDelay` of a Google error's `google.rpc.RetryInfo` detail, in seconds
    (`{"error": {"details": [{"@type": "…RetryInfo", "retryDelay": "2s"}]}}`)."""
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict) or detail.get("@type") != RETRY_INFO_TYPE:
            continue
        delay = detail.get("retryDelay")
        match = _DURATION_RE.fullmatch(delay) if isinstance(delay, str) else None
        if match:
            return float(match.group(1))
    return None


def error_from_response(response: httpx.Response, provider: str) -> ProviderError:
    """A ProviderError carrying the upstream status and its type/code/message/param.

    Besides the common `{"error": {…}}` shapes, an AWS error name (Bedrock's
    `x-amzn-ErrorType`) becomes `code` and picks the type, and a Google `RetryInfo`
    `retryDelay` is the retry delay when there is no `Retry-After` header."""
    try:
        body: JSONValue = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    message, etype, code, param = _error_fields(body)
    aws_name = aws_error_name(response, body)
    if aws_name:
        code = aws_name
        etype = etype or AWS_ERROR_TYPES.get(aws_name)
        if not message and isinstance(body, dict) and body.get("Message"):
            message = str(body["Message"])
    if not message:
        text = response.text.strip()[:500] if response.content else ""
        message = text or f"{provider} returned HTTP {response.status_code}"
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if retry_after is None:
        retry_after = google_retry_delay(body)
    return ProviderError(
        message,
        status_code=status,
        type=etype or ("rate_limit_error" if status == 429 else "upstream_error"),
        code=code,
        param=param,
        retryable=status in RETRYABLE_STATUSES,
        retry_after=retry_after,
    )


async def send(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    provider: str,
    timeout_s: float,
) -> httpx.Response:
    """Send one upstream request; any HTTP status >= 400 or transport failure becomes a
    ProviderError (timeouts and connection errors are retryable). Returns a read response.
    """
    try:
        response = await asyncio.wait_for(http.send(request), timeout=timeout_s)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ProviderError(
            f"{provider} did not answer within {timeout_s:g} s",
            type="timeout_error",
            code="upstream_timeout",
            retryable=True,
        ) from exc
    except httpx.TransportError as exc:
        raise ProviderError(
            f"could not reach {provider}: {type(exc).__name__}",
            type="connection_error",
            code="upstream_unreachable",
            retryable=True,
        ) from exc
    if response.status_code >= 400:
        raise error_from_response(response, provider)
    return response


async def download(
    http: httpx.AsyncClient,
    url: str,
    *,
    provider: str,
    timeout_s: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
) -> ImageOut:
    """Fetch a result image URL (they expire within minutes) and return its bytes."""
    response = await send(
        http,
        http.build_request("GET", url, headers=dict(headers or {})),
        provider=provider,
        timeout_s=timeout_s,
    )
    if len(response.content) > max_bytes:
        raise ProviderError(
            f"{provider} result image is larger than {max_bytes} bytes",
            type="upstream_error",
            code="result_too_large",
        )
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    return ImageOut(
        data=response.content, content_type=content_type or sniff_type(response.content)
    )


def sniff_type(data: bytes) -> str:
    """The image MIME type from magic bytes (png, jpeg, webp, gif), else octet-stream."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


async def fan_out(
    request: ProviderRequest,
    per_call: int,
    call: Callable[[int, int], Awaitable[ProviderResult]],
) -> ProviderResult:
    """Serve `request.n` images from a provider that returns at most `per_call` per call:
    run `call(count, index)` concurrently for each batch (index 0, 1, …) and merge the
    results in order. Adapters derive per-batch seeds from the index (`seed_for`)."""
    wanted = request.n
    if wanted <= per_call:
        return await call(wanted, 0)
    counts = [per_call] * (wanted // per_call)
    if wanted % per_call:
        counts.append(wanted % per_call)
    results = await asyncio.gather(*(call(c, i) for i, c in enumerate(counts)))
    images = tuple(img for r in results for img in r.images)
    usage = results[0].usage if len(results) == 1 else merge_usage([r.usage for r in results])
    return ProviderResult(images=images, usage=usage, fields=results[0].fields)


def seed_for(seed: int | None, index: int) -> int | None:
    """The seed of fan-out batch `index`: `seed + index`, so that n images with a fixed
    seed are not n copies of the first; None stays None."""
    return None if seed is None else seed + index


def merge_usage(
    usages: list[Mapping[str, JSONValue] | None],
) -> Mapping[str, JSONValue] | None:
    """Sum the numeric token counts of several usage objects (nested dicts too)."""
    present = [u for u in usages if u]
    if not present:
        return None

    def add(a: dict[str, JSONValue], b: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
        for key, value in b.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                a[key] = a.get(key, 0) + value
            elif isinstance(value, Mapping):
                a[key] = add(dict(a.get(key) or {}), value)
            else:
                a.setdefault(key, value)
        return a

    total: dict[str, JSONValue] = {}
    for usage in present:
        total = add(total, usage)
    return total
