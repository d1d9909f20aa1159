"""Following an asynchronous upstream task (a Replicate prediction, a BFL task) until it
ends: `TaskAdapter`, the adapter base of both, and the small pieces they share.

`TaskAdapter.follow` GETs the task's status URL every `poll_interval_s` seconds until its
status is terminal, all within one deadline (an instant of the adapter's clock; the
adapters pass `start + config.timeout_s`). A transient failure of one poll (429, 5xx, a
timeout) does not fail the job: the task is still running upstream, so the poll is simply
tried again (after `Retry-After` when given) until the deadline. A terminal failure state
becomes the ProviderError the vendor's `task_error` builds; running past the deadline is
a retryable `upstream_timeout`, like a timed-out call. Every wait goes through the
adapter's `Clock`, so tests follow a task without sleeping.
"""

from __future__ import annotations

import abc
import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from imagejobs.domain.errors import BadUpstreamResponse, ErrorCode, ErrorType, ProviderError
from imagejobs.domain.images import sniff_type
from imagejobs.providers.adapter import Adapter, Vendor
from imagejobs.providers.base import (
    ImageOut,
)
from imagejobs.providers.upstream import no_answer, send

TaskDoc = dict[str, Any]  # a vendor's task/prediction JSON object
DEFAULT_POLL_INTERVAL_S = 1.0  # between polls, unless the settings say otherwise


@dataclass(frozen=True)
class TaskFailure:
    """How a task's failure state ends the job: the HTTP status, code and type the job's
    error carries, and whether a new task may succeed."""

    status_code: int
    code: ErrorCode
    type: ErrorType = ErrorType.UPSTREAM
    retryable: bool = False

    def error(self, message: str) -> ProviderError:
        return ProviderError(
            message,
            status_code=self.status_code,
            type=self.type,
            code=self.code,
            retryable=self.retryable,
        )


@dataclass(frozen=True)
class TaskStates:
    """Which values of a task's status field end it, and how each failure state ends
    the job. Any other value (including one the vendor adds later) means "still
    running" and is polled again."""

    succeeded: frozenset[str]
    failed: Mapping[str, TaskFailure]
    key: str = "status"

    def status_of(self, doc: Mapping[str, Any]) -> str:
        value = doc.get(self.key)
        return value if isinstance(value, str) else ""


def json_object(response: httpx.Response, provider: str) -> TaskDoc:
    """The response body as a JSON object; BadUpstreamResponse when it is not one."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        why = f"the body is not a JSON object (HTTP {response.status_code})"
        raise BadUpstreamResponse(provider, why)
    return body


def task_vendor(name: str, *, key_env: str, base_url: str) -> Vendor:
    """The `Vendor` of a task API: it takes `poll_interval_s` (default 1 s)."""
    options = {"poll_interval_s": DEFAULT_POLL_INTERVAL_S}
    return Vendor(name=name, key_env=key_env, base_url=base_url, options=options)


def timed_out(provider: str, timeout_s: float) -> ProviderError:
    """The error for a task still unfinished at the deadline (retryable, like a timeout)."""
    return no_answer(f"{provider} did not finish the task within {timeout_s:g} s")


class TaskAdapter(Adapter):
    """An adapter whose vendor answers a create call with a task to poll until it ends."""

    states: ClassVar[TaskStates]

    @abc.abstractmethod
    def failure_message(self, doc: TaskDoc, status: str) -> str:
        """The error message for a task that ended in `status`, one of `states.failed`."""

    def deadline(self) -> float:
        """The instant (of the adapter's clock) by which a task started now must end."""
        return self._clock.now() + self._config.timeout_s

    async def create(self, request: httpx.Request) -> TaskDoc:
        """Send the create call; its answer as a JSON object."""
        return json_object(await self.send(request), self.name)

    async def follow(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        deadline: float,
        first: TaskDoc | None = None,
    ) -> TaskDoc:
        """Poll `url` (GET with `headers`) until the task succeeds, and return its last
        document. `first` is the document the create call returned, checked before any
        poll; each wait is `poll_interval_s`, cut short by the deadline."""
        doc = first
        while True:
            if doc is not None:
                status = self.states.status_of(doc)
                if status in self.states.succeeded:
                    return doc
                if status in self.states.failed:
                    message = self.failure_message(doc, status)
                    raise self.states.failed[status].error(message)
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                raise timed_out(self.name, self._config.timeout_s)
            await self._clock.sleep(min(self._config.poll_interval_s, remaining))
            doc = await self._poll_once(url, headers, deadline)

    async def _poll_once(self, url: str, headers: Mapping[str, str], deadline: float) -> TaskDoc:
        """One status read; transient failures are retried until the deadline."""
        timeout_s = self._config.timeout_s
        while True:
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                raise timed_out(self.name, timeout_s)
            try:
                response = await send(
                    self._http,
                    self._http.build_request("GET", url, headers=dict(headers)),
                    provider=self.name,
                    timeout_s=min(timeout_s, remaining),
                    parse=self.parse_error,
                )
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                pause = max(self._config.poll_interval_s, exc.retry_after or 0.0)
                if self._clock.now() + pause >= deadline:
                    raise
                await self._clock.sleep(pause)
                continue
            return json_object(response, self.name)


def decode_data_url(url: str, provider: str) -> ImageOut:
    """A `data:image/png;base64,...` URL (some vendors answer with one) as image bytes."""
    header, sep, payload = url.partition(",")
    try:
        if not sep or ";base64" not in header:
            raise ValueError("not a base64 data URL")
        data = base64.b64decode(payload, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise BadUpstreamResponse(provider, "an undecodable data URL") from exc
    content_type = header[len("data:") :].split(";")[0].strip()
    return ImageOut(data=data, content_type=content_type or sniff_type(data))


def data_url(data: bytes, content_type: str) -> str:
    """Bytes as a base64 `data:` URL."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
