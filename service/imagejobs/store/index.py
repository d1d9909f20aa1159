"""The per-caller job index behind `ListJobs`: one empty message per job in the JOBINDEX
stream, everything the list needs written into its subject,

    imagejobs.index.<owner>.<kind>.<created_ms>.<job_id>

A page is ordered by stream sequence, newest first: the order in which the index writes
were acknowledged (a submit's write is acknowledged before its 202, so this is submit
order; two submits racing may list in either order, whatever their `created_at`). The
page token is the sequence the next page starts below. Entries expire with a TTL that
outlives any job; a listed id whose record has gone is skipped (`api/reads.py`).

Cost: a page costs a page, not the caller's live jobs. The first page asks the stream's
leader for the sequence S of the caller's newest entry (`last_by_subj` on the caller's
wildcard filter), then reads the matching entries of a window of sequences below it in ONE
batched direct get (`seq` + `next_by_subj` + `batch`, NATS >= 2.11: matching messages
from `seq` on, in order, then a 204 end-of-batch status). A window that held less than a
page is widened (doubling) toward the caller's oldest entry, a bounded number of steps;
one denser than a read (`MAX_READ`) is narrowed again. nats-server 2.15 ignores
`up_to_seq` in such a batch, so a read runs on past the window; what lies past it is
dropped, and serves as the proof below.

Leader reads: a direct get is answered by any replica, and one behind the latest writes
could miss the newest entries. Every window read therefore runs on to an entry known to
exist (S from the leader, the previous page's last entry, or the lowest entry of the
window before): a replica that returns it has applied every write below it, so the window
is complete. A reply that stops short of it is completed with the leader's own gets.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import InvalidRequest
from imagejobs.domain.kinds import Kind
from imagejobs.store.jetstream import (
    REPLICA_READ_TIMEOUT_S,
    direct_batch,
    last_on_subject,
    nats_errors,
    publish,
)

ANONYMOUS = "anon"  # the subject token of callers without a key
FIRST_WINDOW = 64  # sequences a first read spans at least
MAX_READ = 1024  # entries one batched read returns at most (a bounded reply)
MAX_STEPS = 48  # window reads of one page: doubling from 64, this spans any stream
_WHAT = "job index read"


@dataclass(frozen=True)
class Entry:
    """One indexed job: its stream sequence (the order of the index writes), its id, its
    kind and its creation time (epoch ms)."""

    seq: int
    job_id: str
    kind: str
    created_ms: int


@dataclass(frozen=True)
class IndexPage:
    """Entries newest first, and the sequence the next page starts below (0: no more)."""

    entries: list[Entry]
    next_before: int


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


def parse_subject(subject: str, seq: int) -> Entry | None:
    """The entry an index subject at stream sequence `seq` stands for; None if it is not
    one."""
    parts = subject.split(".")
    if len(parts) != 6 or not parts[4].isdigit():
        return None
    return Entry(seq=seq, job_id=parts[5], kind=parts[3], created_ms=int(parts[4]))


def encode_token(before: int) -> str:
    """The page token of "entries below sequence `before`" (opaque to callers)."""
    return base64.urlsafe_b64encode(str(before).encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    """The sequence a page token stands for; InvalidRequest for anything else, including a
    token of the index before pages were ordered by sequence (`<created_ms>.<job_id>`): a
    page token lives as long as a caller pages, so it is asked to start again."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.isdigit() or not raw.isascii() or int(raw) < 1:
        raise InvalidRequest("page_token is not valid", param="page_token")
    return int(raw)


def owner_filter(owner: str, kind: Kind | None) -> str:
    """The subject filter of an owner's entries (of one kind, or all)."""
    token = kind.value if kind is not None else "*"
    return f"{constants.INDEX_SUBJECT_PREFIX}.{_owner_token(owner)}.{token}.*.*"


def page_of(entries: Iterable[Entry], before: int, limit: int) -> IndexPage:
    """The page of `entries` (any order) below sequence `before` (0: from the newest)."""
    below = sorted((e for e in entries if not before or e.seq < before), key=_seq, reverse=True)
    taken = below[:limit]
    return IndexPage(taken, taken[-1].seq if len(below) > limit else 0)


def _seq(entry: Entry) -> int:
    return entry.seq


class JetStreamIndex:
    """`JobIndex` on the JOBINDEX stream; entries live `ttl_s` seconds. `requests` counts
    the reads this index made (for tests that a page's cost is bounded)."""

    def __init__(self, nc: Client, js: JetStreamContext, ttl_s: int) -> None:
        self._nc = nc
        self._js = js
        self._ttl_s = ttl_s
        self.requests = 0

    async def add(self, owner: str, kind: Kind, created_s: float, job_id: str) -> None:
        """Index a job, acknowledged by JetStream (StoreUnavailable if it was not): an
        unacknowledged entry can be lost while a stream leader moves, and the job would
        be missing from its owner's list for good. A repeat (a retried submit) rewrites
        the same subject (at a new sequence: the entry moves to the top)."""
        subject = index_subject(owner, kind, created_s, job_id)
        await publish(self._js, subject, b"", what="job index write", ttl_s=self._ttl_s)

    async def page(self, owner: str, kind: Kind | None, before: int, limit: int) -> IndexPage:
        """Up to `limit` of the owner's entries (of one kind, or all) below sequence
        `before` (0: from the newest), newest first; every entry acknowledged before the
        call is seen (see the module docstring)."""
        pattern = owner_filter(owner, kind)
        if not before:
            self.requests += 1
            _, newest = await last_on_subject(self._js, constants.INDEX_STREAM, pattern, _WHAT)
            if not newest:
                return IndexPage([], 0)
            return await _Search(self, pattern, limit).run(hi=newest, proof=newest)
        return await _Search(self, pattern, limit).run(hi=before - 1, proof=before)

    async def _replica_read(self, pattern: str, lo: int, batch: int) -> list[Entry]:
        """Up to `batch` of the matching entries from sequence `lo` on, ascending, from any
        replica (one batched direct get)."""
        self.requests += 1
        msgs = await direct_batch(
            self._nc,
            constants.INDEX_STREAM,
            {"seq": lo, "next_by_subj": pattern, "batch": batch},
            _WHAT,
            timeout_s=REPLICA_READ_TIMEOUT_S,
        )
        found = (
            parse_subject(m.headers["Nats-Subject"], int(m.headers["Nats-Sequence"]))
            for m in msgs
            if m.headers
        )
        return [e for e in found if e is not None]

    async def _leader_next(self, pattern: str, seq: int) -> Entry | None:
        """The first matching entry at or after `seq`, from the leader; None if none."""
        self.requests += 1
        with nats_errors(_WHAT):
            try:
                msg = await self._js.get_msg(
                    constants.INDEX_STREAM, seq=seq, subject=pattern, next=True
                )
            except NotFoundError:
                return None
        return parse_subject(msg.subject or "", int(msg.seq or seq))

    async def _leader_read(self, pattern: str, lo: int, hi: int, count: int) -> list[Entry]:
        """The matching entries in [lo, hi], ascending, from the leader (one get each, at
        most `count`): for a window a replica answered short."""
        found: list[Entry] = []
        seq = lo
        for _ in range(count):
            entry = await self._leader_next(pattern, seq)
            if entry is None or entry.seq > hi:
                break
            found.append(entry)
            seq = entry.seq + 1
        return found


class _Search:
    """One page's walk down the stream: windows of sequences below `hi`, each read whole,
    until the page (and one more entry, to know whether there are more) is found or the
    owner's oldest entry is passed."""

    def __init__(self, index: JetStreamIndex, pattern: str, limit: int) -> None:
        self._index = index
        self._pattern = pattern
        self._limit = limit
        self._found: list[Entry] = []  # newest first
        self._floor: int | None = None  # the owner's oldest entry's sequence, once asked

    async def run(self, *, hi: int, proof: int) -> IndexPage:
        """Search below-or-at `hi`; `proof` is the sequence of an entry known to exist at
        or above `hi` (the read of the first window must reach it)."""
        want = self._limit + 1
        width = max(2 * want, FIRST_WINDOW)
        for _ in range(MAX_STEPS):
            lo = max(hi - width + 1, 1, self._floor or 1)
            window = await self._window(lo, hi, proof, min(width, MAX_READ))
            if window is None:  # denser than one read: narrow it, same top
                width = max(width // 4, FIRST_WINDOW)
                continue
            self._found.extend(reversed(window))
            if len(self._found) >= want or await self._at_bottom(lo):
                return self._page(0)
            if window:
                proof = window[0].seq
            hi, width = lo - 1, width * 2
        return self._page(hi + 1)  # out of steps: the next page goes on from here

    def _page(self, unread_below: int) -> IndexPage:
        """The page found; the next one starts below its last entry if more were found,
        else below `unread_below` (0: nothing left)."""
        taken = self._found[: self._limit]
        if len(self._found) > self._limit:
            return IndexPage(taken, taken[-1].seq)
        return IndexPage(taken, unread_below)

    async def _at_bottom(self, lo: int) -> bool:
        """Whether nothing of the owner's lies below `lo` (asks the leader once)."""
        if lo <= 1:
            return True
        if self._floor is None:
            oldest = await self._index._leader_next(self._pattern, 1)
            self._floor = oldest.seq if oldest is not None else lo
        return lo <= self._floor

    async def _window(self, lo: int, hi: int, proof: int, cap: int) -> list[Entry] | None:
        """Every matching entry in [lo, hi] (hi - lo < cap unless `cap` = MAX_READ),
        ascending; None if there are more than `cap`. The read asks for one more than
        the window can hold, so a replica that has applied the writes up to `proof`
        returns an entry at or past it."""
        got = await self._index._replica_read(self._pattern, lo, cap + 1)
        inside = [e for e in got if e.seq <= hi]
        if any(e.seq >= proof for e in got):
            return inside
        if len(got) > cap:  # a full reply, all below `proof`: denser than one read
            return None
        # short of `proof`: a replica behind the writes (or the entry at `proof` has gone
        # since); what it returned is whole up to its last entry, the rest from the leader
        start = inside[-1].seq + 1 if inside else lo
        return inside + await self._index._leader_read(self._pattern, start, hi, cap + 1)
