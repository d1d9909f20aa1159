"""Whether this process can accept jobs now: what a load balancer asks `/health`.

A submit cannot do without two streams: the job records (KV_JOBS) and the work queue
(JOBQ). `JetStreamHealth` probes both every `PROBE_INTERVAL_S` with `STREAM.INFO` (one
small request each): the process is *accepting* while its NATS connection is up and each
stream answers with a leader and a quorum of current replicas (the leader plus at least
half of the others; a single server has no cluster to count). The connection state is
read at once, the streams' as of the last probe (≤ `PROBE_INTERVAL_S` +
`PROBE_TIMEOUT_S` old).

The API process serves it as its gRPC health (SERVING / NOT_SERVING), which Envoy checks
every 2 s, so Envoy's `/health` turns 503 once no API behind it can accept jobs; and a
submit is refused at once with 503 (`Retry-After`) instead of waiting on a store that
cannot take it. The in-memory twin (`MemoryHealth`) is told what to say by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import api as js_api

from imagejobs.domain import constants
from imagejobs.store.records import JOBS_STREAM

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0  # a STREAM.INFO slower than this counts as no answer
CRITICAL_STREAMS = (JOBS_STREAM, constants.QUEUE_STREAM)

Listener = Callable[[bool], None]


def stream_problem(info: js_api.StreamInfo) -> str:
    """Why a stream cannot take writes now, by its info ('' when it can)."""
    cluster = info.cluster
    if cluster is None:  # a single server answered: it is the stream
        return ""
    name = info.config.name
    if not cluster.leader:
        return f"{name} has no leader"
    wanted = info.config.num_replicas or 1
    current = 1 + sum(1 for r in cluster.replicas or [] if r.current and not r.offline)
    if current < wanted // 2 + 1:
        return f"{name} has {current} of {wanted} replicas current (no quorum)"
    return ""


class Reporter:
    """The shared part of both implementations: the last verdict, and the listeners told
    of every change of it."""

    def __init__(self) -> None:
        self._ok = True
        self._reason = ""
        self._listeners: list[Listener] = []

    def on_change(self, listener: Listener) -> None:
        """Call `listener(accepting)` whenever the verdict changes."""
        self._listeners.append(listener)

    def _report(self, reason: str) -> None:
        ok = not reason
        changed = ok != self._ok
        self._ok, self._reason = ok, reason
        if changed:
            if ok:
                log.info("job store accepting jobs again")
            else:
                log.warning("job store cannot accept jobs: %s", reason)
            for listener in list(self._listeners):
                listener(ok)


class JetStreamHealth(Reporter):
    """`StoreHealth` of one NATS connection (module docstring); `run()` probes until
    cancelled."""

    def __init__(
        self,
        nc: Client,
        streams: Iterable[str] = CRITICAL_STREAMS,
        *,
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout_s)
        self._streams = tuple(streams)
        self._interval_s = interval_s

    @property
    def accepting(self) -> bool:
        return self._ok and self._nc.is_connected

    @property
    def reason(self) -> str:
        if not self._nc.is_connected:
            return "not connected to NATS"
        return self._reason

    async def probe(self) -> str:
        """Ask every critical stream now; why the store cannot accept jobs ('' if it can)."""
        for stream in self._streams:
            try:
                info = await self._js.stream_info(stream)
            except (TimeoutError, NatsError) as exc:
                return f"{stream} did not answer ({type(exc).__name__})"
            problem = stream_problem(info)
            if problem:
                return problem
        return ""

    async def check(self) -> None:
        """Probe once and report the verdict."""
        self._report(await self.probe())

    async def run(self) -> None:
        """Probe every interval, reporting changes, until cancelled."""
        while True:
            with contextlib.suppress(Exception):  # a probe that breaks counts as none
                await self.check()
            await asyncio.sleep(self._interval_s)


class MemoryHealth(Reporter):
    """`StoreHealth` for the in-memory store: accepting unless a test says otherwise."""

    @property
    def accepting(self) -> bool:
        return self._ok

    @property
    def reason(self) -> str:
        return self._reason

    def set(self, reason: str) -> None:
        """'' for accepting, else why not."""
        self._report(reason)
