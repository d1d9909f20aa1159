"""State-change notifications for waiters (long-poll `wait`, WatchJob, SSE).

Every write of a job record is announced with the record and its revision; `Notifier`
fans the announcements out in-process to the waiters of that job (a change of a job
nobody waits on costs a dict lookup). A waiter registers before it reads the store, so
no change between its read and its wait can be missed.

With JetStream the JOBS bucket republishes every write to `imagejobs.state.<job_id>`
(the record as its body, its revision in `Nats-Sequence`), and each API process holds ONE
subscription to `imagejobs.state.>` (`JetStreamNotifier`). Core NATS is at-most-once:
after a reconnect (changes may have been missed) every waiter is woken to re-read the
store once. Shutdown wakes every waiter for good, so long-polls answer and streams end
at once. The in-memory store announces its writes to a plain `Notifier`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from imagejobs.domain import constants
from imagejobs.domain.jobs import Job
from imagejobs.store.jetstream import nats_errors

log = logging.getLogger(__name__)

STALE = None  # a queued item meaning "changes may have been missed: re-read the store"


@dataclass(eq=False)
class Listener:
    """One waiter's inbox of (revision, record) changes; `STALE` asks for a re-read."""

    job_id: str
    queue: asyncio.Queue[tuple[int, Job] | None] = field(default_factory=asyncio.Queue)


class Notifier:
    """`StateChanges`: the in-process fan-out of record writes to waiters."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {}
        self.closed = asyncio.Event()

    async def stop(self) -> None:
        """Wake every waiter for good (shutdown)."""
        self.closed.set()
        self.reconnected()

    def reconnected(self) -> None:
        """Changes may have been missed while disconnected: everyone re-reads."""
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.queue.put_nowait(STALE)

    def announce(self, job_id: str, revision: int, data: bytes) -> None:
        """Record `data` (a JSON job, or b"" for an expiry or a delete marker) was
        written at `revision`: pass it to the job's waiters."""
        listeners = self._listeners.get(job_id)
        if not listeners or not data:  # nobody waits, or an expiry/delete marker
            return
        try:
            job = Job.loads(data)
        except ValueError:
            log.warning("unreadable state change for job %s", job_id)
            return
        for listener in listeners:
            listener.queue.put_nowait((revision, job))

    @contextlib.contextmanager
    def listen(self, job_id: str) -> Iterator[Listener]:
        """Register for changes of one job for the duration of the block."""
        listener = Listener(job_id)
        self._listeners.setdefault(job_id, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = self._listeners.get(job_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[job_id]


class JetStreamNotifier(Notifier):
    """A `Notifier` fed by one subscription to the bucket's republished writes."""

    def __init__(self, nc: Client) -> None:
        super().__init__()
        self._nc = nc
        self._sub: Subscription | None = None

    async def start(self) -> None:
        with nats_errors("state-change subscribe"):
            self._sub = await self._nc.subscribe(
                f"{constants.STATE_SUBJECT_PREFIX}.>", cb=self._on_message, pending_msgs_limit=-1
            )

    async def stop(self) -> None:
        await super().stop()
        if self._sub is not None:
            with contextlib.suppress(Exception):  # closing anyway: nothing to tell
                await self._sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        try:
            revision = int((msg.headers or {}).get("Nats-Sequence", "0"))
        except ValueError:
            log.warning("unreadable state change for job %s", job_id)
            return
        self.announce(job_id, revision, msg.data or b"")
