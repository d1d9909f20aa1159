"""The counted failure run on a 3-node JetStream cluster, as a reusable engine: the load
(steady submits through Envoy by clients that retry with the same Idempotency-Key,
each accepted job polled by its client until it is terminal, a load balancer's /health
probe), the faults (node kills,
a rolling restart, quorum loss), every attempt recorded with its time, and the report
(the window during which submits failed around each fault; availability while the
cluster had no quorum). `tests/faults/test_cluster_run.py` runs it bounded in the
default run and as a longer soak.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from imagejobs.domain import constants
from imagejobs.store.records import JOBS_STREAM
from imagejobs.testing import Stack

CRITICAL = (JOBS_STREAM, constants.QUEUE_STREAM)  # the job-record and work-queue streams
RETRY_PAUSE_S = 0.2  # a client's pause before retrying a failed submit without Retry-After
MAX_RETRY_PAUSE_S = 2.0
IN_FLIGHT = 64  # HTTP calls the load has in flight at most
POLL_EVERY_S = 1.0  # a client polls its accepted job this often until it is terminal
HEALTH_EVERY_S = 0.25
GIVE_UP_S = 30.0  # after the load stops, a job still not accepted is given up on
REQUEST_TIMEOUT_S = 10.0  # one HTTP call (the API answers a submit within 4 s)


@dataclass(frozen=True)
class Attempt:
    """One HTTP call: when it started (monotonic s), how long it took, its status (0 for
    a transport error), and what the body or headers said that a check needs. `upstream`
    is how long the API took to answer as Envoy saw it (x-envoy-upstream-service-time, s;
    -1 when Envoy answered itself): the service's time, without the load's own queueing
    on the shared cores."""

    at: float
    took: float
    status: int
    job_id: str = ""
    error_body: bool = False
    retry_after: str = ""
    upstream: float = -1.0


@dataclass
class Phase:
    """One fault: `start` when it was done to the cluster, `whole` when every stream had a
    leader and current replicas again, `down` the span during which the nodes it took
    were not running."""

    name: str
    start: float = 0.0
    whole: float = 0.0
    down: tuple[float, float] = (0.0, 0.0)


@dataclass
class Record:
    """Everything the run saw."""

    submits: dict[int, list[Attempt]] = field(default_factory=dict)  # by job number
    reads: list[Attempt] = field(default_factory=list)
    health: list[Attempt] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    accepted: dict[int, str] = field(default_factory=dict)  # job number -> id

    def all_submits(self) -> list[Attempt]:
        return sorted((a for tries in self.submits.values() for a in tries), key=lambda a: a.at)


async def attempt(
    client: httpx.AsyncClient, method: str, path: str, *, bounded: bool = True, **kwargs: Any
) -> Attempt:
    """Make one call and record it. `bounded`: one of at most IN_FLIGHT calls at once (the
    load shares two cores with the stack: unbounded, its own queueing would be measured)."""
    async with _in_flight() if bounded else contextlib.nullcontext():
        started = time.monotonic()
        try:
            r = await client.request(method, path, **kwargs)
        except httpx.TransportError:
            return Attempt(started, time.monotonic() - started, 0)
        took = time.monotonic() - started
    error_body = False
    job_id = ""
    if r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        error_body = isinstance(body.get("error"), dict) and bool(body["error"].get("message"))
        job_id = str(body.get("id", "")) if r.status_code in (200, 202) else ""
    retry_after = r.headers.get("retry-after", "")
    upstream_ms = r.headers.get("x-envoy-upstream-service-time", "")
    upstream = int(upstream_ms) / 1000 if upstream_ms.isdigit() else -1.0
    return Attempt(started, took, r.status_code, job_id, error_body, retry_after, upstream)


def retry_pause(failed: Attempt) -> float:
    """How long a careful client waits before retrying: the answer's Retry-After (capped
    at MAX_RETRY_PAUSE_S), with jitter so that clients do not retry in step."""
    after = float(failed.retry_after) if failed.retry_after else RETRY_PAUSE_S
    return min(after, MAX_RETRY_PAUSE_S) * random.uniform(0.5, 1.0)


_SLOTS: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _in_flight() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    return _SLOTS.setdefault(loop, asyncio.Semaphore(IN_FLIGHT))


class Load:
    """The clients, against `stack`'s Envoy, on an event loop of their own (a thread)
    until `stop()`: `rate_per_s` new jobs a second, each submitted until accepted (the same
    Idempotency-Key every time) and then polled by its client right away and every
    POLL_EVERY_S until it is terminal, as a client waiting for its image does; and a load
    balancer's /health probe."""

    def __init__(self, stack: Stack, key: str, rate_per_s: float, record: Record) -> None:
        self.url = stack.url
        self.rate = rate_per_s
        self.record = record
        self.headers = {"x-bf-vk": key}
        self._stopping: asyncio.Event | None = None
        self._stopped_at = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))
        self._tasks: set[asyncio.Task[None]] = set()

    def body(self, n: int) -> dict[str, Any]:
        return {
            "model": "mock/image-1",
            "prompt": f"cluster run {n}",
            "size": "16x16",
            "mock_latency_ms": random.randint(300, 2000),
        }

    def _given_up(self) -> bool:
        return bool(self._stopped_at) and time.monotonic() > self._stopped_at + GIVE_UP_S

    async def _job(self, client: httpx.AsyncClient, n: int) -> None:
        """Job `n`: submitted until a 202, then followed until terminal."""
        tries = self.record.submits.setdefault(n, [])
        headers = self.headers | {"Idempotency-Key": f"cluster-run-{n}"}
        body = self.body(n)
        while True:
            seen = await attempt(
                client, "POST", "/v1/async/images/generations", json=body, headers=headers
            )
            tries.append(seen)
            if seen.status == 202:
                self.record.accepted.setdefault(n, seen.job_id)
                break
            if self._given_up():
                return
            await asyncio.sleep(retry_pause(seen))
        path = f"/v1/async/images/generations/{seen.job_id}"
        while not self._given_up():
            read = await attempt(client, "GET", path, headers=self.headers)
            self.record.reads.append(read)
            if read.status == 200:
                return
            await asyncio.sleep(POLL_EVERY_S)

    async def _health(self, client: httpx.AsyncClient, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            probe = await attempt(client, "GET", "/health", bounded=False, timeout=2)
            self.record.health.append(probe)
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _run(self) -> None:
        stopping = self._stopping = asyncio.Event()
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
        async with httpx.AsyncClient(
            base_url=self.url, timeout=REQUEST_TIMEOUT_S, limits=limits
        ) as client:
            health = asyncio.create_task(self._health(client, stopping))
            begin = time.monotonic()
            n = 0
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stopping.wait(), begin + n / self.rate - time.monotonic()
                    )
                if stopping.is_set():
                    break
                task = asyncio.create_task(self._job(client, n))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                n += 1
            await asyncio.gather(*self._tasks)
            await health

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = GIVE_UP_S + 2 * REQUEST_TIMEOUT_S + 10.0) -> None:
        """Make no new jobs; wait until every job made is accepted and followed to its end
        (or given up on, GIVE_UP_S after now)."""
        self._stopped_at = time.monotonic()
        stopping = self._stopping
        if stopping is not None:
            self._loop.call_soon_threadsafe(stopping.set)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the load did not stop"
        self._loop.close()


# --- the faults -------------------------------------------------------------------------


def _whole(stack: Stack, phase: Phase) -> None:
    stack.nats.wait_current(timeout_s=60)
    phase.whole = time.monotonic()


def kill_the_leader(stack: Stack, down_s: float = 10.0) -> Phase:
    """kill -9 the node leading both the job-record and the work-queue streams (moved
    there first), restarted after `down_s`."""
    nats = stack.nats
    leader = nats.leader(CRITICAL[0])
    nats.move_leader(CRITICAL[1], leader)
    phase = Phase("kill -9 of the leader of the job-record and work-queue streams")
    phase.start = time.monotonic()
    nats.kill(leader)
    time.sleep(down_s)
    nats.start([leader])
    phase.down = (phase.start, time.monotonic())
    _whole(stack, phase)
    return phase


def kill_a_follower(stack: Stack, down_s: float = 3.0) -> Phase:
    nats = stack.nats
    leaders = {nats.leader(s) for s in CRITICAL}
    follower = next(n for n in nats.names if n not in leaders)
    phase = Phase("kill -9 of a follower")
    phase.start = time.monotonic()
    nats.kill(follower)
    time.sleep(down_s)
    nats.start([follower])
    phase.down = (phase.start, time.monotonic())
    _whole(stack, phase)
    return phase


def rolling_restart(stack: Stack) -> Phase:
    """SIGTERM one node at a time, each back and current before the next."""
    nats = stack.nats
    phase = Phase("rolling restart (SIGTERM, one node at a time)")
    phase.start = time.monotonic()
    for name in nats.names:
        nats.stop(name)
        nats.start([name])
        nats.wait_current(timeout_s=60)
    phase.down = (phase.start, time.monotonic())
    _whole(stack, phase)
    return phase


def lose_quorum(stack: Stack, down_s: float = 10.0) -> Phase:
    """Two of the three nodes down (kill -9) for `down_s`."""
    nats = stack.nats
    two = nats.names[:2]
    phase = Phase("quorum loss (two nodes down)")
    phase.start = time.monotonic()
    for name in two:
        nats.kill(name)
    time.sleep(down_s)
    phase.down = (phase.start, time.monotonic())
    nats.start(two)
    _whole(stack, phase)
    return phase


def kill_a_worker_and_an_api(stack: Stack) -> Phase:
    """kill -9 of a worker with jobs in hand and of an API process behind Envoy, each
    started again at once."""
    phase = Phase("kill -9 of a worker and of an API process")
    phase.start = time.monotonic()
    worker = next(p for n, p in stack.procs.items() if n.startswith("worker") and p.poll() is None)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    stack.start_worker()
    port = stack.api_ports[-1]
    api = stack.procs[f"api-{port}"]
    api.send_signal(signal.SIGKILL)
    api.wait()
    stack.start_api(port)
    phase.down = (phase.start, time.monotonic())
    phase.whole = phase.down[1]
    return phase


Fault = Callable[[Stack], Phase]
DEFAULT_FAULTS: tuple[Fault, ...] = (kill_the_leader, kill_a_follower, rolling_restart, lose_quorum)


def run_faults(stack: Stack, record: Record, faults: Iterable[Fault], pause_s: float) -> None:
    for fault in faults:
        time.sleep(pause_s)
        record.phases.append(fault(stack))


# --- the report -------------------------------------------------------------------------


def failure_window(attempts: list[Attempt], start: float, end: float) -> tuple[float, int]:
    """(seconds from the first to the end of the last failed submit attempt in
    [start, end), the number of failed attempts)."""
    failed = [a for a in attempts if start <= a.at < end and a.status != 202]
    if not failed:
        return 0.0, 0
    return max(a.at + a.took for a in failed) - failed[0].at, len(failed)


def availability(attempts: Iterable[Attempt], start: float, end: float, ok: set[int]) -> str:
    inside = [a for a in attempts if start <= a.at < end]
    good = sum(1 for a in inside if a.status in ok)
    return f"{good}/{len(inside)} ({100 * good / len(inside):.0f}%)" if inside else "none made"


def spread(times: list[float]) -> str:
    """p50, p99 and the slowest of sorted `times` (s)."""
    return (
        f"p50 {times[len(times) // 2]:.3f} s, p99 {times[len(times) * 99 // 100]:.2f} s, "
        f"slowest {times[-1]:.2f} s"
    )


def report(record: Record, run_end: float) -> str:
    submits = record.all_submits()
    lines = ["cluster run: submits failed around each fault"]
    bounds = [p.start for p in record.phases[1:]] + [run_end]
    for phase, end in zip(record.phases, bounds, strict=True):
        window, count = failure_window(submits, phase.start, end)
        statuses = Counter(
            a.status for a in submits if phase.start <= a.at < end and a.status != 202
        )
        lines.append(
            f"  {phase.name}: failed for {window:.1f} s ({count} attempts: {dict(statuses)}); "
            f"whole again after {phase.whole - phase.start:.1f} s"
        )
    for phase in record.phases:
        if phase.name.startswith("quorum loss"):
            start, end = phase.down
            lines.append(
                f"  during quorum loss ({end - start:.1f} s): submit availability "
                f"{availability(submits, start, end, {202})}, read availability "
                f"{availability(record.reads, start, end, {200, 202})}, /health "
                f"{dict(Counter(a.status for a in record.health if start <= a.at < end))}"
            )
    took = sorted(a.took for a in submits) or [0.0]
    upstream = sorted(a.upstream for a in submits) or [0.0]
    lines.append(
        f"  {len(record.accepted)} jobs accepted from {len(submits)} submit attempts; "
        f"{len(record.reads)} reads {dict(Counter(a.status for a in record.reads))}"
    )
    lines.append(
        f"  submit time at the client: {spread(took)}, {sum(t > 2.0 for t in took)} over 2 s"
    )
    lines.append(f"  submit time in the API, as Envoy saw it: {spread(upstream)}")
    return "\n".join(lines)
