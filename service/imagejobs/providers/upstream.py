"""One HTTP exchange with a vendor: send a request, read an error response, fetch a
result URL. Every httpx failure is translated into a `ProviderError` here and nowhere
else: timeouts and connection errors are retryable, HTTP statuses >= 400 carry the
upstream's own type/code/message/param, and `Retry-After` becomes `retry_after`.

Error bodies come in a few common shapes (`{"error": {...}}`, `{"error": "..."}`,
`{"detail": ...}`, Stability's `{"name", "errors": [...]}`), read by `parse_error`.
A vendor with more to say (AWS error names, Google's `RetryInfo`) passes its own
`ErrorParser`, which usually starts from `parse_error` (bedrock.py, google_common.py).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from imagejobs.domain.errors import ErrorCode, ErrorType, ProviderError
from imagejobs.domain.images import sniff_type
from imagejobs.providers.base import ImageOut, JSONValue

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class UpstreamError:
    """What an error response says, before it becomes a ProviderError. None = not said;
    `retry_after` is in seconds."""

    message: str | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None


ErrorParser = Callable[[httpx.Response, JSONValue], UpstreamError]


def no_answer(message: str, *, unreachable: bool = False) -> ProviderError:
    """The retryable error for a call that got no answer: timed out (`upstream_timeout`),
    or, with `unreachable`, never connected (`upstream_unreachable`)."""
    if unreachable:
        return ProviderError(
            message,
            type=ErrorType.CONNECTION,
            code=ErrorCode.UPSTREAM_UNREACHABLE,
            retryable=True,
        )
    return ProviderError(
        message, type=ErrorType.TIMEOUT, code=ErrorCode.UPSTREAM_TIMEOUT, retryable=True
    )


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


def _text(value: JSONValue) -> str | None:
    return str(value) if value is not None else None


def parse_error(response: httpx.Response, body: JSONValue) -> UpstreamError:
    """The common vendor error shapes, and the `Retry-After` header."""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if not isinstance(body, dict):
        return UpstreamError(retry_after=retry_after)
    err = body.get("error", body)
    if isinstance(err, str):
        return UpstreamError(message=err, retry_after=retry_after)
    if not isinstance(err, dict):
        return UpstreamError(retry_after=retry_after)
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
    return UpstreamError(
        message=_text(message),
        type=_text(etype),
        code=_text(err.get("code")),
        param=_text(err.get("param")),
        retry_after=retry_after,
    )


def error_from_response(
    response: httpx.Response, provider: str, *, parse: ErrorParser = parse_error
) -> ProviderError:
    """A ProviderError carrying the upstream status and what `parse` read from the body;
    without a message, the start of the body (or the status) stands in."""
    try:
        body: JSONValue = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    said = parse(response, body)
    message = said.message
    if not message:
        text = response.text.strip()[:500] if response.content else ""
        message = text or f"{provider} returned HTTP {response.status_code}"
    status = response.status_code
    default_type = ErrorType.RATE_LIMIT if status == 429 else ErrorType.UPSTREAM
    return ProviderError(
        message,
        status_code=status,
        type=said.type or default_type,
        code=said.code,
        param=said.param,
        retryable=status in RETRYABLE_STATUSES,
        retry_after=said.retry_after,
    )


async def send(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    provider: str,
    timeout_s: float,
    parse: ErrorParser = parse_error,
) -> httpx.Response:
    """Send one upstream request, waiting at most `timeout_s` seconds; any HTTP status
    >= 400 (read by `parse`) or transport failure becomes a ProviderError (timeouts and
    connection errors are retryable). Returns a read response."""
    try:
        response = await asyncio.wait_for(http.send(request), timeout=timeout_s)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise no_answer(f"{provider} did not answer within {timeout_s:g} s") from exc
    except httpx.TransportError as exc:
        message = f"could not reach {provider}: {type(exc).__name__}"
        raise no_answer(message, unreachable=True) from exc
    if response.status_code >= 400:
        raise error_from_response(response, provider, parse=parse)
    return response


async def download(
    http: httpx.AsyncClient,
    url: str,
    *,
    provider: str,
    timeout_s: float,
    max_bytes: int,
) -> ImageOut:
    """Fetch a result image URL (they expire within minutes) and return its bytes; a body
    over `max_bytes` is a ProviderError `result_too_large`. No credentials are sent:
    result URLs are pre-signed and may live on another host."""
    response = await send(
        http,
        http.build_request("GET", url),
        provider=provider,
        timeout_s=timeout_s,
    )
    if len(response.content) > max_bytes:
        raise ProviderError(
            f"{provider} result image is larger than {max_bytes} bytes",
            type=ErrorType.UPSTREAM,
            code=ErrorCode.RESULT_TOO_LARGE,
        )
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    return ImageOut(
        data=response.content, content_type=content_type or sniff_type(response.content)
    )
