"""The JetStream list index on a real nats-server: what one page costs (requests made,
messages read) does not grow with the caller's entries, and a page a replica answers
short (one behind the latest writes) is completed from the leader. The paging semantics
themselves are in the store contract (`test_store_contract.py`, both stores)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.kinds import Kind
from imagejobs.store import index as index_module
from imagejobs.store import jetstream
from imagejobs.store.index import JetStreamIndex, index_ttl_s
from imagejobs.testing import Stack

pytestmark = pytest.mark.e2e

LIMIT = 20


@pytest.fixture
async def index(nats_server: Stack) -> AsyncIterator[JetStreamIndex]:
    settings = Settings.model_validate({"nats_port": nats_server.nats_port})
    nc, js = await jetstream.connect(settings, "test-index")
    with contextlib.suppress(Exception):  # a clean index for every test
        await js.delete_stream(constants.INDEX_STREAM)
    await jetstream.declare(js, settings)
    try:
        yield JetStreamIndex(nc, js, ttl_s=index_ttl_s(settings))
    finally:
        await nc.close()


async def fill(index: JetStreamIndex, owner: str, count: int) -> list[str]:
    """`count` entries of `owner`, written in order (500 in flight at a time, on one
    connection: sequenced as called)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for first in range(0, count, 500):
        await asyncio.gather(
            *(index.add(owner, Kind.GENERATION, time.time(), i) for i in ids[first : first + 500])
        )
    return ids


async def cost(index: JetStreamIndex, owner: str, before: int) -> tuple[int, int, list[str], int]:
    """(requests, messages read, the page's ids, its next position) of one page."""
    requests, read = index.requests, index.messages_read
    page = await index.page(owner, None, before, LIMIT)
    ids = [e.job_id for e in page.entries]
    return index.requests - requests, index.messages_read - read, ids, page.next_before


async def test_a_page_costs_the_same_at_300_and_3000_entries(index: JetStreamIndex) -> None:
    ids = await fill(index, "big", 300)
    small = await cost(index, "big", 0)
    assert small[2] == ids[::-1][:LIMIT]
    small_next = await cost(index, "big", small[3])
    assert small_next[2] == ids[::-1][LIMIT : 2 * LIMIT]
    ids += await fill(index, "big", 2700)
    large = await cost(index, "big", 0)
    assert large[2] == ids[::-1][:LIMIT]
    large_next = await cost(index, "big", large[3])
    assert large_next[2] == ids[::-1][LIMIT : 2 * LIMIT]
    # a stream info and one batched read each, the same messages, whatever the total
    assert small[:2] == large[:2] and small_next[:2] == large_next[:2]
    assert small[0] == 2 and small[1] <= 2 * (LIMIT + 1)


async def test_a_sparse_callers_page_costs_a_bounded_number_of_requests(
    index: JetStreamIndex,
) -> None:
    """A caller with 3 entries under 2,000 of others': reached by probing the leader
    (some 2 log2 of the gap), not by reading the stream."""
    mine = await fill(index, "rare", 3)
    await asyncio.gather(*(fill(index, f"busy{n}", 500) for n in range(4)))
    requests, read, ids, next_before = await cost(index, "rare", 0)
    assert (ids, next_before) == (mine[::-1], 0)
    assert requests <= 4 + 2 * math.ceil(math.log2(2003)) and read <= 40


async def test_a_page_a_replica_answers_short_is_completed_by_the_leader(
    index: JetStreamIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a replica behind the latest writes answers: every batched read loses its last
    third. The pages are still whole and in order."""
    ids = await fill(index, "lagged", 90)
    whole = index._replica_read

    async def behind(request: dict[str, object]) -> list[tuple[str, int]]:
        got = await whole(request)
        return got[: len(got) * 2 // 3]

    monkeypatch.setattr(index, "_replica_read", behind)
    listed: list[str] = []
    before = 0
    for _ in range(10):
        page = await index.page("lagged", None, before, LIMIT)
        listed += [e.job_id for e in page.entries]
        before = page.next_before
        if not before:
            break
    assert listed == ids[::-1]


async def test_a_page_out_of_jumps_is_short_and_its_position_goes_on(
    index: JetStreamIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no gap jumps allowed, a page that meets a gap ends there, short, with the
    position below what it read: following the positions still lists every entry once."""
    monkeypatch.setattr(index_module, "MAX_JUMPS", 0)
    old = await fill(index, "gappy", 30)
    await fill(index, "filler", 400)
    new = await fill(index, "gappy", 3)
    first = await index.page("gappy", None, 0, LIMIT)
    assert [e.job_id for e in first.entries] == new[::-1] and first.next_before
    listed = [e.job_id for e in first.entries]
    before = first.next_before
    for _ in range(100):  # windows of the gap, then the older entries
        page = await index.page("gappy", None, before, LIMIT)
        listed += [e.job_id for e in page.entries]
        before = page.next_before
        if not before:
            break
    assert listed == (old + new)[::-1]
