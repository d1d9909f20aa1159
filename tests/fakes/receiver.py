"""A webhook receiver on 127.0.0.1, as a customer would write one: every POST to
`/<endpoint>` is verified with the `standardwebhooks` library against that endpoint's
secrets (each one alone, so a rotation's two signatures are told apart), recorded, and
answered by the test's `answer(received)` (200 by default)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.fakes.upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake


@dataclass
class Received:
    endpoint: str
    webhook_id: str
    body: bytes
    headers: dict[str, str]
    verified_by: tuple[int, ...]  # indexes of the endpoint's secrets whose signature verifies
    at: float  # time.monotonic() on arrival
    attempt: int  # 1 for the first request with this webhook-id, 2 for the next, ...
    answered: int = 0  # the status the receiver answered

    def payload(self) -> Any:
        return json.loads(self.body)


Answer = Callable[[Received], FakeResponse]


class WebhookReceiver(VendorFake):
    def __init__(self, secrets: dict[str, list[str]], port: int = 0) -> None:
        self.upstream = FakeUpstream(port)
        self.secrets = secrets
        self.answers: dict[str, Answer] = {}
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self.upstream.route("POST", r"/(?P<endpoint>[A-Za-z0-9_-]+)", self._receive)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def _receive(self, request: FakeRequest) -> FakeResponse:
        assert request.match is not None
        endpoint = request.match.group("endpoint")
        verified = tuple(
            i for i, s in enumerate(self.secrets.get(endpoint, [])) if _verifies(s, request)
        )
        webhook_id = request.headers.get("webhook-id", "")
        with self._lock:
            attempt = 1 + sum(1 for r in self.received if r.webhook_id == webhook_id)
            received = Received(
                endpoint,
                webhook_id,
                request.body,
                request.headers,
                verified,
                time.monotonic(),
                attempt,
            )
            self.received.append(received)
        answer = self.answers.get(endpoint)
        response = answer(received) if answer is not None else FakeResponse(200)
        received.answered = response.status
        return response

    def to(self, endpoint: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.endpoint == endpoint]

    def of(self, webhook_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.webhook_id == webhook_id]


def _verifies(secret: str, request: FakeRequest) -> bool:
    """Whether one of the request's signatures verifies with `secret` alone."""
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True
