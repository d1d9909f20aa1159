"""The console's reads on the in-memory store: a job's request as accepted (long texts
cut, uploads described, never their bytes) and the stats' live workers, which come and go
with their heartbeats."""

from __future__ import annotations

import asyncio
import json

from imagejobs.api.console_reads import (
    MAX_SHOWN_CHARS,
    Stats,
    stats_json,
    stats_message,
    submission_dict,
    submission_message,
)
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.jobs import Job, ObjectRef, StoredRequest
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.store.clock import FakeClock
from imagejobs.store.presence import WorkerBeat, presence_subject
from imagejobs.store.protocols import Backend
from imagejobs.v1 import jobs_pb2

from tests.unit.conftest import ScriptedRunner, make_worker


def _edit(**params: object) -> Job:
    ref = ObjectRef(object_id="j.in0", content_type="image/png", size=1234, filename="cat.png")
    mask = ObjectRef(object_id="j.mask", content_type="image/png", size=99)
    return Job(
        id="0b7a6c2e-1111-4222-8333-444455556666",
        kind=Kind.EDIT,
        request_id="r",
        webhook="hooks",
        created_at=1_800_000_000.5,
        ttl_s=60,
        request=StoredRequest(
            model=ModelRef.parse("mock/m"),
            prompt="add a sun",
            params=params,
            images=(ref,),
            mask=mask,
            fallbacks=(ModelRef.parse("mock/b"),),
            warnings=("w",),
        ),
    )


def test_a_submission_shows_the_request_with_long_texts_cut_and_uploads_described() -> None:
    long = "A" * (MAX_SHOWN_CHARS + 10)
    doc = submission_dict(_edit(size="16x16", input_images=[long, "https://x/y.png"]))
    assert doc["kind"] == "edits" and doc["model"] == "mock/m" and doc["prompt"] == "add a sun"
    first, second = doc["params"]["input_images"]
    assert first == "A" * MAX_SHOWN_CHARS + f"… ({MAX_SHOWN_CHARS + 10} characters)"
    assert second == "https://x/y.png" and doc["params"]["size"] == "16x16"
    assert doc["images"] == [{"mime_type": "image/png", "size_bytes": 1234, "filename": "cat.png"}]
    assert doc["mask"] == {"mime_type": "image/png", "size_bytes": 99, "filename": ""}
    assert doc["fallbacks"] == ["mock/b"] and doc["webhook"] == "hooks"
    assert doc["created_at"] == "2027-01-15T08:00:00.500Z"
    typed = submission_message(_edit(size="16x16"))
    assert typed.kind == jobs_pb2.JOB_KIND_EDIT and typed.params["size"] == "16x16"
    assert typed.mask.size_bytes == 99 and typed.images[0].filename == "cat.png"


def test_stats_render_every_key() -> None:
    beat = WorkerBeat(id="h-1", concurrency=4, in_flight=1, started_at=10.0, seen_at=12.0)
    stats = Stats(time=13.0, messages=3, undelivered=2, max_jobs=100, workers=(beat,))
    doc = json.loads(stats_json(stats))
    assert doc["queue"] == {"messages": 3, "undelivered": 2, "max_jobs": 100}
    assert doc["workers"] == [
        {
            "id": "h-1",
            "concurrency": 4,
            "in_flight": 1,
            "started_at": "1970-01-01T00:00:10.000Z",
            "seen_at": "1970-01-01T00:00:12.000Z",
        }
    ]
    assert stats_message(stats).workers[0].in_flight == 1
    empty = json.loads(
        stats_json(Stats(time=1.0, messages=0, undelivered=0, max_jobs=1, workers=()))
    )
    assert empty["workers"] == []


async def test_a_running_worker_is_listed_until_it_stops(
    backend: Backend, runner: ScriptedRunner, clock: FakeClock, settings: Settings
) -> None:
    worker = make_worker(backend, runner, clock, settings, name="host.example-7")
    run = asyncio.create_task(worker.run())
    for _ in range(100):  # bounded: the first beat is written before the first fetch
        if await backend.presence.workers():
            break
        await asyncio.sleep(0)
    [beat] = await backend.presence.workers()
    assert beat.id == "host.example-7" and beat.concurrency == settings.worker_concurrency
    assert presence_subject(beat.id) == f"{constants.WORKERS_SUBJECT_PREFIX}.host_example-7"
    await clock.advance(constants.WORKER_BEAT_TTL_S * 3)  # it keeps beating meanwhile
    [again] = await backend.presence.workers()
    assert again.seen_at > beat.seen_at
    worker.stop()
    await clock.advance(1.0)  # its fetch ends
    await asyncio.wait_for(run, 5)
    assert await backend.presence.workers() == []


async def test_a_worker_that_died_drops_out_after_its_last_beat_expires(
    backend: Backend, clock: FakeClock
) -> None:
    now = clock.time()
    beat = WorkerBeat(id="gone-1", concurrency=2, in_flight=2, started_at=now, seen_at=now)
    await backend.presence.beat(beat, constants.WORKER_BEAT_TTL_S)
    await clock.advance(constants.WORKER_BEAT_TTL_S - 1)
    assert [b.id for b in await backend.presence.workers()] == ["gone-1"]
    await clock.advance(2)
    assert await backend.presence.workers() == []
