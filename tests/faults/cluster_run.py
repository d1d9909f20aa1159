"""The counted failure run on a 3-node JetStream cluster, as a reusable engine: the load
(steady submits through Envoy by clients that retry with the same Idempotency-Key,
readers polling accepted jobs, a load balancer's /health probe), the faults (node kills,
a rolling restart, quorum loss), every attempt recorded with its time, and the report
(the window during which submits failed around each fault; availability while the
cluster had no quorum). `tests/faults/test_cluster_run.py` runs it bounded in the
default run and as a longer soak.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from imagejobs.domain import constants
from imagejobs.store.records import JOBS_STREAM
from imagejobs.testing import Stack

CRITICAL = (JOBS_STREAM, constants.QUEUE_STREAM)  # the job-record and work-queue streams
RETRY_PAUSE_S = 0.2  # a client's pause before retrying a failed submit
READERS = 3
READ_PAUSE_S = 0.1  # per reader, between polls
HEALTH_EVERY_S = 0.25
GIVE_UP_S = 30.0  # after the load stops, a job still not accepted is given up on


@dataclass(frozen=True)
class Attempt:
    """One HTTP call: when it started (monotonic s), how long it took, its status (0 for
    a transport error), and what the body or headers said that a check needs."""

    at: float
    took: float
    status: int
    job_id: str = ""
    error_body: bool = False
    retry_after: str = ""


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
    lock: threading.Lock = field(default_factory=threading.Lock)

    def all_submits(self) -> list[Attempt]:
        return sorted((a for tries in self.submits.values() for a in tries), key=lambda a: a.at)


def attempt(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Attempt:
    """Make one call and record it."""
    started = time.monotonic()
    try:
        r = client.request(method, path, **kwargs)
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
    return Attempt(started, took, r.status_code, job_id, error_body, retry_after)


class Load:
    """Submitters, readers and the /health probe against `stack`'s Envoy, until `stop()`."""

    def __init__(self, stack: Stack, key: str, rate_per_s: float, record: Record) -> None:
        self.stack = stack
        self.rate = rate_per_s
        self.record = record
        self.headers = {"x-bf-vk": key}
        self.client = httpx.Client(
            base_url=stack.url, timeout=30, limits=httpx.Limits(max_connections=200)
        )
        self._stop = threading.Event()
        self._stopped_at = 0.0
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(48)
        self._futures: list[Any] = []

    def body(self, n: int) -> dict[str, Any]:
        return {
            "model": "mock/image-1",
            "prompt": f"cluster run {n}",
            "size": "16x16",
            "mock_latency_ms": random.randint(300, 2000),
        }

    def submit_until_accepted(self, n: int) -> None:
        """Job `n` as a careful client sends it: retried with the same key until a 202
        (for GIVE_UP_S at most after the load stops)."""
        tries = self.record.submits.setdefault(n, [])
        headers = self.headers | {"Idempotency-Key": f"cluster-run-{n}"}
        body = self.body(n)
        while True:
            seen = attempt(
                self.client, "POST", "/v1/async/images/generations", json=body, headers=headers
            )
            tries.append(seen)
            if seen.status == 202:
                with self.record.lock:
                    self.record.accepted.setdefault(n, seen.job_id)
                return
            if self._stopped_at and time.monotonic() > self._stopped_at + GIVE_UP_S:
                return
            time.sleep(RETRY_PAUSE_S)

    def _submitter(self) -> None:
        begin = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = begin + n / self.rate
            time.sleep(max(0.0, due - time.monotonic()))
            self._futures.append(self._pool.submit(self.submit_until_accepted, n))
            n += 1

    def _reader(self) -> None:
        while not self._stop.is_set():
            with self.record.lock:
                ids = list(self.record.accepted.values())
            if ids:
                recent = ids[-50:]
                job_id = random.choice(recent if random.random() < 0.7 else ids)
                path = f"/v1/async/images/generations/{job_id}"
                seen = attempt(self.client, "GET", path, headers=self.headers)
                self.record.reads.append(seen)
            time.sleep(READ_PAUSE_S)

    def _health(self) -> None:
        while not self._stop.is_set():
            seen = attempt(self.client, "GET", "/health", timeout=2)
            self.record.health.append(seen)
            time.sleep(HEALTH_EVERY_S)

    def start(self) -> None:
        targets = [self._submitter, self._health] + [self._reader] * READERS
        self._threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop making new jobs; wait for every started job to be accepted."""
        self._stopped_at = time.monotonic()
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        for future in list(self._futures):
            future.result(timeout=timeout_s)
        self._pool.shutdown()


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
    slowest = max((a.took for a in submits), default=0.0)
    lines.append(
        f"  {len(record.accepted)} jobs accepted from {len(submits)} submit attempts "
        f"(slowest {slowest:.2f} s); {len(record.reads)} reads "
        f"{dict(Counter(a.status for a in record.reads))}"
    )
    return "\n".join(lines)
