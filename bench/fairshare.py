"""(j) Fair share between keys, on stacks of their own (one API, one worker), once with
fair share and once with `fair_share = false` (one FIFO queue, as before lanes):

- (j1) the issue's run: key A queues `fair_backlog` jobs of `fair_latency_ms` against a
  worker with 4 slots, then key B submits 4. How long B's jobs take from submit to
  completed, and the completion rate over the first `fair_observe_s`. In FIFO order B
  is not done within that window: the row gives the jobs queued ahead of it and the time
  they take at the measured rate.
- (j2) throughput: `fair_drain_jobs` jobs of 0 ms queued while the worker is frozen
  (SIGSTOP), then drained (thaw -> last completion): FIFO, against fair share with the
  jobs spread over 2 and over 16 keys. Target: fair share within 10% of FIFO.

Every count is cross-checked against the worker's Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nats
from imagejobs.client import AsyncClient, Job
from imagejobs.domain import constants
from imagejobs.testing import Samples, Stack, free_port_run, scrape

from bench.stack import Completions, metric

SLOTS = 4  # (j1): the issue's worker
B_JOBS = 4
SUBMITTERS = 64  # submits in flight at once while filling a queue
KEY_COUNT = 16


class Plan(Protocol):
    """The part of bench/run.py's `Plan` this section reads."""

    @property
    def fair_backlog(self) -> int: ...
    @property
    def fair_latency_ms(self) -> int: ...
    @property
    def fair_observe_s(self) -> float: ...
    @property
    def fair_drain_jobs(self) -> int: ...
    @property
    def fair_rounds(self) -> int: ...


class Report(Protocol):
    """The part of bench/run.py's `Report` this section writes."""

    def add(self, *cells: str, **named: str) -> None: ...
    def check(self, what: str, bench: float, metrics: float) -> None: ...
    def target(self, what: str, met: bool) -> str: ...

    numbers: dict[str, float]


def key(i: int) -> str:
    return f"sk-bf-bench-{i:02d}-0123456789abcdef"


@dataclass
class Mode:
    name: str
    stack: Stack

    def worker_metrics(self, name: str) -> Samples:
        """The metrics of worker `name` (it logs the port it took)."""
        found = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", self.stack.log(name))
        if found is None:
            raise RuntimeError(f"{name} logged no metrics port")
        return scrape(int(found.group(1)))

    async def purge(self) -> None:
        """Drop whatever is still queued (A's backlog), so that the worker stops soon."""
        nc = await nats.connect(f"nats://127.0.0.1:{self.stack.nats_port}")
        try:
            await nc.jetstream().purge_stream(constants.QUEUE_STREAM)
        finally:
            await nc.close()

    def stop_worker(self, name: str) -> None:
        proc = self.stack.procs[name]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def start_mode(root: Path, fair: bool) -> Mode:
    config: dict[str, Any] = {
        "fair_share": fair,
        "metrics_port": free_port_run(8),
        "queue_max_jobs": 1_000_000,
        "providers": {"mock": {"concurrency": 4096}},
        "virtual_keys": {
            f"k{i:02d}": {"key_sha256": hashlib.sha256(key(i).encode()).hexdigest()}
            for i in range(KEY_COUNT)
        },
    }
    name = "fair" if fair else "fifo"
    stack = Stack(root / name, config, workers=0, apis=1)
    stack.start()
    return Mode("fair share" if fair else "FIFO", stack)


async def fill(mode: Mode, jobs: int, keys: int, latency_ms: int, tag: str) -> list[Job]:
    """`jobs` submits spread round-robin over the first `keys` keys (SUBMITTERS at once)."""
    clients = [AsyncClient(mode.stack.grpc_gateway, key=key(i), timeout_s=60) for i in range(keys)]
    gate = asyncio.Semaphore(SUBMITTERS)

    async def one(i: int) -> Job:
        async with gate:
            params = {"size": "8x8", "mock_latency_ms": latency_ms}
            return await clients[i % keys].submit(
                "generations", "mock/m", f"{tag} {i}", params=params
            )

    try:
        return list(await asyncio.gather(*(one(i) for i in range(jobs))))
    finally:
        for client in clients:
            await client.close()


async def issue_run(mode: Mode, plan: Plan, report: Report) -> None:
    """(j1) A's backlog, then B's 4 jobs; B's latency and the completion rate."""
    name, _ = mode.stack.start_worker({"IMAGEJOBS_WORKER_CONCURRENCY": str(SLOTS)})
    async with Completions(mode.stack.nats_port) as done:
        backlog = await fill(mode, plan.fair_backlog, 1, plan.fair_latency_ms, "a")
        started = time.time()
        b_ids = {j.id for j in await _as_key(mode, B_JOBS, plan.fair_latency_ms)}
        await done.wait_for(b_ids, plan.fair_observe_s)
        window = time.time() - started
        in_window = sum(1 for t, _ in done.done.values() if t >= started)
        a_done = sum(1 for j in backlog if j.id in done.done)
        await mode.purge()  # the rest of A's backlog: not needed
        await _idle(mode, name)
        finished = len(done.done)
    rate = in_window / window if window else 0.0
    b_done = [done.done[i][0] - started for i in b_ids if i in done.done]
    fair = mode.name != "FIFO"
    if len(b_done) == B_JOBS:
        result = f"B's {B_JOBS} jobs done {max(b_done):.2f} s after their submit"
        report.numbers[f"fair_b_s_{'fair' if fair else 'fifo'}"] = max(b_done)
    else:
        ahead = plan.fair_backlog - a_done
        wait = f" (~{ahead / rate:.0f} s at the measured rate)" if rate else ""
        result = f"B not done after {window:.0f} s: {ahead} of A's jobs ahead of it{wait}"
    verdict = ""
    if fair:
        met = len(b_done) == B_JOBS and max(b_done) <= 5.0
        verdict = "; " + report.target("B's jobs done within 5 s behind A's backlog", met)
    report.add(
        "j", f"{mode.name}: A queues {plan.fair_backlog} x {plan.fair_latency_ms} ms, then B 4; "
        f"1 worker x {SLOTS} slots", result,
        compare=f"{rate:.1f} completed/s over {window:.1f} s{verdict}",
    )  # fmt: skip
    report.check(
        f"j1 {mode.name} completions",
        finished,
        metric(mode.worker_metrics(name), "imagejobs_completions_total"),
    )
    mode.stop_worker(name)


async def _idle(mode: Mode, name: str, timeout_s: float = 30.0) -> None:
    """Until worker `name` holds no job (its metrics say so), bounded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if metric(mode.worker_metrics(name), "imagejobs_jobs_in_flight") == 0:
            await asyncio.sleep(0.2)  # the last terminal write reaches the watcher
            return
        await asyncio.sleep(0.1)


async def _as_key(mode: Mode, jobs: int, latency_ms: int) -> list[Job]:
    """B's jobs: the second key's."""
    async with AsyncClient(mode.stack.grpc_gateway, key=key(1), timeout_s=60) as b:
        params = {"size": "8x8", "mock_latency_ms": latency_ms}
        return [
            await b.submit("generations", "mock/m", f"b {i}", params=params) for i in range(jobs)
        ]


async def drain(mode: Mode, plan: Plan, keys: int) -> tuple[float, int, str]:
    """(j2) jobs/s draining `fair_drain_jobs` 0 ms jobs of `keys` keys; (rate, done, worker)."""
    name, proc = mode.stack.start_worker()
    proc.send_signal(signal.SIGSTOP)
    async with Completions(mode.stack.nats_port) as done:
        jobs = await fill(mode, plan.fair_drain_jobs, keys, 0, f"drain{keys}")
        thawed = time.time()
        proc.send_signal(signal.SIGCONT)
        await done.wait_for({j.id for j in jobs}, 120)
        ends = [done.done[j.id][0] for j in jobs if j.id in done.done]
    took = max(ends) - thawed if ends else 0.0
    return (len(ends) / took if took else 0.0), len(ends), name


async def throughput(modes: list[Mode], plan: Plan, report: Report) -> None:
    """(j2) each configuration `plan.fair_rounds` times, interleaved, the best kept (a
    busy machine slows a run down, it never speeds one up)."""
    configs = [(modes[0], 1, "FIFO")]
    configs += [(modes[1], keys, f"fair share, {keys} keys") for keys in (2, KEY_COUNT)]
    best: dict[str, float] = {}
    for _ in range(plan.fair_rounds):
        for mode, keys, label in configs:
            rate, count, name = await drain(mode, plan, keys)
            best[label] = max(best.get(label, 0.0), rate)
            report.check(
                f"j2 {label} completions",
                count,
                metric(mode.worker_metrics(name), "imagejobs_completions_total"),
            )
            mode.stop_worker(name)
    fifo = best["FIFO"]
    for _, keys, label in configs:
        compare = ""
        if label != "FIFO":
            share = best[label] / fifo if fifo else 0.0
            report.numbers[f"fair_drain_{keys}_vs_fifo"] = share
            compare = f"{share:.0%} of FIFO; " + report.target(
                f"fair share ({keys} keys) drain >= 90% of FIFO", share >= 0.90
            )
        report.add(
            "j", f"drain {plan.fair_drain_jobs} queued jobs, mock 0 ms, 1 worker: {label}",
            f"{best[label]:,.0f} jobs/s (best of {plan.fair_rounds})", compare=compare,
        )  # fmt: skip


async def fair_share(root: Path, plan: Plan, report: Report) -> None:
    """(j1) and (h2) on a FIFO stack and a fair-share stack (each stopped at the end)."""
    modes: list[Mode] = []
    try:
        for fair in (False, True):
            modes.append(start_mode(root, fair))
        for mode in modes:
            await issue_run(mode, plan, report)
        await throughput(modes, plan, report)
    finally:
        for mode in modes:
            mode.stack.stop()
