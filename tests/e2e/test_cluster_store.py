"""The store on a real 3-node JetStream cluster (replicas 3): every read sees the write
before it, from several clients at once (a record just created is never missing, one just
updated never old; an image just stored is never short of chunks), and the list holds
every job indexed. Beside it, the same pattern with plain direct gets is counted and
printed: on a replicated stream any replica answers those, so they can be stale."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
from imagejobs.config import Settings
from imagejobs.domain.jobs import Job, StoredRequest
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.store import jetstream
from imagejobs.store.factory import jetstream_backend
from imagejobs.store.protocols import Backend
from imagejobs.store.records import JOBS_STREAM, job_subject
from imagejobs.testing import Stack, require_binary

pytestmark = pytest.mark.e2e

CLIENTS = 8
PAIRS_PER_CLIENT = 150  # 1,200 write-then-read pairs of each kind
SMALL_IMAGES_PER_CLIENT = 30  # one chunk each
LARGE_IMAGES_PER_CLIENT = 2  # four chunks each


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("nats-server")
    s = Stack(tmp_path_factory.mktemp("cluster-store"), workers=0, nats_nodes=3)
    try:
        s.start_nats()
        yield s
    finally:
        s.stop()


@pytest.fixture
async def backends(cluster: Stack) -> AsyncIterator[list[Backend]]:
    """One backend per client, each on its own connection to its own node (as API
    processes spread over a cluster are)."""
    settings = cluster.settings
    assert settings.replicas == 3
    opened = []
    for i in range(CLIENTS):
        url = settings.nats_servers[i % len(settings.nats_servers)]
        mine = settings.model_copy(update={"nats_url": url})
        nc, js = await jetstream.connect(mine, f"cluster-client-{i}")
        opened.append((nc, jetstream_backend(nc, js, mine)))
    await jetstream.declare(opened[0][1].records._subjects._js, settings)  # type: ignore[attr-defined]
    try:
        yield [b for _, b in opened]
    finally:
        for nc, _ in opened:
            await nc.close()


def new_job(owner: str) -> Job:
    return Job(
        id=str(uuid.uuid4()),
        kind=Kind.GENERATION,
        request_id="r",
        owner=owner,
        created_at=time.time(),
        ttl_s=300,
        request=StoredRequest(model=ModelRef.parse("mock/m"), prompt="p"),
    )


async def write_then_read(backend: Backend, misses: Counter[str]) -> None:
    records = backend.records
    for _ in range(PAIRS_PER_CLIENT):
        job = new_job("cluster")
        revision = await records.create(job)
        found = await records.get(job.id)
        if found is None:
            misses["missing after create"] += 1
            continue
        claimed = job.claim("w", time.time())
        revision = await records.update(claimed, revision)
        found = await records.get(job.id)
        if found is None or found[1] != revision:
            misses["old after update"] += 1


async def test_every_read_sees_the_write_before_it_from_every_client(
    backends: list[Backend],
) -> None:
    misses: Counter[str] = Counter()
    await asyncio.gather(*(write_then_read(b, misses) for b in backends))
    assert not misses, misses


async def test_an_image_just_stored_is_read_whole_from_every_client(
    backends: list[Backend],
) -> None:
    sizes = [1024] * SMALL_IMAGES_PER_CLIENT + [3 * 512 * 1024 + 1] * LARGE_IMAGES_PER_CLIENT

    async def put_then_get(backend: Backend, n: int) -> int:
        short = 0
        for i, size in enumerate(sizes):
            data = os.urandom(size)
            object_id = f"cluster-{n}-{i}-{uuid.uuid4().hex[:8]}"
            await backend.objects.put(object_id, data, "image/png", 300)
            got = await backend.objects.get(object_id)
            short += got is None or got.data != data
        return short

    shorts = await asyncio.gather(*(put_then_get(b, n) for n, b in enumerate(backends)))
    assert sum(shorts) == 0


async def test_chunks_a_lagging_replica_lacks_are_read_from_the_leader(
    backends: list[Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batched direct get answered by a replica behind the latest writes ends early;
    the chunks it did not return come from the leader, so the image is still whole."""
    objects = backends[0].objects
    data = os.urandom(3 * 512 * 1024 + 7)
    await objects.put("lagging", data, "image/png", 300)
    whole = objects._read_chunks  # type: ignore[attr-defined]

    async def first_only(object_id: str, first_seq: int, count: int) -> list[tuple[int, bytes]]:
        return list((await whole(object_id, first_seq, count))[:1])

    monkeypatch.setattr(objects, "_read_chunks", first_only)
    got = await objects.get("lagging")
    assert got is not None and got.data == data


async def test_every_indexed_job_is_listed(backends: list[Backend]) -> None:
    owner = f"lister{uuid.uuid4().hex[:6]}"
    ids = [str(uuid.uuid4()) for _ in range(40)]
    await asyncio.gather(
        *(
            backends[n % len(backends)].index.add(owner, Kind.GENERATION, time.time(), job_id)
            for n, job_id in enumerate(ids)
        )
    )
    page = await backends[-1].index.page(owner, None, 0, 100)
    listed = {e.job_id for e in page.entries}
    assert listed == set(ids)
    assert page.next_before == 0


async def test_list_pages_a_lagging_replica_answers_short_are_whole(
    backends: list[Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs indexed one after another through every node; each batched read of the index
    then loses its second half (as a replica behind the latest writes answers): the pages,
    completed from the leader, still hold every job, in the order they were indexed."""
    owner = f"lagged{uuid.uuid4().hex[:6]}"
    ids = [str(uuid.uuid4()) for _ in range(50)]
    for n, job_id in enumerate(ids):
        await backends[n % len(backends)].index.add(owner, Kind.GENERATION, time.time(), job_id)
    index = backends[-1].index
    whole = index._replica_read  # type: ignore[attr-defined]

    async def behind(request: dict[str, object]) -> list[tuple[str, int]]:
        got: list[tuple[str, int]] = await whole(request)
        return got[: len(got) // 2]

    monkeypatch.setattr(index, "_replica_read", behind)
    listed: list[str] = []
    before = 0
    for _ in range(10):
        page = await index.page(owner, None, before, 20)
        listed += [e.job_id for e in page.entries]
        before = page.next_before
        if not before:
            break
    assert listed == ids[::-1]


async def test_direct_gets_for_comparison(backends: list[Backend], cluster: Stack) -> None:
    """Not an assertion on the server, a record of it: how often a plain direct get right
    after a write answered with something older (printed in the test's output)."""
    stale: Counter[str] = Counter()

    async def probe(backend: Backend) -> None:
        js = backend.records._subjects._js  # type: ignore[attr-defined]
        for _ in range(PAIRS_PER_CLIENT):
            job = new_job("probe")
            revision = await backend.records.create(job)
            data, seq = await jetstream.any_replica_last(js, JOBS_STREAM, job_subject(job.id), "x")
            stale["not found" if not data else ("older" if seq < revision else "latest")] += 1

    await asyncio.gather(*(probe(b) for b in backends))
    print(f"direct get right after a write, {CLIENTS} clients on 3 nodes: {dict(stale)}")
    assert sum(stale.values()) == CLIENTS * PAIRS_PER_CLIENT


def test_the_cluster_settings_give_every_stream_three_replicas(cluster: Stack) -> None:
    settings: Settings = cluster.settings
    assert all(c.num_replicas == 3 for c in jetstream.stream_configs(settings))
    assert len(settings.nats_servers) == 3
