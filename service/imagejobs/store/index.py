"""The per-caller job index behind `ListJobs`: one empty message per job in the JOBINDEX
stream, everything the list needs written into its subject,

    imagejobs.index.<owner>.<kind>.<created_ms>.<job_id>

A page is ordered by stream sequence, newest first: the order in which the index writes
were acknowledged (a submit's write is acknowledged before its 202, so this is submit
order; two submits racing may list in either order, whatever their `created_at`; an
entry is written create-only, so a retried submit keeps its place). The page token is
the sequence the next page starts below. Entries expire with a TTL that outlives any
job; a listed id whose record has gone is skipped (`api/reads.py`).

Cost: a page costs a page, not the caller's live jobs. A page reads windows of stream
sequences downward from the stream's last sequence (the first page; one `STREAM.INFO`
without a subject filter gives it and the first sequence) or from its token, each window
in ONE batched direct get (`seq` + `batch`, NATS >= 2.11: the messages from `seq` on, in
order, then a 204 end-of-batch status), keeping the caller's entries (other callers'
subjects are read, never returned); a window that held less than a page is widened
(doubling, up to `MAX_WINDOW`). Those reads carry no subject filter on purpose: on
nats-server 2.15 a batch with a wildcard filter costs 5-50 ms whatever its size
(measured at 100,000 entries, even for a batch of 1 and for a caller with 6 entries; its
`Nats-Num-Pending` count, presumably), and `last_by_subj` on a wildcard costs what the
caller has entries (5-9 ms at 100,000). A window holding none of the caller's is a gap:
below one of the caller's entries, one filtered read from the stream's first sequence
takes all of theirs below it when they are few (`_all_below`); else the caller's newest
entry below the gap is found on the leader, and the windows go on below it (`MAX_JUMPS`
such jumps per page): before any entry of theirs is found, by one `last_by_subj`; below
one, by single filtered gets (`next_by_subj` from a sequence), probing exponentially
farther down and then halving, some 2 log2(gap) gets. Each of those scans the stream
from its sequence to the next match, so a page that crosses a gap of G sequences below
a busy caller's entries costs O(G log G) on the server (measured: 100-170 ms for a
50,000 gap on a loaded machine); a caller dense at the top pays nothing of it.
`up_to_seq` does not bound a batch (2.15 ignores it there), so a read runs on past its
window; what lies past it is dropped, and serves as the proof below.

Leader reads: a direct get is answered by any replica, and one behind the latest writes
could miss the newest entries. Every window read therefore asks for one message more than
the window holds, so that it runs on to a message known to exist (the stream's last one
from the leader, the previous page's last entry, the entry a jump found on the leader,
or the lowest message of the window before): a replica that returns it has applied every
write below it, so the window is complete. A reply that stops short of it is completed
with the leader's own gets. The jumps' gets are the leader's.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.errors import InvalidRequest, RevisionConflict
from imagejobs.domain.kinds import Kind
from imagejobs.store.jetstream import (
    REPLICA_READ_TIMEOUT_S,
    direct_batch,
    last_on_subject,
    leader_next,
    nats_errors,
    publish,
)

ANONYMOUS = "anon"  # the subject token of callers without a key
FIRST_WINDOW = 16  # sequences a first read spans at least
MAX_WINDOW = 1024  # sequences one read spans at most (a bounded reply)
MAX_STEPS = 64  # window reads of one page
MAX_JUMPS = 8  # gaps one page jumps at most: a caller sparser than that gets short pages
MAX_PROBES = 128  # gets of one jump: 2 log2 of any stream
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


@dataclass(frozen=True)
class _Filter:
    """An owner's entries (of one kind, or all): the NATS filter, and the same test on a
    subject read without one."""

    pattern: str
    prefix: str
    kind: str | None

    @classmethod
    def of(cls, owner: str, kind: Kind | None) -> _Filter:
        prefix = f"{constants.INDEX_SUBJECT_PREFIX}.{_owner_token(owner)}."
        return cls(owner_filter(owner, kind), prefix, kind.value if kind is not None else None)

    def entries(self, messages: Iterable[tuple[str, int]], hi: int) -> list[Entry]:
        """The entries among (subject, sequence) pairs at or below `hi`, in their order."""
        found = (
            parse_subject(subject, seq)
            for subject, seq in messages
            if seq <= hi and subject.startswith(self.prefix)
        )
        return [e for e in found if e is not None and self.kind in (None, e.kind)]


class JetStreamIndex:
    """`JobIndex` on the JOBINDEX stream; entries live `ttl_s` seconds. `requests` and
    `messages_read` count the reads made and the messages they returned (tests check that
    a page's cost is bounded)."""

    def __init__(self, nc: Client, js: JetStreamContext, ttl_s: int) -> None:
        self._nc = nc
        self._js = js
        self._ttl_s = ttl_s
        self.requests = 0
        self.messages_read = 0

    async def add(self, owner: str, kind: Kind, created_s: float, job_id: str) -> None:
        """Index a job, acknowledged by JetStream (StoreUnavailable if it was not): an
        unacknowledged entry can be lost while a stream leader moves, and the job would
        be missing from its owner's list for good. Create-only: a repeat (a retried
        submit) leaves the entry where it is (a rewrite would move it to the top)."""
        subject = index_subject(owner, kind, created_s, job_id)
        with contextlib.suppress(RevisionConflict):  # indexed already
            await publish(
                self._js, subject, b"", what="job index write", ttl_s=self._ttl_s, expected=0
            )

    async def page(self, owner: str, kind: Kind | None, before: int, limit: int) -> IndexPage:
        """Up to `limit` of the owner's entries (of one kind, or all) below sequence
        `before` (0: from the newest), newest first; every entry acknowledged before the
        call is seen (see the module docstring)."""
        self.requests += 1
        with nats_errors(_WHAT):  # from the leader: every acknowledged write counted
            state = (await self._js.stream_info(constants.INDEX_STREAM)).state
        first, last = max(state.first_seq, 1), state.last_seq
        top = min(before - 1, last) if before else last
        if top < first:
            return IndexPage([], 0)
        search = _Search(self, _Filter.of(owner, kind), limit, first)
        return await search.run(top, before or last)

    async def _replica_read(self, request: dict[str, object]) -> list[tuple[str, int]]:
        """(subject, sequence) of the messages one batched direct get returns, in order,
        from any replica."""
        self.requests += 1
        msgs = await direct_batch(
            self._nc, constants.INDEX_STREAM, request, _WHAT, timeout_s=REPLICA_READ_TIMEOUT_S
        )
        self.messages_read += len(msgs)
        return [
            (m.headers["Nats-Subject"], int(m.headers["Nats-Sequence"])) for m in msgs if m.headers
        ]

    async def _newest(self, flt: _Filter) -> int:
        """The sequence of the owner's newest entry (0: none), from the leader: one
        `last_by_subj` on the wildcard filter (it costs the server what the owner has
        entries, 5-9 ms at 100,000: about as much as 3 of the probes a jump makes)."""
        self.requests += 1
        _, seq = await last_on_subject(self._js, constants.INDEX_STREAM, flt.pattern, _WHAT)
        return seq

    async def _leader_next(self, flt: _Filter, seq: int) -> Entry | None:
        """The owner's first entry at or after `seq`, from the leader; None if none."""
        self.requests += 1
        msg = await leader_next(self._js, constants.INDEX_STREAM, flt.pattern, seq, _WHAT)
        if msg is None:
            return None
        found = flt.entries([(msg.subject or "", int(msg.seq or seq))], int(msg.seq or seq))
        return found[0] if found else None

    async def _leader_read(self, flt: _Filter, lo: int, hi: int, count: int) -> list[Entry]:
        """The owner's entries in [lo, hi], ascending, from the leader (one get each, at
        most `count`): for a window a replica answered short."""
        found: list[Entry] = []
        seq = lo
        for _ in range(count):
            entry = await self._leader_next(flt, seq)
            if entry is None or entry.seq > hi:
                break
            found.append(entry)
            seq = entry.seq + 1
        return found


class _Search:
    """One page's walk down the stream: windows of sequences below the top, each read
    whole, jumping gaps, until the page (and one more entry, to know whether there are
    more) is found or the stream's first sequence is passed."""

    def __init__(self, index: JetStreamIndex, flt: _Filter, limit: int, first: int) -> None:
        self._index = index
        self._flt = flt
        self._limit = limit
        self._first = first
        self._found: list[Entry] = []  # newest first

    async def run(self, hi: int, proof: int) -> IndexPage:
        """Search at or below `hi`; `proof` is the sequence of a message known to exist
        at or above `hi`."""
        want = self._limit + 1
        width = max(want + want // 2, FIRST_WINDOW)  # a dense caller's page, and gaps
        jumps = 0
        for _ in range(MAX_STEPS):
            lo = max(hi - width + 1, self._first)
            window, proof = await self._window(lo, hi, proof)
            self._found.extend(reversed(window))
            if len(self._found) >= want or lo <= self._first:
                return self._page(0)
            hi, width = lo - 1, min(width * 2, MAX_WINDOW)
            if not window:  # a gap: go straight to the caller's newest entry below it
                if jumps == MAX_JUMPS:
                    break
                jumps += 1
                rest = await self._all_below(hi, want) if self._found else None
                if rest is not None:
                    self._found.extend(reversed(rest))
                    return self._page(0)
                hi = proof = await self._jump(hi, width)
                if not hi:
                    return self._page(0)
        return self._page(hi + 1)  # out of steps: the next page goes on from here

    def _page(self, unread_below: int) -> IndexPage:
        """The page found; the next one starts below its last entry if more were found,
        else below `unread_below` (0: nothing left)."""
        taken = self._found[: self._limit]
        if len(self._found) > self._limit:
            return IndexPage(taken, taken[-1].seq)
        return IndexPage(taken, unread_below)

    async def _window(self, lo: int, hi: int, proof: int) -> tuple[list[Entry], int]:
        """The caller's entries in [lo, hi] from every message there (one read of one more
        message than the window holds), and the proof for the window below."""
        got = await self._index._replica_read({"seq": lo, "batch": hi - lo + 2})
        window = self._flt.entries(got, hi)
        below = got[0][1] if got else lo
        if any(seq >= proof for _, seq in got):
            return window, below
        # short of `proof`: a replica behind the writes (or that message has gone since);
        # what it returned is whole up to its last message, the rest from the leader
        start = got[-1][1] + 1 if got else lo
        rest = await self._index._leader_read(self._flt, start, hi, hi - start + 2)
        return window + rest, below

    async def _all_below(self, hi: int, want: int) -> list[Entry] | None:
        """All the caller's entries at or below `hi`, ascending, if they are few: one
        filtered read from the stream's first sequence (5-15 ms, see the module
        docstring), whole when it reaches the lowest entry found already. None when there
        are more than one read holds (or a replica behind answered)."""
        cap = max(4 * want, FIRST_WINDOW)
        proof = self._found[-1].seq
        request = {"seq": self._first, "next_by_subj": self._flt.pattern, "batch": cap + 1}
        got = await self._index._replica_read(request)
        if not any(seq >= proof for _, seq in got):
            return None
        return self._flt.entries(got, hi)

    async def _jump(self, hi: int, step: int) -> int:
        """The sequence of the caller's newest entry at or below `hi` (0: none). While
        none of theirs is found yet, the leader's `last_by_subj` gives it in one get
        (unless a newer entry came since the page began); below one, probes."""
        if not self._found:
            newest = await self._index._newest(self._flt)
            if newest <= hi:
                return newest
        return await self._newest_below(hi, step)

    async def _newest_below(self, hi: int, step: int) -> int:
        """The sequence of the caller's newest entry at or below `hi` (0: none), from the
        leader: probes `step`, 4 `step`, 16 `step`… below `hi` until one finds an entry
        at or below it, then halves the span between that entry and the nearest probe
        that found none."""
        empty_from = hi + 1  # none of the caller's in [empty_from, hi]
        best = 0
        for _ in range(MAX_PROBES):
            if best + 1 >= empty_from and best:
                return best
            probe = max(hi - step + 1, self._first) if not best else (best + 1 + empty_from) // 2
            entry = await self._index._leader_next(self._flt, probe)
            if entry is not None and entry.seq < empty_from:
                best = entry.seq
            elif probe <= self._first:
                return best
            else:
                empty_from, step = probe, step * 4
        return best
