"""Which workers are alive: each worker process writes a heartbeat (`WorkerBeat`) on
`imagejobs.workers.<worker>` every `WORKER_BEAT_S`, living `WORKER_BEAT_TTL_S`, in the
WORKERS stream (one message per subject). A worker that stops removes its own; one that
dies drops out when its last beat expires. `GetStats` lists them.

Listing reads the stream's live subjects (one `STREAM.INFO` with a subject filter) and
each one's last beat: meant for a handful of workers read every few seconds, not for
thousands.
"""

from __future__ import annotations

import re

from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, ValidationError

from imagejobs.domain import constants
from imagejobs.store.jetstream import last_on_subject, nats_errors, publish

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
ALL_WORKERS = f"{constants.WORKERS_SUBJECT_PREFIX}.*"


class WorkerBeat(BaseModel):
    """One worker's heartbeat. Times are epoch seconds; `in_flight` and `concurrency`
    count jobs."""

    model_config = ConfigDict(frozen=True)
    id: str
    concurrency: int
    in_flight: int
    started_at: float
    seen_at: float

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()


def presence_subject(worker_id: str) -> str:
    """The worker's subject (an id such as `host.example-42` made one subject token)."""
    return f"{constants.WORKERS_SUBJECT_PREFIX}.{_UNSAFE.sub('_', worker_id)}"


def parse_beats(messages: list[bytes]) -> list[WorkerBeat]:
    """The readable beats among `messages` (a removed or garbled one skipped), by id."""
    beats = []
    for data in messages:
        if not data:
            continue
        try:
            beats.append(WorkerBeat.model_validate_json(data))
        except ValidationError:
            continue
    return sorted(beats, key=lambda b: b.id)


class JetStreamPresence:
    """`Presence` on the WORKERS stream."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def beat(self, beat: WorkerBeat, ttl_s: int) -> None:
        await publish(
            self._js, presence_subject(beat.id), beat.dumps(), what="worker beat", ttl_s=ttl_s
        )

    async def leave(self, worker_id: str) -> None:
        with nats_errors("worker leave"):
            await self._js.purge_stream(
                constants.WORKERS_STREAM, subject=presence_subject(worker_id)
            )

    async def workers(self) -> list[WorkerBeat]:
        with nats_errors("worker list"):
            info = await self._js.stream_info(constants.WORKERS_STREAM, subjects_filter=ALL_WORKERS)
        found = []
        for subject in info.state.subjects or {}:
            data, _ = await last_on_subject(
                self._js, constants.WORKERS_STREAM, subject, "worker read"
            )
            found.append(data)
        return parse_beats(found)
