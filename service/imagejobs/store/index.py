"""The per-caller job index behind `ListJobs`: one empty message per job in the JOBINDEX
stream, everything the list needs written into its subject,

    imagejobs.index.<owner>.<kind>.<created_ms>.<job_id>

so that one `STREAM.INFO` with a subject filter returns a caller's jobs (of one kind, or
all) without reading a message. Sorting those subjects gives newest first; the page token
is the position of the last job returned. Entries expire with a TTL that outlives any
job; a listed id whose record has gone is skipped.

Cost: a list reads the subject names of the caller's live jobs (the server answers up to
100,000 per call), then the records of one page. Adequate for an operator's view of
recent jobs, not for analytics.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from imagejobs.domain import constants
from imagejobs.domain.errors import InvalidRequest, StoreUnavailable
from imagejobs.domain.kinds import Kind

ANONYMOUS = "anon"  # the subject token of callers without a key


@dataclass(frozen=True, order=True)
class Entry:
    """One indexed job; orders by creation time, then id."""

    created_ms: int
    job_id: str
    kind: str


def _owner_token(owner: str) -> str:
    return owner or ANONYMOUS


def index_subject(owner: str, kind: Kind, created_s: float, job_id: str) -> str:
    created_ms = int(created_s * 1000)
    return (
        f"{constants.INDEX_SUBJECT_PREFIX}.{_owner_token(owner)}.{kind.value}"
        f".{created_ms:013d}.{job_id}"
    )


def parse_subject(subject: str) -> Entry | None:
    parts = subject.split(".")
    if len(parts) != 6 or not parts[4].isdigit():
        return None
    return Entry(created_ms=int(parts[4]), job_id=parts[5], kind=parts[3])


def encode_token(entry: Entry) -> str:
    raw = f"{entry.created_ms}.{entry.job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[int, str]:
    """The position a page token stands for; InvalidRequest for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        ms, _, job_id = raw.partition(".")
        return int(ms), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("page_token is not valid", param="page_token") from None


class JobIndex:
    def __init__(self, nc: Client, js: JetStreamContext, ttl_s: int) -> None:
        self._nc = nc
        self._js = js
        self._ttl_s = ttl_s

    async def add(self, owner: str, kind: Kind, created_s: float, job_id: str) -> None:
        """Index a job. Sent without waiting for JetStream's acknowledgement (a third of
        a submit's cost otherwise): the index serves lists only, and the job itself is
        safe in the record and the queue either way."""
        subject = index_subject(owner, kind, created_s, job_id)
        try:
            await self._nc.publish(subject, b"", headers={"Nats-TTL": f"{self._ttl_s}s"})
        except NatsError as exc:
            raise StoreUnavailable(f"job index write failed: {type(exc).__name__}") from exc

    async def entries(self, owner: str, kind: Kind | None) -> list[Entry]:
        """The caller's indexed jobs (of one kind, or all), newest first."""
        token = kind.value if kind is not None else "*"
        subjects_filter = f"{constants.INDEX_SUBJECT_PREFIX}.{_owner_token(owner)}.{token}.*.*"
        try:
            info = await self._js.stream_info(
                constants.INDEX_STREAM, subjects_filter=subjects_filter
            )
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"job index read failed: {type(exc).__name__}") from exc
        found = (parse_subject(s) for s in (info.state.subjects or {}))
        return sorted((e for e in found if e is not None), reverse=True)


def after(entries: list[Entry], token: str) -> list[Entry]:
    """The entries strictly older than the page token's position (entries newest first)."""
    if not token:
        return entries
    ms, job_id = decode_token(token)
    return [e for e in entries if (e.created_ms, e.job_id) < (ms, job_id)]
