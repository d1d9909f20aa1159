"""State-change notifications for waiters (long-poll `wait`, WatchJob, SSE).

The JOBS bucket republishes every write to `imagejobs.state.<job_id>` with the record as
its body and its revision in `Nats-Sequence`. Each API process holds ONE subscription to
`imagejobs.state.>` and fans the messages out in-process to the waiters of that job; a
message for a job nobody waits on costs a dict lookup. A waiter registers before it
reads the store, so no change between its read and its wait can be missed.

Core NATS is at-most-once: after a reconnect (changes may have been missed) every
waiter is woken to re-read the store once. Shutdown wakes every waiter for good, so
long-polls answer and streams end at once.
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

log = logging.getLogger(__name__)

STALE = None  # a queued item meaning "changes may have been missed: re-read the store"


@dataclass(eq=False)
class Listener:
    """One waiter's inbox of (revision, record) changes; `STALE` asks for a re-read."""

    job_id: str
    queue: asyncio.Queue[tuple[int, Job] | None] = field(default_factory=asyncio.Queue)


class Notifier:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._listeners: dict[str, set[Listener]] = {}
        self._sub: Subscription | None = None
        self.closed = asyncio.Event()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            f"{constants.STATE_SUBJECT_PREFIX}.>", cb=self._on_message, pending_msgs_limit=-1
        )

    async def stop(self) -> None:
        """Wake every waiter for good (shutdown)."""
        self.closed.set()
        self.reconnected()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def reconnected(self) -> None:
        """Changes may have been missed while disconnected: everyone re-reads."""
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.queue.put_nowait(STALE)

    async def _on_message(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        listeners = self._listeners.get(job_id)
        if not listeners or not msg.data:  # nobody waits, or an expiry/delete marker
            return
        try:
            job = Job.loads(msg.data)
            revision = int((msg.headers or {}).get("Nats-Sequence", "0"))
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
