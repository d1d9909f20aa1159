"""One delivery attempt: the signed POST, through the SSRF guard.

Every attempt resolves the endpoint's host again and checks every address with
`safefetch` (loopback, private, link-local and metadata addresses refused, https
required) unless the endpoint sets `allow_private_network`; the connection goes to the
checked address, so DNS rebinding cannot move it. Redirects are never followed (a 3xx is
a failed attempt). The whole attempt, DNS included, has the endpoint's `timeout_s`.
The answer's body is never read.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import httpx

from imagejobs.domain.errors import ErrorCode, FetchError
from imagejobs.providers.upstream import parse_retry_after
from imagejobs.safefetch import FetchPolicy, Resolver, send_pinned
from imagejobs.webhooks.delivery import AttemptResult, DeliveryRecord
from imagejobs.webhooks.endpoints import Endpoint, WebhookSettings
from imagejobs.webhooks.signing import signed_headers

USER_AGENT = "Bifrost-Webhooks/1.0"  # the gateway's, which receivers may expect
ANY_NETWORK = ("0.0.0.0/0", "::/0")  # allow_private_network: every address is allowed
LABEL = "webhook URL"  # how FetchError messages name the target
REFUSED = frozenset({ErrorCode.INPUT_URL_FORBIDDEN, ErrorCode.INPUT_URL_INVALID})


class Sender(Protocol):
    async def send(
        self, endpoint: Endpoint, record: DeliveryRecord, timestamp: int
    ) -> AttemptResult:
        """Attempt the delivery once, signed at `timestamp` (Unix seconds)."""
        ...


def request_headers(endpoint: Endpoint, record: DeliveryRecord, timestamp: int) -> dict[str, str]:
    """The attempt's headers: the endpoint's extra ones, then ours (which they cannot
    name), then the Standard Webhooks signature headers over the stored body."""
    return {
        **endpoint.settings.headers,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Bifrost-Event": record.event.value,
        **signed_headers(endpoint.secrets, record.webhook_id, timestamp, record.body.encode()),
    }


def policy_for(settings: WebhookSettings) -> FetchPolicy:
    return FetchPolicy.build(
        ANY_NETWORK if settings.allow_private_network else (), timeout_s=settings.timeout_s
    )


class HttpSender:
    """`Sender` over httpx, through `safefetch.send_pinned`. `resolver` replaces the
    system resolver (tests)."""

    def __init__(self, http: httpx.AsyncClient, resolver: Resolver | None = None) -> None:
        self._http = http
        self._resolver = resolver

    async def send(
        self, endpoint: Endpoint, record: DeliveryRecord, timestamp: int
    ) -> AttemptResult:
        settings = endpoint.settings
        started = time.perf_counter()

        def ms() -> int:
            return int((time.perf_counter() - started) * 1000)

        if not settings.allow_private_network and not settings.url.startswith("https://"):
            return AttemptResult(None, f"{LABEL} must be https", refused=True)
        try:
            async with asyncio.timeout(settings.timeout_s):
                response = await send_pinned(
                    self._http,
                    "POST",
                    settings.url,
                    policy_for(settings),
                    headers=request_headers(endpoint, record, timestamp),
                    content=record.body.encode(),
                    resolver=self._resolver,
                    label=LABEL,
                )
                await response.aclose()
        except TimeoutError:
            return AttemptResult(None, f"no answer within {settings.timeout_s:g} s", ms())
        except FetchError as exc:
            return AttemptResult(None, exc.message, ms(), refused=exc.code in REFUSED)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return AttemptResult(response.status_code, "", ms(), retry_after_s=retry_after)
