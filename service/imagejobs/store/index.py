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
from collections.abc import Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import InvalidRequest
from imagejobs.domain.kinds import Kind
from imagejobs.store.jetstream import nats_errors, publish

ANONYMOUS = "anon"  # the subject token of callers without a key


@dataclass(frozen=True, order=True)
class Entry:
    """One indexed job; orders by creation time, then id."""

    created_ms: int
    job_id: str
    kind: str


def index_ttl_s(settings: Settings) -> int:
    """How long an entry lives: longer than any job it lists."""
    return constants.PENDING_TTL_S + settings.max_ttl_s


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


def owner_filter(owner: str, kind: Kind | None) -> str:
    """The subject filter of an owner's entries (of one kind, or all)."""
    token = kind.value if kind is not None else "*"
    return f"{constants.INDEX_SUBJECT_PREFIX}.{_owner_token(owner)}.{token}.*.*"


def newest_first(subjects: Iterable[str]) -> list[Entry]:
    """The entries of index subjects, newest first (other subjects skipped)."""
    found = (parse_subject(s) for s in subjects)
    return sorted((e for e in found if e is not None), reverse=True)


class JetStreamIndex:
    """`JobIndex` on the JOBINDEX stream; entries live `ttl_s` seconds."""

    def __init__(self, js: JetStreamContext, ttl_s: int) -> None:
        self._js = js
        self._ttl_s = ttl_s

    async def add(self, owner: str, kind: Kind, created_s: float, job_id: str) -> None:
        """Index a job, acknowledged by JetStream (StoreUnavailable if it was not): an
        unacknowledged entry can be lost while a stream leader moves, and the job would
        be missing from its owner's list for good. A repeat (a retried submit) rewrites
        the same subject."""
        subject = index_subject(owner, kind, created_s, job_id)
        await publish(self._js, subject, b"", what="job index write", ttl_s=self._ttl_s)

    async def entries(self, owner: str, kind: Kind | None) -> list[Entry]:
        """The caller's indexed jobs (of one kind, or all), newest first."""
        with nats_errors("job index read"):
            info = await self._js.stream_info(
                constants.INDEX_STREAM, subjects_filter=owner_filter(owner, kind)
            )
        return newest_first(info.state.subjects or {})


def after(entries: list[Entry], token: str) -> list[Entry]:
    """The entries strictly older than the page token's position (entries newest first)."""
    if not token:
        return entries
    ms, job_id = decode_token(token)
    return [e for e in entries if (e.created_ms, e.job_id) < (ms, job_id)]
