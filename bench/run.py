"""One bench run: start everything on loopback, run every bounded load, print one table.

    .venv/bin/python bench/run.py            # the full run (~5 min on 2 cores)
    .venv/bin/python bench/run.py --smoke    # tiny, seconds: a works-check (CI)

(a) REST submits through Envoy at 32 and 128 connections; (b) gRPC submits, direct and
through Envoy; (c) the same loads against two baselines started in the same run (Envoy
answering by itself; a no-op grpc.aio servicer behind our Envoy config), with our rate
as a share of each; (d) end to end at fixed offered rates; (e) 2,000 slow jobs at once
on one worker; (f) 4 x 4 MB images per job; (g) 1 vs 2 API and worker processes; (h) the
first page of a caller's list with N live jobs; (i) the API's CPU per submit with a small
vs a large store (bench/store_rows.py); (j) fair share between keys against FIFO
(bench/fairshare.py). Every count is cross-checked against the processes' Prometheus
metrics. See bench/RESULTS.md.

    --quick        the (h) and (i) stores small (thousands, not 10^5..10^6), the rest full
    --list-sizes / --cpu-sizes / --cpu-submits   the (h) and (i) sizes
    --fair-backlog / --fair-drain                the (j) sizes
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` is not installed

from imagejobs.testing import Samples
from imagejobs.v1 import jobs_pb2
from PIL import Image

from bench import fairshare, load, store_rows
from bench.load import LoadResult, percentile
from bench.report import Report, ms, rate, render
from bench.stack import BenchStack, Completions, job_id, memory_kb, metric

GEN_BODY = {"model": "mock/m", "prompt": "bench", "size": "16x16"}
GRPC_SUBMIT = jobs_pb2.SubmitImageJobRequest(  # GEN_BODY as a typed gRPC submit
    kind=jobs_pb2.JOB_KIND_GENERATION,
    request=jobs_pb2.ImageRequest(model="mock/m", prompt="bench", size="16x16"),
)
SUBMIT_PATH = "/v1/async/images/generations"


@dataclass(frozen=True)
class Plan:
    """How big each load is. Every run is bounded by a count and a time limit."""

    name: str
    tool: str  # "h2load" or "python"
    rounds: int  # of each submit-rate run; the best is kept
    sequential: int  # submits one at a time, for the latency floor
    seconds: float  # target length of one submit-rate run
    warmup: int  # requests before each submit-rate run (also sizes the run)
    min_total: int
    max_total: int
    run_timeout_s: float
    grpc_connections: int
    grpc_streams: int
    e2e_runs: tuple[tuple[float, int], ...]  # (offered jobs/s, worker processes)
    e2e_seconds: float
    drain_jobs: int  # (g) jobs per 1-vs-2-worker drain
    slow_jobs: int  # (e)
    slow_latency_ms: int
    slow_concurrency: int
    big_jobs: int  # (f)
    big_side: int  # noise PNG side: 1160 -> 4.0 MB
    big_n: int
    big_fetches: int
    list_sizes: tuple[int, ...] = (1000, 100_000)  # (h) the caller's live jobs
    list_calls: int = 50  # (h) first pages timed at each size
    cpu_sizes: tuple[int, ...] = (10_000, 1_000_000)  # (i) jobs in the store: small, large
    cpu_submits: int = 5000  # (i) REST submits billed at each size
    fair_backlog: int = 2000  # (j): key A's queued jobs before key B's 4
    fair_latency_ms: int = 500
    fair_observe_s: float = 15.0  # (j): how long B's jobs are waited for
    fair_drain_jobs: int = 3000  # (j): jobs per throughput drain
    fair_rounds: int = 2  # (j): drains of each configuration; the best is kept


# --quick (and --smoke): stores of thousands, seconds to fill, for a works-check
QUICK_STORES: dict[str, Any] = {"list_sizes": (100, 2000), "list_calls": 10}
QUICK_STORES |= {"cpu_sizes": (100, 3000), "cpu_submits": 300}

FULL = Plan(
    name="full",
    tool="h2load",
    rounds=2,
    sequential=500,
    seconds=5.0,
    warmup=1000,
    min_total=2000,
    max_total=200_000,
    run_timeout_s=30.0,
    grpc_connections=4,
    grpc_streams=16,
    e2e_runs=((500.0, 1), (500.0, 2), (250.0, 1), (100.0, 1)),
    e2e_seconds=8.0,
    drain_jobs=3000,
    slow_jobs=2000,
    slow_latency_ms=5000,
    slow_concurrency=2000,
    big_jobs=3,
    big_side=1160,
    big_n=4,
    big_fetches=5,
    fair_backlog=2000,
    fair_latency_ms=500,
    fair_observe_s=15.0,
    fair_drain_jobs=3000,
    fair_rounds=2,
)
SMOKE = Plan(
    name="smoke (tiny loads: a works-check, the numbers mean nothing)",
    tool="h2load",  # when found (the CI smoke test asks for --python-load)
    rounds=1,
    sequential=20,
    seconds=0.3,
    warmup=20,
    min_total=40,
    max_total=200,
    run_timeout_s=10.0,
    grpc_connections=2,
    grpc_streams=4,
    e2e_runs=((250.0, 1),),  # the rate of the e2e row, 100 jobs
    e2e_seconds=0.4,
    drain_jobs=40,
    slow_jobs=40,
    slow_latency_ms=500,
    slow_concurrency=64,
    big_jobs=1,
    big_side=200,
    big_n=2,
    big_fetches=2,
    fair_backlog=40,
    fair_latency_ms=100,
    fair_observe_s=3.0,
    fair_drain_jobs=40,
    fair_rounds=1,
    **QUICK_STORES,
)


# --- (a)(b)(c)(g-api): submit rates ----------------------------------------------------------


class Submits:
    """Closed-loop submit runs; each is a warm-up (which also sizes it to ~plan.seconds)
    and a measured run. Counts what our own stack accepted, for the metrics check."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.ours_ok = 0
        self.ours_done = 0
        self.rest_body = json.dumps(GEN_BODY).encode()
        self.grpc_msg = GRPC_SUBMIT

    def _size(self, warm: LoadResult) -> int:
        wanted = int(warm.rate * self.plan.seconds)
        return max(self.plan.min_total, min(self.plan.max_total, wanted))

    async def _twice(self, run: Callable[[int], Awaitable[LoadResult]], ours: bool) -> LoadResult:
        warm = await run(self.plan.warmup)
        result = await run(self._size(warm))
        if ours:
            self.ours_ok += warm.ok + result.ok
            self.ours_done += warm.done + result.done
        return result

    async def rest(self, port: int, connections: int, *, ours: bool) -> LoadResult:
        plan = self.plan

        async def run(total: int) -> LoadResult:
            if plan.tool == "h2load":
                return await asyncio.to_thread(
                    load.h2load_rest,
                    port,
                    SUBMIT_PATH,
                    self.rest_body,
                    total=total,
                    connections=connections,
                    timeout_s=plan.run_timeout_s,
                )
            request = load.http_request(
                "POST", SUBMIT_PATH, self.rest_body, {"Content-Type": "application/json"}
            )
            return await load.run_bounded(
                lambda: load.http_closed_loop(
                    port,
                    request,
                    total=total,
                    connections=connections,
                    timeout_s=plan.run_timeout_s,
                ),
                plan.run_timeout_s,
            )

        return await self._twice(run, ours)

    async def grpc(self, port: int, *, ours: bool) -> LoadResult:
        plan = self.plan

        async def run(total: int) -> LoadResult:
            if plan.tool == "h2load":
                return await asyncio.to_thread(
                    load.h2load_grpc,
                    port,
                    self.grpc_msg,
                    total=total,
                    connections=plan.grpc_connections,
                    streams=plan.grpc_streams,
                    timeout_s=plan.run_timeout_s,
                )
            return await load.run_bounded(
                lambda: load.grpc_closed_loop(
                    f"127.0.0.1:{port}",
                    self.grpc_msg,
                    total=total,
                    concurrency=plan.grpc_connections * plan.grpc_streams,
                    timeout_s=plan.run_timeout_s,
                ),
                plan.run_timeout_s,
            )

        return await self._twice(run, ours)


def share(ours: LoadResult, base: LoadResult) -> float:
    return ours.rate / base.rate if base.rate else 0.0


async def latency_floor(bs: BenchStack, plan: Plan, report: Report) -> int:
    """One REST submit at a time on one connection: latency without queueing. Returns
    how many of ours were accepted."""
    body = json.dumps(GEN_BODY).encode()
    request = load.http_request("POST", SUBMIT_PATH, body, {"Content-Type": "application/json"})
    found = {}
    for name, port in (
        ("ours", bs.gateway_one_api),
        ("noop", bs.noop_gateway_port),
        ("direct", bs.direct_port),
    ):
        found[name] = await load.run_bounded(
            partial(
                load.http_closed_loop,
                port,
                request,
                total=plan.sequential,
                connections=1,
                timeout_s=30,
            ),
            30,
        )
    ours, noop, direct = found["ours"], found["noop"], found["direct"]
    report.add(
        "a", "REST submit via Envoy, 1 connection, one at a time", f"{ours.ok} submits",
        ms(ours.p(50)), ms(ours.p(99)),
        f"no-op servicer {ms(noop.p(50))} / {ms(noop.p(99))}; "
        f"Envoy direct {ms(direct.p(50))} / {ms(direct.p(99))}",
    )  # fmt: skip
    return ours.ok


def best(results: list[LoadResult]) -> LoadResult:
    return max(results, key=lambda r: r.rate)


async def submit_rates(bs: BenchStack, plan: Plan, report: Report) -> None:
    """Each configuration `plan.rounds` times, ours and its baselines interleaved, best
    run of each kept: a noisy machine slows runs down, it never speeds one up."""
    s = Submits(plan)
    before = bs.api_metrics()
    runs: dict[str, list[LoadResult]] = {}
    for _ in range(plan.rounds):
        for connections in (32, 128):
            for name, port, is_ours in (
                ("direct", bs.direct_port, False),
                ("noop", bs.noop_gateway_port, False),
                ("ours", bs.gateway_one_api, True),
            ):
                result = await s.rest(port, connections, ours=is_ours)
                runs.setdefault(f"rest-{name}-{connections}", []).append(result)
        for where, ours_port, noop_port in (
            ("direct", bs.stack.api_ports[0], bs.noop_grpc_port),
            ("envoy", bs.gateway_one_api, bs.noop_gateway_port),
        ):
            runs.setdefault(f"grpc-noop-{where}", []).append(await s.grpc(noop_port, ours=False))
            runs.setdefault(f"grpc-ours-{where}", []).append(await s.grpc(ours_port, ours=True))
        runs.setdefault("rest-two-128", []).append(
            await s.rest(bs.stack.gateway_port, 128, ours=True)
        )
    for connections in (32, 128):
        ours, noop = best(runs[f"rest-ours-{connections}"]), best(runs[f"rest-noop-{connections}"])
        direct = best(runs[f"rest-direct-{connections}"])
        vs_noop, vs_direct = share(ours, noop), share(ours, direct)
        report.numbers[f"rest_c{connections}"] = ours.rate
        report.numbers[f"rest_c{connections}_vs_noop"] = vs_noop
        compare = f"{vs_noop:.0%} of no-op, {vs_direct:.0%} of Envoy-direct"
        if connections == 32:
            compare += "; " + report.target("REST submit >= 70% of no-op", vs_noop >= 0.70)
        report.add(
            "a", f"REST submit via Envoy, 1 API, {connections} conns", rate(ours.rate),
            ms(ours.p(50)), ms(ours.p(99)), compare,
        )  # fmt: skip
        report.add(
            "c", f"baseline: no-op servicer via Envoy, {connections} conns", rate(noop.rate),
            ms(noop.p(50)), ms(noop.p(99)),
        )  # fmt: skip
        report.add(
            "c", f"baseline: Envoy direct_response, {connections} conns", rate(direct.rate),
            ms(direct.p(50)), ms(direct.p(99)),
        )  # fmt: skip
    streams = f"{plan.grpc_connections}x{plan.grpc_streams} streams"
    for where, label in (("direct", "direct"), ("envoy", "via Envoy")):
        ours, noop = best(runs[f"grpc-ours-{where}"]), best(runs[f"grpc-noop-{where}"])
        report.numbers[f"grpc_{where}_vs_noop"] = share(ours, noop)
        report.add(
            "b", f"gRPC submit {label}, 1 API, {streams}", rate(ours.rate),
            ms(ours.p(50)), ms(ours.p(99)), f"{share(ours, noop):.0%} of no-op {label}",
        )  # fmt: skip
        report.add(
            "c", f"baseline: no-op servicer gRPC {label}", rate(noop.rate),
            ms(noop.p(50)), ms(noop.p(99)),
        )  # fmt: skip
    s.ours_ok += await latency_floor(bs, plan, report)
    one, two = report.numbers["rest_c128"], best(runs["rest-two-128"])
    report.add(
        "g", "REST submit via Envoy, 2 APIs, 128 conns", rate(two.rate),
        ms(two.p(50)), ms(two.p(99)), f"x{two.rate / one:.2f} vs 1 API" if one else "",
    )  # fmt: skip
    after = bs.api_metrics()
    accepted = metric(after, "imagejobs_submits_total", result="accepted") - metric(
        before, "imagejobs_submits_total", result="accepted"
    )
    report.check("submits accepted (a, b, g)", s.ours_ok, accepted)
    await bs.purge_queue()  # nothing ran them: no workers during the submit runs


# --- (d): end to end at a fixed offered rate ------------------------------------------------


async def end_to_end(bs: BenchStack, plan: Plan, report: Report) -> None:
    """Open-loop REST submits at each offered rate; latency from each submit's scheduled
    instant to its terminal write (seen on NATS); CPU per job of each process."""
    body = json.dumps(GEN_BODY).encode()
    request = load.http_request("POST", SUBMIT_PATH, body, {"Content-Type": "application/json"})
    for offered, workers in plan.e2e_runs:
        await bs.purge_queue()
        bs.start_workers(workers)
        before = bs.api_metrics()
        cpu_before = bs.cpu_seconds()
        total = int(offered * plan.e2e_seconds)
        async with Completions(bs.stack.nats_port) as done:
            sent = await load.open_loop(
                bs.gateway_one_api,
                lambda i: request,
                rate=offered,
                total=total,
                timeout_s=plan.e2e_seconds + 20,
            )
            accepted = [s for s in sent if s.status == 202]
            ids = {job_id(s.body) for s in accepted}
            await done.wait_for(ids, 30)
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in bs.cpu_seconds().items()}
        ended = [(done.done[job_id(s.body)][0], s) for s in accepted if job_id(s.body) in done.done]
        e2e = [end - s.due for end, s in ended]
        submit = [s.answered - s.due for s in accepted]
        span = max(end for end, _ in ended) - min(s.due for s in sent) if ended else 0
        p50, p99 = percentile(e2e, 50), percentile(e2e, 99)
        verdict = ""
        if (offered, workers) == plan.e2e_runs[0]:  # the targets are for the first run
            verdict = report.target(f"e2e p50 <= 10 ms at {offered:.0f}/s", p50 <= 0.010)
            verdict += "; " + report.target(f"e2e p99 <= 50 ms at {offered:.0f}/s", p99 <= 0.050)
        report.numbers[f"e2e_{offered:.0f}x{workers}_p50_s"] = p50
        report.numbers[f"e2e_{offered:.0f}x{workers}_p99_s"] = p99
        if workers == 1:  # also under the names (`e2e_250_p50_s`: one worker)
            report.numbers |= {f"e2e_{offered:.0f}_p50_s": p50, f"e2e_{offered:.0f}_p99_s": p99}
        report.add(
            "d", f"e2e, mock 0 ms, {offered:.0f}/s offered for {plan.e2e_seconds:g} s, "
            f"{workers} worker(s)",
            f"{len(ended) / span if span else 0:,.0f} completed/s ({len(ended)}/{total})",
            ms(p50), ms(p99), f"submit->completed; {verdict}".rstrip("; "),
        )  # fmt: skip
        per_job = ", ".join(
            f"{name} {seconds / max(len(ended), 1) * 1000:.2f}" for name, seconds in cpu.items()
        )
        report.add(
            "d", "  its submit (202) alone; CPU ms per job by process", f"{len(accepted)} accepted",
            ms(percentile(submit, 50)), ms(percentile(submit, 99)), per_job,
        )  # fmt: skip
        report.add("d", "  median time in each stage", *stages(done, accepted))
        after_api, worker_samples = bs.api_metrics(), bs.worker_metrics()
        report.check(
            f"e2e {offered:.0f}/s x{workers}w submits accepted",
            len(accepted),
            metric(after_api, "imagejobs_submits_total", result="accepted")
            - metric(before, "imagejobs_submits_total", result="accepted"),
        )
        report.check(
            f"e2e {offered:.0f}/s x{workers}w completions",
            len(ended),
            metric(worker_samples, "imagejobs_completions_total", status="completed"),
        )
        report.check(
            f"e2e {offered:.0f}/s x{workers}w job latency observations",
            len(ended),
            metric(worker_samples, "imagejobs_job_seconds_count", status="completed"),
        )
        bs.stop_workers()


def stages(done: Completions, accepted: list[load.Sent]) -> tuple[str, str, str, str]:
    """Where an e2e latency goes, from the client's clock and the job record's times
    (one machine, one clock): the submit's answer, queue wait until a worker's claim,
    the worker's run (the provider call within it), the terminal write reaching us."""
    parts: dict[str, list[float]] = {k: [] for k in ("submit", "queued", "run", "mock", "seen")}
    for s in accepted:
        record = done.records.get(job_id(s.body))
        if record is None or "started_at" not in record:
            continue
        parts["submit"].append(s.answered - s.due)
        parts["queued"].append(record["started_at"] - record["created_at"])
        parts["run"].append(record["completed_at"] - record["started_at"])
        parts["mock"].append(record.get("result", {}).get("latency_ms", 0) / 1000)
        parts["seen"].append(done.done[record["id"]][0] - record["completed_at"])
    p50 = {k: percentile(v, 50) for k, v in parts.items()}
    text = (
        f"202 answered {ms(p50['submit'])}; created->claimed {ms(p50['queued'])}; "
        f"claimed->terminal {ms(p50['run'])} (provider call {ms(p50['mock'])}); "
        f"terminal write->seen {ms(p50['seen'])}"
    )
    return "", "", "", text


# --- (g): 1 vs 2 workers draining a full queue -----------------------------------------------


async def burst(plan: Plan, port: int, body: bytes, total: int) -> LoadResult:
    """`total` REST submits of `body` as fast as 64 connections go (count + time bound)."""
    if plan.tool == "h2load":
        return await asyncio.to_thread(
            load.h2load_rest,
            port,
            SUBMIT_PATH,
            body,
            total=total,
            connections=64,
            timeout_s=60,
        )
    request = load.http_request("POST", SUBMIT_PATH, body, {"Content-Type": "application/json"})
    return await load.run_bounded(
        lambda: load.http_closed_loop(port, request, total=total, connections=64, timeout_s=60),
        60,
    )


async def worker_scaling(bs: BenchStack, plan: Plan, report: Report) -> None:
    """Fill the queue with the workers frozen (SIGSTOP), thaw them together, time the
    drain: the workers' own rate, with no load generator running meanwhile."""
    rates = {}
    body = json.dumps(GEN_BODY).encode()
    for count in (1, 2):
        await bs.purge_queue()
        bs.start_workers(count)
        for _, proc in bs.workers:
            proc.send_signal(signal.SIGSTOP)
        before = bs.api_metrics()
        async with Completions(bs.stack.nats_port) as done:
            filled = await burst(plan, bs.gateway_one_api, body, plan.drain_jobs)
            thawed = time.time()
            for _, proc in bs.workers:
                proc.send_signal(signal.SIGCONT)
            await done.wait_until(partial(_at_least, done, filled.ok), 60)
            ends = sorted(t for t, _ in done.done.values())
        drained = ends[-1] - thawed if ends else 0
        rates[count] = len(ends) / drained if drained else 0
        report.check(f"queued for {count} worker(s)", filled.ok, accepted_since(bs, before))
        report.check(
            f"completions, {count} worker(s)", len(ends), await settled_completions(bs, len(ends))
        )
        compare = f"x{rates[2] / rates[1]:.2f} vs 1 worker" if count == 2 and rates[1] else ""
        report.add(
            "g", f"drain a full queue, {count} worker process(es), mock 0 ms",
            f"{rates[count]:,.0f} jobs/s ({len(ends)} in {drained:.1f} s)", compare=compare,
        )  # fmt: skip
        bs.stop_workers()


def accepted_since(bs: BenchStack, before: Samples) -> float:
    """Submits the API processes accepted since the `before` scrape."""
    name = "imagejobs_submits_total"
    return metric(bs.api_metrics(), name, result="accepted") - metric(
        before, name, result="accepted"
    )


async def settled_completions(bs: BenchStack, want: int, timeout_s: float = 10.0) -> float:
    """The workers' completions counter once it reaches `want`, or what it is after
    `timeout_s`: a worker counts a job a moment after the terminal write the bench saw
    (with 2,000 ending at once, ~100 of them were not counted yet when it looked)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = metric(bs.worker_metrics(), "imagejobs_completions_total")
        if got >= want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


def _at_least(done: Completions, count: int) -> bool:
    return len(done.done) >= count


# --- (e): 2,000 slow jobs at once -------------------------------------------------------------


async def slow_jobs(bs: BenchStack, plan: Plan, report: Report) -> None:
    """2,000 slow jobs queued while the one worker is frozen (SIGSTOP), then thawed: it
    takes them all at once (worker_concurrency 2,000); drain = thaw -> last completion."""
    await bs.purge_queue()
    bs.start_workers(1, env={"IMAGEJOBS_WORKER_CONCURRENCY": str(plan.slow_concurrency)})
    _, worker = bs.workers[0]
    body = json.dumps({**GEN_BODY, "mock_latency_ms": plan.slow_latency_ms}).encode()
    peak_in_flight = 0.0
    before = bs.api_metrics()
    worker.send_signal(signal.SIGSTOP)
    async with Completions(bs.stack.nats_port) as done:
        started = time.time()
        submitted = await burst(plan, bs.gateway_one_api, body, plan.slow_jobs)
        submit_s = time.time() - started
        thawed = time.time()
        worker.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + plan.slow_latency_ms / 1000 + 60
        while len(done.done) < submitted.ok and time.monotonic() < deadline:
            peak_in_flight = max(
                peak_in_flight, metric(bs.worker_metrics(), "imagejobs_jobs_in_flight")
            )
            await done.wait_until(partial(_at_least, done, submitted.ok), 0.25)
        ends = [t for t, _ in done.done.values()]
    drain = max(ends) - thawed if ends else float("inf")
    _, peak_kb = memory_kb(worker.pid)
    peak_mb = peak_kb / 1024
    verdict = report.target(f"{plan.slow_jobs} slow jobs drain <= 8 s", drain <= 8.0)
    verdict += "; " + report.target("worker peak RSS < 300 MB", peak_mb < 300)
    report.add(
        "e", f"{plan.slow_jobs} queued jobs x {plan.slow_latency_ms} ms mock latency, 1 worker",
        f"drained in {drain:.2f} s ({len(ends)} done)",
        compare=f"peak in flight {peak_in_flight:.0f}; worker peak RSS {peak_mb:.0f} MB; "
        f"(queueing them took {submit_s:.2f} s); " + verdict,
    )  # fmt: skip
    report.numbers["slow_drain_s"] = drain
    report.numbers["drain_2000_s"] = drain  # the row; `slow_jobs` says how many
    report.numbers["slow_jobs"] = len(ends)
    report.numbers["slow_worker_peak_mb"] = peak_mb
    report.check("slow submits accepted", submitted.ok, accepted_since(bs, before))
    report.check("slow-job completions", len(ends), await settled_completions(bs, len(ends)))
    bs.stop_workers()


# --- (f): large results ---------------------------------------------------------------------


def noise_png(side: int) -> bytes:
    """An incompressible PNG (random pixels): 1160 px -> 4.0 MB; the mock's variations of
    it are as large."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = "benchboundary7d1f"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="n.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + file
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def fetch(port: int, path: str) -> tuple[float, int, int]:
    """(seconds to the last byte, status, body bytes) of one GET on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.perf_counter()
        writer.write(load.http_request("GET", path))
        status, body = await asyncio.wait_for(load.read_response(reader), 30)
        return time.perf_counter() - started, status, len(body)
    finally:
        writer.close()


async def large_results(bs: BenchStack, plan: Plan, report: Report) -> None:
    await bs.purge_queue()
    bs.start_workers(1)
    port = bs.gateway_one_api
    image = noise_png(plan.big_side)
    body, ctype = multipart({"model": "mock/m", "n": str(plan.big_n)}, image)
    upload = load.http_request("POST", "/v1/async/images/variations", body, {"Content-Type": ctype})
    polls, images, sizes, submits = [], [], [], []
    before = bs.api_metrics()
    async with Completions(bs.stack.nats_port) as done:
        for _ in range(plan.big_jobs):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.perf_counter()
            writer.write(upload)
            status, answer = await asyncio.wait_for(load.read_response(reader), 30)
            submits.append(time.perf_counter() - started)
            writer.close()
            if status != 202:
                raise RuntimeError(f"large submit answered {status}: {answer[:300]!r}")
            job = job_id(answer)
            await done.wait_for({job}, 60)
            for _ in range(plan.big_fetches):
                took, status, size = await fetch(port, f"/v1/async/images/variations/{job}")
                assert status == 200, status
                polls.append(took)
                sizes.append(size)
                started = time.perf_counter()
                got = await asyncio.gather(
                    *(
                        fetch(port, f"/v1/async/images/variations/{job}/images/{i}")
                        for i in range(plan.big_n)
                    )
                )
                assert all(g[1] == 200 for g in got), got
                images.append(time.perf_counter() - started)
    api_rss, api_peak = memory_kb(bs.api_pids[0])
    _, worker_peak = memory_kb(bs.workers[0][1].pid)
    result_mb = plan.big_n * len(image) / 1e6
    p50 = percentile(polls, 50)
    images_p50 = percentile(images, 50)
    report.add(
        "f", f"poll a completed job: {plan.big_n} x {len(image) / 1e6:.1f} MB as b64 JSON "
        f"({max(sizes) / 1e6:.1f} MB body)", f"{len(polls)} polls",
        ms(p50), ms(max(polls)),
        report.target(f"{result_mb:.0f} MB result in one b64 poll <= 150 ms", p50 <= 0.150),
    )  # fmt: skip
    report.add(
        "f", f"fetch the {plan.big_n} images in parallel (/images/{{i}}, url format)",
        f"{len(images)} fetches", ms(images_p50), ms(max(images)),
        report.target(f"{result_mb:.0f} MB result as image GETs <= 150 ms", images_p50 <= 0.150)
        + f"; API RSS {api_rss / 1024:.0f} MB (peak {api_peak / 1024:.0f}); "
        f"worker peak {worker_peak / 1024:.0f} MB; upload submit {ms(percentile(submits, 50))}",
    )  # fmt: skip
    report.numbers["big_poll_p50_s"] = p50
    report.numbers["big_images_p50_s"] = images_p50
    report.check("large submits accepted", plan.big_jobs, accepted_since(bs, before))
    completed = metric(bs.worker_metrics(), "imagejobs_completions_total", status="completed")
    report.check("large jobs completed", len(done.done), completed)
    bs.stop_workers()


# --- the table ----------------------------------------------------------------------------


async def main_async(plan: Plan, root: Path, only: set[str]) -> Report:
    report = Report()
    bs = BenchStack(root)
    try:
        bs.start()  # in the try: a failed start still stops what it started
        if "submit" in only:
            await submit_rates(bs, plan, report)
        if "e2e" in only:
            await end_to_end(bs, plan, report)
        if "workers" in only:
            await worker_scaling(bs, plan, report)
        if "slow" in only:
            await slow_jobs(bs, plan, report)
        if "large" in only:
            await large_results(bs, plan, report)
        if "list" in only:
            await store_rows.list_rows(bs, plan.list_sizes, plan.list_calls, report)
        if "cpu" in only:
            submit = partial(burst, plan, bs.gateway_one_api, json.dumps(GEN_BODY).encode())
            await store_rows.cpu_rows(bs, plan.cpu_sizes, submit, plan.cpu_submits, report)
    finally:
        bs.stop()
    if "fair" in only:  # stacks of its own (keys, fair share on and off)
        await fairshare.fair_share(root / "fair", plan, report)
    return report


PHASES = ("submit", "e2e", "workers", "slow", "large", "list", "cpu", "fair")


def sizes(text: str) -> tuple[int, ...]:
    """`1000,100000` -> (1000, 100000)."""
    return tuple(int(part) for part in text.split(","))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny loads: a works-check")
    parser.add_argument("--python-load", action="store_true", help="no h2load, even if found")
    parser.add_argument("--only", default=",".join(PHASES), help=f"subset of {PHASES}")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--quick", action="store_true", help="small (h)/(i) stores")
    parser.add_argument("--list-sizes", type=sizes, help="(h) live jobs, e.g. 1000,100000")
    parser.add_argument("--cpu-sizes", type=sizes, help="(i) store sizes, e.g. 10000,1000000")
    parser.add_argument("--cpu-submits", type=int, help="(i) submits billed at each size")
    parser.add_argument("--fair-backlog", type=int, help="(j) key A's queued jobs (2000)")
    parser.add_argument("--fair-drain", type=int, help="(j) jobs per throughput drain (3000)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    if plan.tool == "h2load" and (args.python_load or not load.have_h2load()):
        if not args.python_load:
            print("h2load not found (scripts/toolchains.sh installs nghttp2-client): Python load")
        plan = Plan(**{**plan.__dict__, "tool": "python"})
    changes: dict[str, Any] = dict(QUICK_STORES) if args.quick else {}
    for name in ("list_sizes", "cpu_sizes", "cpu_submits"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.fair_backlog:
        changes["fair_backlog"] = args.fair_backlog
    if args.fair_drain:
        changes["fair_drain_jobs"] = args.fair_drain
    plan = dataclasses.replace(plan, **changes)
    generator = load.generator_name(plan.tool)
    print(f"load generator: {generator}", flush=True)
    started, load_before = time.monotonic(), os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="imagejobs-bench-"))
    try:
        report = asyncio.run(main_async(plan, root, set(args.only.split(","))))
    finally:
        if args.keep:
            print(f"logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(render(report, plan.name, generator, started, load_before), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load_generator": generator,
                    "numbers": report.numbers,
                    "checks": report.checks,
                    "targets": report.targets,
                    "rows": [r.__dict__ for r in report.rows],
                },
                indent=2,
            )
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
