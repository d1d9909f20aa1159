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

from nats.aio.client import Client
from nats.js import JetStreamContext

from imagejobs.domain import constants
from imagejobs.domain.errors import StoreError
from imagejobs.store.jetstream import last_on_subject, nats_errors, publish
from imagejobs.store.protocols import StoredObject

_META = f"{constants.OBJECT_SUBJECT_PREFIX}.meta."
_CHUNK = f"{constants.OBJECT_SUBJECT_PREFIX}.chunk."
_READ_TIMEOUT_S = 10.0
_CHUNK_BUFFER_BYTES = 256 * 1024 * 1024  # a reader's subscription holds a whole object


class JetStreamObjects:
    """`ObjectStore` on the IMAGES stream."""

    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js

    async def put(self, object_id: str, data: bytes, content_type: str, ttl_s: int) -> int:
        """Store `data` under `object_id` for `ttl_s` seconds. Returns its size."""
        size = constants.CHUNK_BYTES
        pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        chunk_ttl_s = ttl_s + constants.CHUNK_EXTRA_TTL_S
        # published concurrently on one connection: they go out (and are sequenced) in
        # call order; the first ack's sequence locates the run for the batched read
        seqs = await asyncio.gather(
            *(
                publish(self._js, _CHUNK + object_id, p, what="object write", ttl_s=chunk_ttl_s)
                for p in pieces
            )
        )
        meta = {
            "size": len(data),
            "chunks": len(pieces),
            "first_seq": min(seqs),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_type": content_type,
        }
        await publish(
            self._js, _META + object_id, json.dumps(meta).encode(), what="object write", ttl_s=ttl_s
        )
        return len(data)

    async def get(self, object_id: str) -> StoredObject | None:
        """The object, or None when it is absent or expired."""
        data, _ = await last_on_subject(
            self._js, constants.OBJECT_STREAM, _META + object_id, "object read"
        )
        if not data:
            return None
        meta = json.loads(data)
        chunks = await self._read_chunks(object_id, int(meta["first_seq"]), int(meta["chunks"]))
        joined = b"".join(chunks)
        if len(joined) != meta["size"] or hashlib.sha256(joined).hexdigest() != meta["sha256"]:
            raise StoreError(f"object {object_id} is corrupt or incomplete")
        return StoredObject(data=joined, content_type=str(meta["content_type"]))

    async def _read_chunks(self, object_id: str, first_seq: int, count: int) -> list[bytes]:
        request = {"seq": first_seq, "next_by_subj": _CHUNK + object_id, "batch": count}
        with nats_errors("object read"):
            inbox = self._nc.new_inbox()
            sub = await self._nc.subscribe(inbox, pending_bytes_limit=_CHUNK_BUFFER_BYTES)
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
            finally:
                await sub.unsubscribe()
