"""Following an asynchronous upstream task (a Replicate prediction, a BFL task) until it
ends, and the small pieces both of those adapters share.

`follow_task` GETs the task's status URL every `interval_s` seconds until its status is
terminal, all within one deadline (a `time.monotonic()` instant; the adapters pass
`start + config.timeout_s`). A transient failure of one poll (429, 5xx, a timeout) does
not fail the job: the task is still running upstream, so the poll is simply tried again
(after `Retry-After` when given) until the deadline. A terminal failure state becomes the
ProviderError the vendor's `on_failure` builds; running past the deadline is a retryable
`upstream_timeout`, like a timed-out call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from imagejobs.providers.base import ImageOut, ProviderError, send, sniff_type

TaskDoc = dict[str, Any]  # a vendor's task/prediction JSON object


@dataclass(frozen=True)
class TaskStates:
    """Which values of a task's status field end it. Any other value (including one the
    vendor adds later) means "still running" and is polled again."""

    succeeded: frozenset[str]
    failed: frozenset[str]
    key: str = "status"

    def status_of(self, doc: Mapping[str, Any]) -> str:
        value = doc.get(self.key)
        return value if isinstance(value, str) else ""


def json_object(response: httpx.Response, provider: str) -> TaskDoc:
    """The response body as a JSON object; a 502 ProviderError when it is not one."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ProviderError(
            f"{provider} returned an unreadable response (HTTP {response.status_code})",
            status_code=502,
            type="upstream_error",
            code="invalid_response",
        )
    return body


def timed_out(provider: str, timeout_s: float) -> ProviderError:
    """The error for a task still unfinished at the deadline (retryable, like a timeout)."""
    return ProviderError(
        f"{provider} did not finish the task within {timeout_s:g} s",
        type="timeout_error",
        code="upstream_timeout",
        retryable=True,
    )


async def follow_task(
    http: httpx.AsyncClient,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    states: TaskStates,
    on_failure: Callable[[TaskDoc, str], ProviderError],
    interval_s: float,
    deadline: float,
    timeout_s: float,
    first: TaskDoc | None = None,
) -> TaskDoc:
    """Poll `url` (GET with `headers`) until the task succeeds, and return its last
    document. `first` is the document the create call returned, checked before any poll.
    `timeout_s` is the overall bound, used for each poll and in the timeout message."""
    doc = first
    while True:
        if doc is not None:
            status = states.status_of(doc)
            if status in states.succeeded:
                return doc
            if status in states.failed:
                raise on_failure(doc, status)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timed_out(provider, timeout_s)
        await asyncio.sleep(min(interval_s, remaining))
        doc = await _poll_once(http, url, provider, headers, deadline, timeout_s, interval_s)


async def _poll_once(
    http: httpx.AsyncClient,
    url: str,
    provider: str,
    headers: Mapping[str, str],
    deadline: float,
    timeout_s: float,
    interval_s: float,
) -> TaskDoc:
    """One status read; transient failures are retried until the deadline."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timed_out(provider, timeout_s)
        try:
            response = await send(
                http,
                http.build_request("GET", url, headers=dict(headers)),
                provider=provider,
                timeout_s=min(timeout_s, remaining),
            )
        except ProviderError as exc:
            if not exc.retryable:
                raise
            pause = max(interval_s, exc.retry_after or 0.0)
            if time.monotonic() + pause >= deadline:
                raise
            await asyncio.sleep(pause)
            continue
        return json_object(response, provider)


def decode_data_url(url: str, provider: str) -> ImageOut:
    """A `data:image/png;base64,...` URL (some vendors answer with one) as image bytes."""
    header, sep, payload = url.partition(",")
    try:
        if not sep or ";base64" not in header:
            raise ValueError("not a base64 data URL")
        data = base64.b64decode(payload, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ProviderError(
            f"{provider} returned an undecodable data URL",
            status_code=502,
            type="upstream_error",
            code="invalid_response",
        ) from exc
    content_type = header[len("data:") :].split(";")[0].strip()
    return ImageOut(data=data, content_type=content_type or sniff_type(data))


def data_url(data: bytes, content_type: str) -> str:
    """Bytes as a base64 `data:` URL."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
