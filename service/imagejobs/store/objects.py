"""Image bytes in JetStream, each object expiring with its job.

The stock nats-py object store has no per-object TTL and reassembles large objects
slowly, so this is a small one of our own on the IMAGES stream (allow_msg_ttl):

    imagejobs.obj.chunk.<id>   the bytes in CHUNK_BYTES pieces, TTL = ttl + CHUNK_EXTRA_TTL_S
    imagejobs.obj.meta.<id>    JSON {size, chunks, first_seq, crc32, content_type}, TTL = ttl

A read checks the joined chunks against the meta's size and CRC-32 (zlib's: 16 MB in ~5 ms,
where SHA-256 took ~13 ms of every 16 MB poll; the check is for a missing or stray chunk,
not an adversary). Objects written before carry a `sha256` instead, which is checked.

An object of at most INLINE_BYTES is one message: its meta (with `"inline": true`), a
newline, then its bytes, on the meta subject (a JSON dump has no raw newline), so that a
small image (a worker's result, an upload) is one write and one read.

Chunks are written first and outlive the meta record, so a reader that finds the meta
always finds every chunk. A read is one get of the meta from the stream's leader and one
batched direct get of the chunks (NATS >= 2.11), joined once. On a cluster the batch may be
answered by a replica that has not applied the latest chunks yet: it then ends early, and
the chunks it lacked are read from the leader, which has every acknowledged one. An object
never changes once written, so while there is no leader its meta may come from any
replica (but "none there" is then StoreUnavailable, not "absent").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import zlib
from typing import TypedDict

from nats.aio.client import Client
from nats.js import JetStreamContext

from imagejobs.domain import constants
from imagejobs.domain.errors import StoreError, StoreUnavailable
from imagejobs.store.jetstream import (
    any_replica_last,
    direct_batch,
    last_on_subject,
    leader_next,
    publish,
)
from imagejobs.store.protocols import StoredObject

_META = f"{constants.OBJECT_SUBJECT_PREFIX}.meta."
_CHUNK = f"{constants.OBJECT_SUBJECT_PREFIX}.chunk."
_CHUNK_BUFFER_BYTES = 256 * 1024 * 1024  # a reader's subscription holds a whole object


INLINE_BYTES = 64 * 1024  # an object this small is stored in its meta message


class _Meta(TypedDict, total=False):
    size: int
    chunks: int
    first_seq: int
    crc32: int
    sha256: str  # objects written before crc32
    content_type: str
    inline: bool


def _intact(data: bytes, meta: _Meta) -> bool:
    """Whether `data` is what the meta's checksum says it was (an inline object, one
    message with its meta, has none beyond its size)."""
    if meta.get("inline"):
        return True
    if "crc32" in meta:
        return zlib.crc32(data) == meta["crc32"]
    return hashlib.sha256(data).hexdigest() == meta.get("sha256")


class JetStreamObjects:
    """`ObjectStore` on the IMAGES stream; a read waits `timeout_s` at most for a chunk."""

    def __init__(self, nc: Client, js: JetStreamContext, timeout_s: float) -> None:
        self._nc = nc
        self._js = js
        self._timeout_s = timeout_s

    async def put(self, object_id: str, data: bytes, content_type: str, ttl_s: int) -> int:
        """Store `data` under `object_id` for `ttl_s` seconds. Returns its size."""
        if len(data) <= INLINE_BYTES:
            inline: _Meta = {"size": len(data), "content_type": content_type, "inline": True}
            message = json.dumps(inline).encode() + b"\n" + data
            await publish(self._js, _META + object_id, message, what="object write", ttl_s=ttl_s)
            return len(data)
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
        meta: _Meta = {
            "size": len(data),
            "chunks": len(pieces),
            "first_seq": min(seqs),
            "crc32": zlib.crc32(data),
            "content_type": content_type,
        }
        await publish(
            self._js, _META + object_id, json.dumps(meta).encode(), what="object write", ttl_s=ttl_s
        )
        return len(data)

    async def get(self, object_id: str) -> StoredObject | None:
        """The object, or None when it is absent or expired."""
        found = await self._meta(object_id)
        if found is None:
            return None
        meta, inline = found
        data = inline if meta.get("inline") else await self._joined(object_id, meta)
        if len(data) != meta["size"] or not _intact(data, meta):
            raise StoreError(f"object {object_id} is corrupt or incomplete")
        return StoredObject(data=data, content_type=str(meta["content_type"]))

    async def _joined(self, object_id: str, meta: _Meta) -> bytes:
        """A chunked object's bytes: its chunks in one batch, the rest from the leader."""
        first, count = meta["first_seq"], meta["chunks"]
        chunks = await self._read_chunks(object_id, first, count)
        if len(chunks) < count:  # a replica behind the latest writes answered the batch
            after = chunks[-1][0] + 1 if chunks else first
            chunks += await self._chunks_from_leader(object_id, after, count - len(chunks))
        return b"".join(data for _, data in chunks)

    async def _meta(self, object_id: str) -> tuple[_Meta, bytes] | None:
        """The object's meta record (and the bytes of an inline object) from the leader;
        while there is none, from any replica (an object never changes),
        StoreUnavailable if that one lacks it."""
        subject = _META + object_id
        try:
            data, _ = await last_on_subject(
                self._js, constants.OBJECT_STREAM, subject, "object read"
            )
        except StoreUnavailable:
            data, _ = await any_replica_last(
                self._js, constants.OBJECT_STREAM, subject, "object read"
            )
            if not data:
                raise
        if not data:
            return None
        head, _, inline = data.partition(b"\n")
        meta: _Meta = json.loads(head)
        return meta, inline

    async def _read_chunks(
        self, object_id: str, first_seq: int, count: int
    ) -> list[tuple[int, bytes]]:
        """Up to `count` chunks (sequence, bytes) from `first_seq` on, in one batched direct
        get; fewer when the replica that answers ends early (it lacks the rest)."""
        msgs = await direct_batch(
            self._nc,
            constants.OBJECT_STREAM,
            {"seq": first_seq, "next_by_subj": _CHUNK + object_id, "batch": count},
            "object read",
            timeout_s=self._timeout_s,
            buffer_bytes=_CHUNK_BUFFER_BYTES,
        )
        return [(int((m.headers or {})["Nats-Sequence"]), m.data) for m in msgs[:count]]

    async def _chunks_from_leader(
        self, object_id: str, from_seq: int, count: int
    ) -> list[tuple[int, bytes]]:
        """`count` chunks from `from_seq` on, one leader get each; StoreError if the leader
        has fewer (the object is incomplete: its chunks expired)."""
        chunks: list[tuple[int, bytes]] = []
        seq = from_seq
        for _ in range(count):
            msg = await leader_next(
                self._js, constants.OBJECT_STREAM, _CHUNK + object_id, seq, "object read"
            )
            if msg is None:
                raise StoreError(f"object {object_id}: chunks missing")
            chunks.append((int(msg.seq or seq), msg.data or b""))
            seq = chunks[-1][0] + 1
        return chunks
