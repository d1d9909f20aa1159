"""The worker: pulls jobs from the shared work queue and runs them, bounded.

`Worker` is given its parts, as arq's `Worker` takes its pool: the store (`Backend`: the
records, the work queue, the quotas), the `Runner` that turns a claimed job into its
terminal record (`worker/runner.py` calls the providers), a clock and its id. `serve`
builds the JetStream ones for the worker process; unit tests give it the in-memory
store and run it with `burst=True` to completion.

Bounded: it fetches only as many messages as it has free slots, so the rest waits in the
queue for other workers. Each delivery is handled by `worker/handler.py`. Shutdown: stop
fetching, let in-flight jobs finish up to the drain deadline, cancel the rest unacked
(the queue redelivers them to another worker after ack_wait), close.

While it runs, the worker announces itself every `WORKER_BEAT_S` in `backend.presence`
(its id, concurrency and jobs in flight; GetStats lists it) and removes the announcement
when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import httpx

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import StoreError
from imagejobs.domain.jobs import Job
from imagejobs.runtime import metrics, process, tracing
from imagejobs.store.clock import Clock, SystemClock
from imagejobs.store.factory import open_backend
from imagejobs.store.presence import WorkerBeat
from imagejobs.store.protocols import Backend, Delivery
from imagejobs.worker.handler import DeliveryHandler, Runner, WorkerOptions
from imagejobs.worker.runner import JobRunner

log = logging.getLogger(__name__)

FETCH_WAIT_S = 1.0  # a fetch waits this long for work before the loop looks around
FETCH_RETRY_S = 0.5  # after a failed fetch (leader election, reconnect)
CANCELLED_TASKS_WAIT_S = 5.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Runs jobs from `backend.work` with `runner`.

    :param backend: the store; the worker uses its records, work queue and quotas.
    :param runner: makes a claimed job's terminal record (calls the providers).
    :param options: concurrency, drain deadline, ack_wait, attempts, age limit.
    :param clock: time for records, heartbeats and deadlines (a fake one in tests).
    :param worker_id: written into the records this worker claims.
    """

    def __init__(
        self,
        backend: Backend,
        runner: Runner,
        *,
        options: WorkerOptions,
        clock: Clock | None = None,
        worker_id: str = "",
    ) -> None:
        self.id = worker_id or default_worker_id()
        self._work = backend.work
        self._presence = backend.presence
        self._options = options
        self._clock = clock or SystemClock()
        self._handler = DeliveryHandler(backend, runner, self.id, self._options, self._clock)
        self._slot_freed = asyncio.Event()  # set whenever an in-flight job ends
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Deliveries held right now (claimed, running or finishing)."""
        return len(self._tasks)

    def stop(self) -> None:
        """Ask the worker to stop taking jobs (idempotent)."""
        self._stopping.set()
        self._slot_freed.set()  # wake a loop waiting for a free slot

    async def run(self, *, burst: bool = False, ready: asyncio.Event | None = None) -> None:
        """Take and run jobs until `stop()`; then drain. With `burst`, return as soon as
        the queue has nothing to deliver and no job is in flight."""
        cancels = await self._work.on_cancel(self._handler.abort)
        beats = asyncio.create_task(self._beat_forever(self._clock.time()))
        log.info("worker %s ready (concurrency %d)", self.id, self._options.worker_concurrency)
        if ready is not None:
            ready.set()
        try:
            await self._loop(burst)
        finally:
            await self._drain()
            beats.cancel()
            with contextlib.suppress(StoreError):
                await cancels.close()
            with contextlib.suppress(StoreError):
                await self._presence.leave(self.id)
            log.info("worker %s stopped", self.id)

    async def _beat_forever(self, started_at: float) -> None:
        """Announce this worker now and every WORKER_BEAT_S (a failed beat is skipped:
        the next one comes soon, and the announcement outlives two missed ones)."""
        while True:
            beat = WorkerBeat(
                id=self.id,
                concurrency=self._options.worker_concurrency,
                in_flight=self.in_flight,
                started_at=started_at,
                seen_at=self._clock.time(),
            )
            with contextlib.suppress(StoreError):
                await self._presence.beat(beat, constants.WORKER_BEAT_TTL_S)
            await self._clock.sleep(constants.WORKER_BEAT_S)

    async def _loop(self, burst: bool) -> None:
        limit = self._options.worker_concurrency
        while not self._stopping.is_set():
            free = limit - len(self._tasks)
            if free <= 0:  # fetch only what we can run: the rest waits in the queue
                await self._wait_for_a_slot()
                continue
            try:
                deliveries = await self._work.fetch(free, 0.0 if burst else FETCH_WAIT_S)
            except StoreError as exc:  # leader election, reconnect: try again shortly
                log.warning("fetch failed: %s", exc)
                await self._clock.sleep(FETCH_RETRY_S)
                continue
            known = await self._handler.prefetch(deliveries)
            for delivery in deliveries:
                self._start(delivery, known.get(delivery.job_id))
            if burst and not deliveries:
                if not self._tasks:
                    return
                await self._wait_for_a_slot()  # a job that ends may make more work

    def _start(self, delivery: Delivery, known: tuple[Job, int] | None = None) -> None:
        task = asyncio.create_task(self._handler.handle(delivery, known))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _wait_for_a_slot(self) -> None:
        self._slot_freed.clear()
        await self._slot_freed.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())

    async def _drain(self) -> None:
        if not self._tasks:
            return
        drain_s = self._options.worker_drain_s
        log.info("draining %d in-flight jobs (up to %.0f s)", len(self._tasks), drain_s)
        with contextlib.suppress(TimeoutError):
            await self._clock.wait_for(asyncio.wait(set(self._tasks)), drain_s)
        pending = [t for t in self._tasks if not t.done()]
        for task in pending:  # left unacked: redelivered to another worker after ack_wait
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CANCELLED_TASKS_WAIT_S)


async def serve(settings: Settings) -> None:
    """Run one worker process on JetStream until SIGTERM/SIGINT."""
    worker_id = default_worker_id()
    flush_spans = tracing.setup(settings, "imagejobs-worker")
    http = httpx.AsyncClient(
        timeout=None,  # each call is bounded by its provider's timeout_s instead
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
        follow_redirects=False,
    )
    async with open_backend(settings, f"imagejobs-worker-{worker_id}") as backend, http:
        worker = Worker(
            backend,
            JobRunner(settings, backend.objects, http, backend.providers),
            options=WorkerOptions.from_settings(settings),
            worker_id=worker_id,
        )
        metrics.track_in_flight(lambda: worker.in_flight)
        ports = metrics.worker_ports(settings)
        await process.run_until_signalled(worker, settings, ports, backend.queue, flush_spans)
