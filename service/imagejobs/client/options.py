"""The SDK's settings as small frozen values: the retry policy, and the channel options
every client uses.

Retries: a call that fails with UNAVAILABLE, or whose stream dropped before our server
answered (no error body from it), is tried again after a jittered exponential backoff.
Reads are safe to repeat; a submit is made safe by the idempotency key the client chose
for it (the same on every try), so a retried submit never makes a second job. A cancel is
not retried: its first try may have worked.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from imagejobs.client.errors import server_detail

DEFAULT_SERVER = "localhost:8080"
DEFAULT_TIMEOUT_S = 30.0  # one call (a long-poll: its wait plus this)
MAX_POLL_S = 20.0  # one long-poll of wait(); the server caps them at 60 s
# Reconnecting after the server went away: try soon, and at least every 2 s (gRPC's own
# default backs off to 120 s, far longer than an API process takes to come back).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
# Transport failures that never reached our server's error handling: retried like
# UNAVAILABLE when no error body came with them.
_TRANSPORT_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


class ClientOptions(TypedDict, total=False):
    """The keyword options both clients take (`AsyncClient.__init__` documents each)."""

    key: str | None
    tls: bool | grpc.ChannelCredentials
    timeout_s: float
    metadata: Sequence[tuple[str, str]]
    retry: RetryPolicy | None
    channel_options: Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class RetryPolicy:
    """How calls are retried. `attempts` counts the first try; the wait before retry n
    (1, 2, …) is `initial_backoff_s * 2**(n-1)`, at most `max_backoff_s`, jittered down
    to half; no retry starts after `max_elapsed_s` (seconds) from the first try.
    `RetryPolicy(attempts=1)` turns retries off."""

    attempts: int = 5
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 3.0
    max_elapsed_s: float = 30.0

    def backoff_s(self, retry: int) -> float:
        """The wait before retry number `retry` (1-based), in seconds."""
        full = min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** (retry - 1))
        return full * random.uniform(0.5, 1.0)

    def retrying(self) -> AsyncRetrying:
        """A tenacity controller for one logical call (it re-raises the last error)."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_elapsed_s),
            wait=self._wait,
            retry=retry_if_exception(retryable),
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        return self.backoff_s(state.attempt_number)


def retryable(exc: BaseException) -> bool:
    """Whether a failed call may be tried again: UNAVAILABLE (no server, a server shutting
    down, a proxy without a healthy backend), or a transport failure (a dropped connection,
    a reset stream) that came without our server's error body."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    code = exc.code()
    if code is grpc.StatusCode.UNAVAILABLE:
        return True
    return code in _TRANSPORT_CODES and server_detail(exc) is None


def channel_credentials(
    tls: bool | grpc.ChannelCredentials,
) -> grpc.ChannelCredentials | None:
    """None for plaintext; the system's root certificates for `True`; else as given."""
    if tls is True:
        return grpc.ssl_channel_credentials()
    if tls is False:
        return None
    return tls
