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

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import RevisionConflict, StoreError
from imagejobs.domain.jobs import Job, Status, StoredError, age_limit_error
from imagejobs.runtime import metrics
from imagejobs.store import jetstream as connector
from imagejobs.store.objects import ObjectStore
from imagejobs.store.queue import RECORD_REVISION_HEADER, job_id_of
from imagejobs.store.quotas import Quotas
from imagejobs.store.records import JobStore
from imagejobs.worker.runner import JobRunner

log = logging.getLogger(__name__)

FETCH_WAIT_S = 1.0
STORE_RETRY_DELAY_S = 2.0


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}"
        self._drain_timeout_s = settings.worker_drain_s
        self._slot_freed = asyncio.Event()  # set whenever an in-flight job ends
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[Job]] = {}  # job id -> its provider work
        self._aborted: set[str] = set()  # job ids whose work was cancelled with the job
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask the worker to stop taking jobs (idempotent)."""
        self._stopping.set()
        self._slot_freed.set()  # wake a loop waiting for a free slot

    async def run(self, ready: asyncio.Event | None = None) -> None:
        nc, js = await connector.connect(self.settings, f"imagejobs-worker-{self.id}")
        await connector.declare(js, self.settings)
        metrics_server = await metrics.start(self.settings, metrics.worker_ports(self.settings), js)
        metrics.track_in_flight(lambda: len(self._tasks))
        self.store = JobStore(js)
        self.quotas = Quotas(nc, js, self.store, slot_ttl_s=int(self.settings.max_job_age_s) + 60)
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
        cancels = await nc.subscribe(
            f"{constants.CANCEL_SUBJECT_PREFIX}.>", cb=self._on_cancel, pending_msgs_limit=-1
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
            with contextlib.suppress(Exception):
                await cancels.unsubscribe()
            await http.aclose()
            if metrics_server is not None:
                await metrics_server.close()
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
        # first delivery: the message carries the record as submitted and its revision,
        # so the claim needs no read; if the record changed since, decide on the record
        submitted = record_of(msg)
        if submitted is not None:
            job, revision = submitted
            now = time.time()
            if self._give_up(job, now) is None:
                try:
                    claimed = job.claim(self.id, now)
                    revision = await self.store.update(claimed, revision)
                except RevisionConflict:
                    pass
                else:
                    await self._run_claimed(job_id, msg, claimed, revision)
                    return
        found = await self.store.get(job_id)
        if found is None:  # expired (or a submit that was taken back): nothing to do
            await msg.term()
            return
        job, revision = found
        if job.status.terminal:
            await msg.ack_sync()
            return
        now = time.time()
        give_up = self._give_up(job, now)
        if give_up is not None:
            await self._finish(msg, job.fail(give_up, now), revision)
            return
        try:
            claimed = job.claim(self.id, now)
            revision = await self.store.update(claimed, revision)
        except RevisionConflict:
            return  # someone else moved it (a cancel); the redelivery will see the state
        await self._run_claimed(job_id, msg, claimed, revision)

    async def _run_claimed(self, job_id: str, msg: Msg, claimed: Job, revision: int) -> None:
        final = await self._run_with_heartbeat(msg, claimed)
        if final is None:  # cancelled meanwhile: the record already says so
            log.info("job %s cancelled; its provider call was aborted", job_id)
            await msg.ack_sync()
            return
        await self._finish(msg, final, revision)

    def _give_up(self, job: Job, now: float) -> StoredError | None:
        """Why this delivery must fail the job instead of running it, if it must."""
        if job.deliveries >= self.settings.max_attempts:
            return StoredError(
                status_code=500,
                type="api_error",
                code="max_deliveries_exceeded",
                message=f"job abandoned after {job.deliveries} deliveries",
            )
        if now - job.created_at > self.settings.max_job_age_s:
            return age_limit_error(self.settings.max_job_age_s)
        return None

    async def _run_with_heartbeat(self, msg: Msg, job: Job) -> Job | None:
        """The terminal record to write, or None if the job was cancelled meanwhile (its
        provider call is then aborted at once)."""
        interval = max(self.settings.ack_wait_s / 3, 0.2)
        run = asyncio.create_task(self._run_safely(job))

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval)
                with contextlib.suppress(Exception):
                    await msg.in_progress()
                # the backstop for a missed cancel notice: is the job still ours to run?
                with contextlib.suppress(StoreError):
                    found = await self.store.get(job.id)
                    if found is None or found[0].status.terminal:
                        self._abort(job.id)

        self._running[job.id] = run
        heartbeat = asyncio.create_task(beat())
        try:
            return await run
        except asyncio.CancelledError:
            if job.id in self._aborted and not _current_cancelling():
                return None
            raise
        finally:
            heartbeat.cancel()
            self._running.pop(job.id, None)
            self._aborted.discard(job.id)

    async def _run_safely(self, job: Job) -> Job:
        """Run the job; an adapter bug fails it at once instead of every redelivery."""
        try:
            return await self.runner.run(job)
        except (StoreError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("job %s: unexpected error in the provider adapter", job.id)
            return job.fail(
                StoredError(
                    status_code=500,
                    type="api_error",
                    code="internal_error",
                    message="internal error while calling the provider",
                ),
                time.time(),
            )

    def _abort(self, job_id: str) -> None:
        run = self._running.get(job_id)
        if run is not None and not run.done():
            self._aborted.add(job_id)
            run.cancel()

    async def _on_cancel(self, msg: Msg) -> None:
        self._abort(job_id_of(msg.subject))

    async def _finish(self, msg: Msg, final: Job, revision: int) -> None:
        try:
            await asyncio.shield(self.store.update(final, revision))
        except RevisionConflict:
            found = await self.store.get(final.id)
            if found is not None and found[0].status.terminal:
                log.info(
                    "job %s was finished elsewhere (%s); discarding this result",
                    final.id,
                    found[0].status.value,
                )
                await msg.ack_sync()
            else:
                log.info("job %s: lost the race to finish it; discarding this result", final.id)
            return
        metrics.finished(final)
        await msg.ack()  # no need to wait: a lost ack redelivers a terminal job, which is acked
        with contextlib.suppress(StoreError):  # best effort: a leftover slot is reclaimed
            await self.quotas.release(final.slot, final.id)
        log.info("job %s %s (%s)", final.id, final.status.value, final.status_code)


def record_of(msg: Msg) -> tuple[Job, int] | None:
    """The record a first delivery carries (queue.py), with its revision; None for a
    redelivery (the record has moved on since) or a message without one."""
    revision = (msg.headers or {}).get(RECORD_REVISION_HEADER)
    if not revision or not msg.data or msg.metadata.num_delivered != 1:
        return None
    try:
        job = Job.loads(msg.data)
    except ValueError:
        return None
    if job.status is not Status.PENDING:
        return None
    return job, int(revision)


def _current_cancelling() -> bool:
    """Whether the running task itself is being cancelled (shutdown), not just its job."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def serve(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT."""
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, worker.stop)
    await worker.run()
