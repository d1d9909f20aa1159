"""Image bytes in JetStream, each object expiring with its job.

The stock nats-py object store has no per-object TTL and reassembles large objects
slowly, so this is a small one of our own on the IMAGES stream (allow_msg_ttl):

    imagejobs.obj.chunk.<id>   the bytes in CHUNK_BYTES pieces, TTL = ttl + CHUNK_EXTRA_TTL_S
    imagejobs.obj.meta.<id>    JSON {size, chunks, first_seq, sha256, content_type}, TTL = ttl

Chunks are written first and outlive the meta record, so a reader that finds the meta
always finds every chunk. Reads are one direct get of the meta and one batched direct get
of the chunks (NATS >= 2.11), joined once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from imagejobs.domain import constants
from imagejobs.domain.errors import StoreError, StoreUnavailable

_META = f"{constants.OBJECT_SUBJECT_PREFIX}.meta."
_CHUNK = f"{constants.OBJECT_SUBJECT_PREFIX}.chunk."
_READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    content_type: str


class ObjectStore:
    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js

    async def put(self, object_id: str, data: bytes, content_type: str, ttl_s: int) -> int:
        """Store `data` under `object_id` for `ttl_s` seconds. Returns its size."""
        pieces = [
            data[i : i + constants.CHUNK_BYTES] for i in range(0, len(data), constants.CHUNK_BYTES)
        ] or [b""]
        chunk_ttl = {"Nats-TTL": f"{ttl_s + constants.CHUNK_EXTRA_TTL_S}s"}
        try:
            # published concurrently on one connection: they go out (and are sequenced) in
            # call order; the first ack's sequence locates the run for the batched read
            acks = await asyncio.gather(
                *(self._js.publish(_CHUNK + object_id, p, headers=dict(chunk_ttl)) for p in pieces)
            )
            meta = {
                "size": len(data),
                "chunks": len(pieces),
                "first_seq": min(a.seq for a in acks),
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_type": content_type,
            }
            await self._js.publish(
                _META + object_id, json.dumps(meta).encode(), headers={"Nats-TTL": f"{ttl_s}s"}
            )
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"object write failed: {type(exc).__name__}") from exc
        return len(data)

    async def get(self, object_id: str) -> StoredObject | None:
        """The object, or None when it is absent or expired."""
        try:
            msg = await self._js.get_msg(
                constants.OBJECT_STREAM, subject=_META + object_id, direct=True
            )
        except NotFoundError:
            return None
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"object read failed: {type(exc).__name__}") from exc
        if not msg.data:
            return None
        meta = json.loads(msg.data)
        chunks = await self._read_chunks(object_id, int(meta["first_seq"]), int(meta["chunks"]))
        data = b"".join(chunks)
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise StoreError(f"object {object_id} is corrupt or incomplete")
        return StoredObject(data=data, content_type=str(meta["content_type"]))

    async def _read_chunks(self, object_id: str, first_seq: int, count: int) -> list[bytes]:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, pending_bytes_limit=256 * 1024 * 1024)
        request = {"seq": first_seq, "next_by_subj": _CHUNK + object_id, "batch": count}
        try:
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{constants.OBJECT_STREAM}",
                json.dumps(request).encode(),
                reply=inbox,
            )
            chunks: list[bytes] = []
            while len(chunks) < count:
                msg = await sub.next_msg(timeout=_READ_TIMEOUT_S)
                status = msg.headers.get("Status") if msg.headers else None
                if status:  # 404 (nothing) or 204 EOB (ended early)
                    raise StoreError(f"object {object_id}: chunks missing ({status})")
                chunks.append(msg.data)
            return chunks
        except (TimeoutError, NatsError) as exc:
            if isinstance(exc, APIError):
                raise StoreError(f"object {object_id}: {exc.description}") from exc
            raise StoreUnavailable(f"object read failed: {type(exc).__name__}") from exc
        finally:
            await sub.unsubscribe()
