"""`JobReader.list` over the paged index, on the in-memory store: pages fill past entries
whose record has gone or whose status does not match, within a bounded read, and page
tokens are checked."""

from __future__ import annotations

import base64
import uuid

import pytest
from imagejobs.api.reads import LIST_BATCH_MIN, JobReader, Page
from imagejobs.domain.errors import InvalidRequest
from imagejobs.domain.jobs import Job, Status, StoredRequest
from imagejobs.domain.keys import Caller
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.store.clock import FakeClock
from imagejobs.store.index import IndexPage, encode_token
from imagejobs.store.protocols import Backend

from tests.unit.conftest import ALICE


class CountingIndex:
    """The backend's index, counting the entries its pages returned."""

    def __init__(self, backend: Backend) -> None:
        self._index = backend.index
        self.entries_read = 0

    async def add(self, owner: str, kind: Kind, created_s: float, job_id: str) -> None:
        raise AssertionError("a list does not write")

    async def page(self, owner: str, kind: Kind | None, before: int, limit: int) -> IndexPage:
        page = await self._index.page(owner, kind, before, limit)
        self.entries_read += len(page.entries)
        return page


async def stored(backend: Backend, clock: FakeClock, count: int, owner: str = "alice") -> list[Job]:
    """`count` pending jobs of `owner`, recorded and indexed in order (oldest first)."""
    jobs = []
    for _ in range(count):
        job = Job(
            id=str(uuid.uuid4()),
            kind=Kind.GENERATION,
            request_id="r",
            owner=owner,
            created_at=clock.time(),
            ttl_s=600,
            request=StoredRequest(model=ModelRef.parse("mock/m"), prompt="p"),
        )
        await backend.records.create(job)
        await backend.index.add(owner, job.kind, job.created_at, job.id)
        jobs.append(job)
    return jobs


async def every_page(
    reader: JobReader, caller: Caller, limit: int, status: Status | None = None
) -> list[Page]:
    pages: list[Page] = []
    token = ""
    for _ in range(200):
        page = await reader.list(caller, status=status, kind=None, limit=limit, page_token=token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            return pages
    raise AssertionError("the pages never ended")


async def test_a_page_spanning_records_that_have_gone_still_fills(
    backend: Backend, clock: FakeClock
) -> None:
    """Of 60 jobs, 48 skipped: two in three deleted, and a run of 9 cancelled jobs whose
    results expired."""
    jobs = await stored(backend, clock, 60)
    gone = {j.id for n, j in enumerate(jobs) if n % 3 != 0 or 20 <= n < 45}
    for n, job in enumerate(jobs):
        if n % 3 != 0:
            await backend.records.delete(job.id)
        elif 20 <= n < 45:
            found = await backend.records.get(job.id)
            assert found is not None
            await backend.records.update(found[0].cancel(clock.time()), found[1])
    await clock.advance(job.ttl_s + 1)  # the cancelled ones' results expire
    reader = JobReader(backend, clock=clock)
    pages = await every_page(reader, ALICE, 4)
    expected = [j.id for j in reversed(jobs) if j.id not in gone]
    assert [j.id for p in pages for j in p.jobs] == expected
    assert [len(p.jobs) for p in pages] == [4, 4, 4]  # every page full, the last one too


async def test_a_status_filter_reads_a_bounded_number_of_entries_and_goes_on(
    backend: Backend, clock: FakeClock
) -> None:
    """A status matched by none of the newest 2,000 jobs: one list reads a bounded number
    of entries and answers short with a token; following the tokens finds the match."""
    [match] = await stored(backend, clock, 1)
    found = await backend.records.get(match.id)
    assert found is not None
    await backend.records.update(found[0].cancel(clock.time()), found[1])
    await stored(backend, clock, 2000)
    counting = CountingIndex(backend)
    reader = JobReader(backend, clock=clock)
    reader.index = counting
    first = await reader.list(ALICE, status=Status.CANCELLED, kind=None, limit=5, page_token="")
    assert first.jobs == [] and first.next_page_token
    assert LIST_BATCH_MIN <= counting.entries_read <= 1400
    pages = await every_page(reader, ALICE, 5, Status.CANCELLED)
    assert [j.id for p in pages for j in p.jobs] == [match.id]


OLD_STYLE = base64.urlsafe_b64encode(b"1700000000000.abc").decode()  # `<created_ms>.<job_id>`


@pytest.mark.parametrize("token", ["%%%", "bm90IGEgbnVtYmVy", encode_token(0), OLD_STYLE])
async def test_a_page_token_that_is_not_one_is_invalid_request(
    backend: Backend, clock: FakeClock, token: str
) -> None:
    await stored(backend, clock, 2)
    reader = JobReader(backend, clock=clock)
    with pytest.raises(InvalidRequest) as info:
        await reader.list(ALICE, status=None, kind=None, limit=5, page_token=token)
    assert info.value.param == "page_token"
