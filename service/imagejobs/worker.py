"""The worker process: pulls jobs from the shared durable consumer and runs them.

Per message (at-least-once delivery, exactly-once completion):
  1. read the record; a terminal job is acked, a missing (expired) one terminated;
  2. claim it with a compare-and-set write (`processing`, deliveries + 1); past
     `max_attempts` deliveries the job is failed instead, so a job that kills its
     workers cannot loop forever;
  3. heartbeat `in_progress()` every ack_wait/3 while the provider works, within the
     job's deadline, trying the fallbacks in order;
  4. store result images, then write the terminal state with compare-and-set, then ack.
     A worker whose terminal write loses (it was frozen past ack_wait and the job was
     re-claimed, or the job was cancelled) discards its work.

Bounded: fetches only as many messages as it has free slots. Shutdown: stop fetching,
let in-flight jobs finish up to a deadline, cancel the rest unacked (JetStream
redelivers them), close clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time

import httpx
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from imagejobs import connector, constants
from imagejobs.config import Settings
from imagejobs.errors import RevisionConflict, StoreError
from imagejobs.jobs import Job, StoredError
from imagejobs.objects import ObjectStore
from imagejobs.queue import job_id_of
from imagejobs.runner import JobRunner
from imagejobs.store import JobStore

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
FETCH_WAIT_S = 1.0
STORE_RETRY_DELAY_S = 2.0


class Worker:
    def __init__(self, settings: Settings, *, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}"
        self._drain_timeout_s = drain_timeout_s
        self._slot_freed = asyncio.Event()  # set whenever an in-flight job ends
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask the worker to stop taking jobs (idempotent)."""
        self._stopping.set()
        self._slot_freed.set()  # wake a loop waiting for a free slot

    async def run(self, ready: asyncio.Event | None = None) -> None:
        nc, js = await connector.connect(self.settings, f"imagejobs-worker-{self.id}")
        await connector.declare(js, self.settings)
        self.store = JobStore(js)
        objects = ObjectStore(nc, js)
        http = httpx.AsyncClient(
            timeout=None,  # each call is bounded by its provider's timeout_s instead
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            follow_redirects=False,
        )
        self.runner = JobRunner(self.settings, objects, http)
        sub = await js.pull_subscribe_bind(
            durable=constants.WORKER_CONSUMER, stream=constants.QUEUE_STREAM
        )
        log.info("worker %s ready (concurrency %d)", self.id, self.settings.worker_concurrency)
        if ready is not None:
            ready.set()
        try:
            await self._loop(sub)
        finally:
            await self._drain()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            await http.aclose()
            await nc.close()
            log.info("worker %s stopped", self.id)

    async def _loop(self, sub: object) -> None:
        limit = self.settings.worker_concurrency
        while not self._stopping.is_set():
            free = limit - len(self._tasks)
            if free <= 0:  # fetch only what we can run: the rest waits in the queue
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                msgs = await sub.fetch(batch=free, timeout=FETCH_WAIT_S)  # type: ignore[attr-defined]
            except (TimeoutError, NatsTimeoutError):
                continue
            except NatsError as exc:  # leader election, reconnect: try again shortly
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._handle(msg))
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info(
            "draining %d in-flight jobs (up to %.0f s)", len(self._tasks), self._drain_timeout_s
        )
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._drain_timeout_s)
        for task in pending:  # left unacked: redelivered to another worker after ack_wait
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _handle(self, msg: Msg) -> None:
        job_id = job_id_of(msg.subject)
        try:
            await self._process(job_id, msg)
        except StoreError as exc:  # the job engine hiccuped: let JetStream redeliver
            log.warning("job %s: store error, will be redelivered: %s", job_id, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=STORE_RETRY_DELAY_S)

    async def _process(self, job_id: str, msg: Msg) -> None:
        found = await self.store.get(job_id)
        if found is None:  # expired or never written: nothing to do
            await msg.term()
            return
        job, revision = found
        if job.status.terminal:
            await msg.ack_sync()
            return
        now = time.time()
        if job.deliveries >= self.settings.max_attempts:
            failed = job.fail(
                StoredError(
                    status_code=500,
                    type="api_error",
                    code="max_deliveries_exceeded",
                    message=f"job abandoned after {job.deliveries} deliveries",
                ),
                now,
            )
            await self._finish(msg, failed, revision)
            return
        try:
            claimed = job.claim(self.id, now)
            revision = await self.store.update(claimed, revision)
        except RevisionConflict:
            return  # someone else moved it (a cancel); the redelivery will see the state
        final = await self._run_with_heartbeat(msg, claimed)
        await self._finish(msg, final, revision)

    async def _run_with_heartbeat(self, msg: Msg, job: Job) -> Job:
        interval = max(self.settings.ack_wait_s / 3, 0.2)

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval)
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        heartbeat = asyncio.create_task(beat())
        try:
            return await self.runner.run(job)
        finally:
            heartbeat.cancel()

    async def _finish(self, msg: Msg, final: Job, revision: int) -> None:
        try:
            await asyncio.shield(self.store.update(final, revision))
        except RevisionConflict:
            log.info("job %s: lost the race to finish it; discarding this result", final.id)
            return
        await msg.ack_sync()
        log.info("job %s %s (%s)", final.id, final.status.value, final.status_code)


async def serve(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT."""
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, worker.stop)
    await worker.run()
