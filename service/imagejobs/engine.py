"""The API side of the job engine: accept, read and serve jobs. No provider is ever
called here; workers do that.

Submit order (what makes a 202 safe): uploads to the object store -> job record created
(`pending`, create-only) -> message published (deduplicated by job id) -> 202. A crash
before the publish leaves a record no client was told about; a client retrying with the
same id re-publishes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass

from imagejobs import constants
from imagejobs.errors import JobNotFound
from imagejobs.jobs import Job, ObjectRef, StoredRequest
from imagejobs.kinds import Kind
from imagejobs.objects import ObjectStore, StoredObject
from imagejobs.queue import JobQueue
from imagejobs.requests import ImageRequest
from imagejobs.store import JobStore
from imagejobs.uploads import Upload


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` is '' for anonymous callers, else a stable key id."""

    owner: str = ""

    @classmethod
    def from_key(cls, key: str | None) -> Caller:
        if not key:
            return cls()
        return cls(owner="k-" + hashlib.sha256(key.encode()).hexdigest()[:24])


class Engine:
    def __init__(self, store: JobStore, queue: JobQueue, objects: ObjectStore) -> None:
        self.store = store
        self.queue = queue
        self.objects = objects

    async def submit(
        self, request: ImageRequest, *, ttl_s: int, request_id: str, caller: Caller
    ) -> Job:
        """Record and enqueue a job; returns it `pending`."""
        job_id = str(uuid.uuid4())
        uploads = [(f"in{i}", u) for i, u in enumerate(request.images)]
        if request.mask is not None:
            uploads.append(("mask", request.mask))
        refs = await asyncio.gather(*(self._upload(job_id, name, u) for name, u in uploads))
        mask = refs.pop() if request.mask is not None else None
        images = tuple(refs)
        job = Job(
            id=job_id,
            kind=request.kind,
            request_id=request_id or str(uuid.uuid4()),
            owner=caller.owner,
            created_at=time.time(),
            ttl_s=ttl_s,
            request=StoredRequest(
                model=request.model,
                prompt=request.prompt,
                params=dict(request.params),
                images=images,
                mask=mask,
                fallbacks=request.fallbacks,
            ),
        )
        await self.store.create(job)
        await self.queue.publish(job.id)
        return job

    async def _upload(self, job_id: str, name: str, upload: Upload) -> ObjectRef:
        object_id = f"{job_id}.{name}"
        await self.objects.put(object_id, upload.data, upload.mime, constants.UPLOAD_TTL_S)
        return ObjectRef(
            object_id=object_id,
            content_type=upload.mime,
            size=len(upload.data),
            filename=upload.filename,
        )

    async def get(self, kind: Kind, job_id: str, caller: Caller) -> Job:
        """The caller's job of that kind; JobNotFound for anything else (no leaks)."""
        found = await self.store.get(job_id) if _plausible_id(job_id) else None
        if found is None:
            raise JobNotFound()
        job, _ = found
        if job.kind is not kind or job.owner != caller.owner or job.expired():
            raise JobNotFound()
        return job

    async def image(self, kind: Kind, job_id: str, index: int, caller: Caller) -> StoredObject:
        """One result image's bytes; JobNotFound when there is none (or it expired)."""
        job = await self.get(kind, job_id, caller)
        if job.result is None or not 0 <= index < len(job.result.images):
            raise JobNotFound()
        obj = await self.objects.get(job.result.images[index].ref.object_id)
        if obj is None:
            raise JobNotFound()
        return obj


def _plausible_id(job_id: str) -> bool:
    try:
        uuid.UUID(job_id)
    except ValueError:
        return False
    return True
