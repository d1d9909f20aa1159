"""The bench rows that need many jobs already in the store:

- (h) the first page of a caller's list with N live jobs (`list_first_page_s_at_<N>`);
- (i) the API's CPU per submit with a small vs a large store (`submit_cpu_ratio_...`).

Filling the store through the API would take the submit path's own time (and its
queue); these rows are about what a list or a submit costs *given* N jobs, so the jobs
are written straight through the store API (`Backend.records.create` and
`Backend.index.add`, as a submit writes them), `FILL_BATCH` at a time, in one process
connected like an API. Each fill starts from an empty store (JOBS bucket and index
purged: the bench owns the stack) and grows it in steps, so N counts exactly the
caller's live jobs. The filled jobs are pending and never queued: no worker runs them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.jobs import Job, StoredRequest
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.store.factory import open_backend
from imagejobs.store.records import JOBS_STREAM

from bench import load
from bench.load import LoadResult, percentile
from bench.report import Report, ms
from bench.stack import BenchStack, cpu_seconds

FILL_BATCH = 2000  # writes in flight at once while filling
LIST_PATH = "/v1/async/images/jobs"
PAGE_SIZE = 20  # the list's default page (api/servicer.py DEFAULT_PAGE_SIZE)
SETTLE_WINDOW_S = 0.5
SETTLE_IDLE_SHARE = 0.10  # "idle": under 10% of a core over the window
SETTLE_TIMEOUT_S = 120.0


def filled_job(owner: str, created_at: float) -> Job:
    """One pending generation job as a submit stores it."""
    return Job(
        id=str(uuid.uuid4()),
        kind=Kind.GENERATION,
        request_id=str(uuid.uuid4()),
        owner=owner,
        created_at=created_at,
        ttl_s=3600,
        request=StoredRequest(
            model=ModelRef.parse("mock/m"), params={"prompt": "bench", "size": "16x16"}
        ),
    )


async def empty_store(nats_port: int) -> None:
    """Purge every job record, index entry and queued job (the bench's own stack)."""
    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
    try:
        js = nc.jetstream()
        for stream in (JOBS_STREAM, constants.INDEX_STREAM, constants.QUEUE_STREAM):
            await js.purge_stream(stream)
    finally:
        await nc.close()


async def fill(settings: Settings, count: int, *, owner: str = "") -> float:
    """Write `count` more pending jobs of `owner` ('' = anonymous), each a record and an
    index entry, created a millisecond apart ending now. Returns the seconds it took."""
    started = time.monotonic()
    newest = time.time()
    async with open_backend(settings, "bench-fill") as backend:
        for first in range(0, count, FILL_BATCH):
            jobs = [
                filled_job(owner, newest - (count - i) / 1000)
                for i in range(first, min(count, first + FILL_BATCH))
            ]
            await asyncio.gather(*(backend.records.create(j) for j in jobs))
            await asyncio.gather(
                *(backend.index.add(j.owner, j.kind, j.created_at, j.id) for j in jobs)
            )
    return time.monotonic() - started


async def settle(pid: int) -> float:
    """Wait (bounded) until process `pid` is idle: a fill's writes reach the API's
    change watcher too, and that backlog must not be billed to the submits measured
    next. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        before = cpu_seconds(pid)
        await asyncio.sleep(SETTLE_WINDOW_S)
        if cpu_seconds(pid) - before < SETTLE_IDLE_SHARE * SETTLE_WINDOW_S:
            break
    return time.monotonic() - started


# --- (h): the first page of a list ---------------------------------------------------------


@dataclass(frozen=True)
class ListRun:
    jobs: int  # the caller's live jobs
    fill_s: float  # writing the ones added for this step
    latencies_s: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.latencies_s, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_s, 99)


async def first_pages(port: int, calls: int, expected: int) -> list[float]:
    """`calls` first-page REST lists, one at a time on one keep-alive connection;
    each must answer 200 with `expected` jobs."""
    request = load.http_request("GET", LIST_PATH)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    took = []
    try:
        for _ in range(calls):
            started = time.perf_counter()
            writer.write(request)
            status, body = await asyncio.wait_for(load.read_response(reader), 60)
            took.append(time.perf_counter() - started)
            got = len(json.loads(body)["jobs"]) if status == 200 else -1
            if got != expected:
                raise RuntimeError(f"list answered {status} with {got} jobs, not {expected}")
    finally:
        writer.close()
    return took


async def list_runs(bs: BenchStack, sizes: tuple[int, ...], calls: int) -> list[ListRun]:
    """For each N in `sizes` (ascending): the anonymous caller's store grown to N live
    jobs, then `calls` first pages timed through Envoy."""
    await empty_store(bs.stack.nats_port)
    runs, have = [], 0
    for size in sorted(sizes):
        fill_s = await fill(bs.settings, size - have)
        have = size
        await settle(bs.api_pids[0])
        took = await first_pages(bs.gateway_one_api, calls, min(size, PAGE_SIZE))
        runs.append(ListRun(jobs=size, fill_s=fill_s, latencies_s=took))
    return runs


# --- (i): API CPU per submit against the store's size --------------------------------------


@dataclass(frozen=True)
class CpuRun:
    jobs: int  # in the store before the submits
    accepted: int
    api_cpu_s: float  # the API process's user + system CPU over the submits
    fill_s: float

    @property
    def per_submit_s(self) -> float:
        return self.api_cpu_s / self.accepted if self.accepted else float("nan")


async def cpu_runs(
    bs: BenchStack,
    sizes: tuple[int, ...],
    submit: Callable[[int], Awaitable[LoadResult]],
    submits: int,
) -> list[CpuRun]:
    """For each store size in `sizes` (ascending): the store grown to it, the API left
    to go idle, then `submit(submits)` (REST via Envoy over API 0 alone), billed by API
    0's CPU time from /proc. The submitted jobs stay in the store, never run."""
    await empty_store(bs.stack.nats_port)
    pid = bs.api_pids[0]
    runs, have = [], 0
    for size in sorted(sizes):
        fill_s = await fill(bs.settings, size - have)
        await settle(pid)
        before = cpu_seconds(pid)
        result = await submit(submits)
        spent = cpu_seconds(pid) - before
        have = size + result.ok
        runs.append(CpuRun(jobs=size, accepted=result.ok, api_cpu_s=spent, fill_s=fill_s))
    await empty_store(bs.stack.nats_port)  # the next phase starts from an empty queue
    return runs


# --- into the report ----------------------------------------------------------------------


async def list_rows(bs: BenchStack, sizes: tuple[int, ...], calls: int, report: Report) -> None:
    """Section (h): `list_runs`, into the report (`list_first_page_s_at_<N>`)."""
    runs = await list_runs(bs, sizes, calls)
    for run in runs:
        report.numbers[f"list_first_page_s_at_{run.jobs}"] = run.p50
        flat = ""
        if run is runs[-1] and len(runs) > 1:
            flat = f"x{run.p50 / runs[0].p50:.2f} vs {runs[0].jobs:,} jobs; " + report.target(
                f"first list page <= 50 ms at {run.jobs:,} live jobs", run.p50 <= 0.050
            )
        report.add(
            "h", f"first list page (REST via Envoy, {PAGE_SIZE} jobs) with "
            f"{run.jobs:,} live jobs of the caller", f"{len(run.latencies_s)} lists",
            ms(run.p50), ms(run.p99), f"{flat}; store filled in {run.fill_s:.1f} s".lstrip("; "),
        )  # fmt: skip


async def cpu_rows(
    bs: BenchStack,
    sizes: tuple[int, ...],
    submit: Callable[[int], Awaitable[LoadResult]],
    submits: int,
    report: Report,
) -> None:
    """Section (i): `cpu_runs`, into the report (`submit_cpu_ratio_1m_vs_10k`)."""
    runs = await cpu_runs(bs, sizes, submit, submits)
    small, large = runs[0], runs[-1]
    ratio = large.per_submit_s / small.per_submit_s if small.per_submit_s else float("nan")
    report.numbers |= {
        "submit_cpu_ratio_1m_vs_10k": ratio,  # the row; the sizes are the next two
        "submit_cpu_store_small": small.jobs,
        "submit_cpu_store_large": large.jobs,
        "submit_cpu_s_small": small.per_submit_s,
        "submit_cpu_s_large": large.per_submit_s,
    }
    for run in runs:
        compare = ""
        if run is large:
            compare = f"x{ratio:.2f} vs {small.jobs:,} jobs (flat is x1.0); "
        report.add(
            "i", f"API CPU per REST submit with {run.jobs:,} jobs in the store",
            f"{ms(run.per_submit_s)} ({run.accepted} submits)",
            compare=f"{compare}store filled in {run.fill_s:.1f} s",
        )  # fmt: skip
