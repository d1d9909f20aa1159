"""The reads the web console needs besides the job itself: the job's request as it was
accepted (`GetSubmission`, `GET /v1/async/images/{kind}/{id}/request`) and the work
queue with its workers (`GetStats`, `GET /v1/async/images/stats`), each typed for gRPC
and rendered as JSON for REST, as every other answer is. The renderings are pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from imagejobs.api.auth import Authenticator
from imagejobs.api.fields import Context, metadata_of, parse_kind_or_404, read_kind
from imagejobs.api.service import JobService
from imagejobs.config import Settings
from imagejobs.domain.jobs import Job, ObjectRef, rfc3339
from imagejobs.domain.wire import kind_enum
from imagejobs.store.presence import WorkerBeat
from imagejobs.v1 import jobs_pb2

MAX_SHOWN_CHARS = 4096  # a longer text parameter (base64 input images) is cut to this
JSON_CONTENT_TYPE = "application/json"


# --- the job's request -----------------------------------------------------------------


def _shown(value: Any) -> Any:
    """A parameter as shown: texts longer than MAX_SHOWN_CHARS cut (lists, objects
    walked), so that a base64 image given inline does not come back whole."""
    if isinstance(value, str) and len(value) > MAX_SHOWN_CHARS:
        return f"{value[:MAX_SHOWN_CHARS]}… ({len(value)} characters)"
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    return value


def _input(ref: ObjectRef) -> dict[str, Any]:
    return {"mime_type": ref.content_type, "size_bytes": ref.size, "filename": ref.filename}


def submission_dict(job: Job) -> dict[str, Any]:
    """The job's request as REST prints it: every key present but `mask` (only when an
    edit had one)."""
    request = job.request
    doc: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind.value,
        "model": str(request.model),
        "prompt": request.prompt or "",
        "params": _shown(request.params),
        "fallbacks": [str(f) for f in request.fallbacks],
        "images": [_input(i) for i in request.images],
    }
    if request.mask is not None:
        doc["mask"] = _input(request.mask)
    doc["webhook"] = job.webhook
    doc["warnings"] = list(request.warnings)
    doc["created_at"] = rfc3339(job.created_at)
    return doc


def submission_json(job: Job) -> bytes:
    return json.dumps(submission_dict(job), separators=(",", ":"), ensure_ascii=False).encode()


def _timestamp(epoch_s: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(epoch_s * 1000))
    return ts


def _input_message(ref: ObjectRef) -> jobs_pb2.InputImage:
    return jobs_pb2.InputImage(
        mime_type=ref.content_type, size_bytes=ref.size, filename=ref.filename
    )


def submission_message(job: Job) -> jobs_pb2.Submission:
    """The job's request as the typed `Submission`."""
    doc = submission_dict(job)
    params = struct_pb2.Struct()
    params.update(doc["params"])
    request = job.request
    return jobs_pb2.Submission(
        job_id=job.id,
        kind=kind_enum(job.kind),
        model=doc["model"],
        prompt=doc["prompt"],
        params=params,
        fallbacks=doc["fallbacks"],
        images=[_input_message(i) for i in request.images],
        mask=_input_message(request.mask) if request.mask is not None else None,
        webhook=job.webhook,
        warnings=doc["warnings"],
        created_at=_timestamp(job.created_at),
    )


# --- the queue and its workers -----------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """The work queue as read at `time` (epoch s): `messages` not acked, `undelivered` of
    them, its bound `max_jobs`; the live `workers`."""

    time: float
    messages: int
    undelivered: int
    max_jobs: int
    workers: tuple[WorkerBeat, ...]


def _worker_dict(beat: WorkerBeat) -> dict[str, Any]:
    return {
        "id": beat.id,
        "concurrency": beat.concurrency,
        "in_flight": beat.in_flight,
        "started_at": rfc3339(beat.started_at),
        "seen_at": rfc3339(beat.seen_at),
    }


def stats_json(stats: Stats) -> bytes:
    """The stats as REST prints them, every key present."""
    doc = {
        "time": rfc3339(stats.time),
        "queue": {
            "messages": stats.messages,
            "undelivered": stats.undelivered,
            "max_jobs": stats.max_jobs,
        },
        "workers": [_worker_dict(w) for w in stats.workers],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def stats_message(stats: Stats) -> jobs_pb2.Stats:
    return jobs_pb2.Stats(
        time=_timestamp(stats.time),
        queue=jobs_pb2.QueueStats(
            messages=stats.messages, undelivered=stats.undelivered, max_jobs=stats.max_jobs
        ),
        workers=[
            jobs_pb2.WorkerStats(
                id=w.id,
                concurrency=w.concurrency,
                in_flight=w.in_flight,
                started_at=_timestamp(w.started_at),
                seen_at=_timestamp(w.seen_at),
            )
            for w in stats.workers
        ],
    )


# --- the RPCs ------------------------------------------------------------------------------


class ConsoleRpcs:
    """The servicer's GetSubmission and GetStats RPCs (mixed into ImageJobServicer, whose
    constructor sets these attributes). Both need what any read needs: a key that is
    accepted (401 when one is required); a submission is its job owner's alone."""

    _auth: Authenticator
    _service: JobService
    _settings: Settings

    async def GetSubmission(
        self, request: jobs_pb2.GetSubmissionRequest, context: Context
    ) -> jobs_pb2.Submission:
        caller = self._auth.caller(metadata_of(context))
        job = await self._service.get(read_kind(request.kind), request.job_id, caller)
        return submission_message(job)

    async def GetSubmissionJson(
        self, request: jobs_pb2.GetSubmissionJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        caller = self._auth.caller(metadata_of(context))
        job = await self._service.get(parse_kind_or_404(request.kind), request.job_id, caller)
        return httpbody_pb2.HttpBody(content_type=JSON_CONTENT_TYPE, data=submission_json(job))

    async def GetStats(self, request: jobs_pb2.GetStatsRequest, context: Context) -> jobs_pb2.Stats:
        self._auth.caller(metadata_of(context))
        return stats_message(await self._stats())

    async def GetStatsJson(
        self, request: jobs_pb2.GetStatsJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        self._auth.caller(metadata_of(context))
        return httpbody_pb2.HttpBody(
            content_type=JSON_CONTENT_TYPE, data=stats_json(await self._stats())
        )

    async def _stats(self) -> Stats:
        messages, undelivered = await self._service.queue.depth()
        workers = await self._service.presence.workers()
        return Stats(
            time=self._service.now(),
            messages=messages,
            undelivered=undelivered,
            max_jobs=self._settings.queue_max_jobs,
            workers=tuple(workers),
        )
