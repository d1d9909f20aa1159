"""What limits each process, measured on a local 3-node JetStream cluster (docs/scaling.md):

    .venv/bin/python bench/cluster.py            # 3-5 min on 2 busy cores
    .venv/bin/python bench/cluster.py --smoke    # small loads, under a minute

(1) NATS: acknowledged 1 KiB publishes (one subject each, as job records are written),
    pipelined, on a stream with 1 replica and on one with 3; then leader reads and
    direct gets of them. Messages/s, and messages per CPU-second of the nats-servers.
(2) API: REST submits through Envoy (h2load) to one API process, its worker frozen;
    submits/s, and submits per CPU-second of the API, Envoy and NATS.
(3) Worker: that one worker thawed, draining what (2) queued (mock 0 ms); jobs/s, and
    jobs per CPU-second of the worker and of NATS; with the provider's 64 cluster-wide
    slots, then again with as many as (4) needs (a slot is found by reading them all).
(4) Memory per in-flight job: a worker with room for many holds that many slow jobs at
    once; (its peak RSS - its RSS idle) / jobs held.

Every stream has 3 replicas in (2)-(4), as on a cluster. Each figure is a rate or a ratio
of counts and CPU seconds measured in this same run; the process CPU times come from
/proc. The load generator (h2load, this script) shares the cores and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` is not installed

import nats
from imagejobs.testing import Stack, free_port_run, scrape, terminate
from nats.js import JetStreamContext
from nats.js import api as js_api

from bench import load
from bench.stack import Completions, cpu_seconds, memory_kb, metric

SUBMIT_PATH = "/v1/async/images/generations"
RECORD_BYTES = 1024  # about a job record's size
WINDOW = 256  # publishes in flight at once
WORKER_STOP_S = 40.0


@dataclass(frozen=True)
class Plan:
    messages: int  # (1) per stream
    reads: int  # (1) of each kind
    submits: int  # (2), then drained in (3)
    connections: int  # (2)
    held: int  # (4) slow jobs at once
    held_latency_ms: int
    timeout_s: float  # of each phase


FULL = Plan(
    messages=20000, reads=10000, submits=2400, connections=32, held=600, held_latency_ms=8000,
    timeout_s=90.0,
)  # fmt: skip
SMOKE = Plan(
    messages=300, reads=200, submits=200, connections=8, held=50, held_latency_ms=2000,
    timeout_s=30.0,
)  # fmt: skip


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    def add(self, line: str, **numbers: float) -> None:
        print(line, flush=True)
        self.lines.append(line)
        self.numbers.update(numbers)


class Cpu:
    """CPU seconds spent by named processes between `start()` and `stop()`."""

    def __init__(self, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        self.procs = procs
        self.before: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.wall = 0.0

    @contextmanager
    def measuring(self) -> Iterator[Cpu]:
        self.before = {n: cpu_seconds(p.pid) for n, p in self.procs.items()}
        started, mine = time.monotonic(), time.process_time()
        yield self
        self.wall = time.monotonic() - started
        self.spent = {n: cpu_seconds(p.pid) - self.before[n] for n, p in self.procs.items()}
        self.spent["self"] = time.process_time() - mine  # this script: the NATS client

    def of(self, prefix: str) -> float:
        return sum(s for n, s in self.spent.items() if n.startswith(prefix))


def nats_procs(stack: Stack) -> dict[str, subprocess.Popen[bytes]]:
    return {n: p for n, p in stack.procs.items() if n.startswith("nats")}


# --- (1) NATS ------------------------------------------------------------------------------


async def pipelined(count: int, call: Callable[[int], Awaitable[object]]) -> None:
    """`call(i)` for i < count, WINDOW at a time."""
    slots = asyncio.Semaphore(WINDOW)

    async def one(i: int) -> None:
        async with slots:
            await call(i)

    await asyncio.gather(*(one(i) for i in range(count)))


async def nats_throughput(stack: Stack, plan: Plan, report: Report) -> None:
    nc = await nats.connect(stack.settings.nats_servers)
    try:
        for replicas in (1, 3):
            await one_stream(nc.jetstream(timeout=10), stack, plan, report, replicas)
    finally:
        await nc.close()


async def one_stream(
    js: JetStreamContext, stack: Stack, plan: Plan, report: Report, replicas: int
) -> None:
    """Publishes, then reads both ways, on a new stream of `replicas` (deleted after)."""
    name, prefix = f"BENCH_R{replicas}", f"bench.r{replicas}"
    payload = os.urandom(RECORD_BYTES)
    config = js_api.StreamConfig(
        name=name,
        subjects=[f"{prefix}.>"],
        num_replicas=replicas,
        storage=js_api.StorageType.FILE,
        max_msgs_per_subject=1,
        allow_direct=True,
    )
    await js.add_stream(config)
    await asyncio.sleep(1.0)  # its leader elected

    async def publish(i: int) -> object:
        return await js.publish(f"{prefix}.{i}", payload)

    async def leader_read(i: int) -> object:
        return await js.get_msg(name, subject=f"{prefix}.{i}", direct=False)

    async def direct_get(i: int) -> object:
        return await js.get_msg(name, subject=f"{prefix}.{i}", direct=True)

    runs: list[tuple[str, str, int, Callable[[int], Awaitable[object]]]] = [
        ("pub", f"(1) NATS R{replicas}: acked 1 KiB publishes", plan.messages, publish),
        ("leader", f"    R{replicas} leader reads (STREAM.MSG.GET)", plan.reads, leader_read),
        ("direct", f"    R{replicas} direct gets (any replica)", plan.reads, direct_get),
    ]
    cpu = Cpu(nats_procs(stack))
    for key, what, count, call in runs:
        with cpu.measuring():
            await asyncio.wait_for(pipelined(count, call), plan.timeout_s)
        rate, per_cpu = count / cpu.wall, count / cpu.of("nats")
        report.add(
            f"{what}: {rate:,.0f}/s; {per_cpu:,.0f} per nats CPU-second "
            f"(the 3 nodes together spent {cpu.of('nats'):.2f} CPU-s on {count}, "
            f"the Python client {cpu.of('self'):.2f})",
            **{f"nats_r{replicas}_{key}_per_s": rate, f"nats_r{replicas}_{key}_per_cpu_s": per_cpu},
        )
    await js.delete_stream(name)


# --- (2) + (3) API and worker ---------------------------------------------------------------


def worker_metrics_port(stack: Stack, name: str) -> int:
    m = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", stack.log(name))
    if m is None:
        raise RuntimeError(f"{name} logged no metrics port")
    return int(m.group(1))


async def queue_jobs(stack: Stack, plan: Plan, total: int, body: bytes) -> load.LoadResult:
    """`total` REST submits of `body` through Envoy (h2load)."""
    return await asyncio.to_thread(
        load.h2load_rest,
        stack.gateway_port,
        SUBMIT_PATH,
        body,
        total=total,
        connections=plan.connections,
        timeout_s=plan.timeout_s,
    )


async def submits_and_drain(
    stack: Stack, plan: Plan, report: Report, *, jobs: int, slots: int
) -> None:
    """Queue `jobs` with the worker frozen (timing the API, when it is the first run), then
    thaw the worker and time its drain, its provider having `slots` cluster-wide slots."""
    env = {"IMAGEJOBS_PROVIDERS__MOCK__CONCURRENCY": str(slots)}
    name, worker = stack.start_worker(env)
    worker.send_signal(signal.SIGSTOP)  # the queue fills; the worker's rate is timed alone
    body = json.dumps({"model": "mock/image-1", "prompt": "bench", "size": "16x16"}).encode()
    procs = {"api": stack.procs[f"api-{stack.api_ports[0]}"], "envoy": stack.procs["gateway"]}
    cpu = Cpu(procs | nats_procs(stack))
    async with Completions(stack.nats_port) as done:
        with cpu.measuring():
            result = await queue_jobs(stack, plan, jobs, body)
        ok = result.ok
        if "api_submits_per_s" not in report.numbers:
            report.add(
                f"(2) API: {result.rate:,.0f} submits/s through Envoy ({ok}/{result.done} "
                f"accepted, {plan.connections} connections, p50 {result.p(50) * 1000:.0f} ms, "
                f"p99 {result.p(99) * 1000:.0f} ms); per CPU-second: API "
                f"{ok / cpu.of('api'):,.0f}, Envoy {ok / cpu.of('envoy'):,.0f}, "
                f"NATS {ok / cpu.of('nats'):,.0f} submits",
                api_submits_per_s=result.rate,
                api_submits_per_cpu_s=ok / cpu.of("api"),
                envoy_submits_per_cpu_s=ok / cpu.of("envoy"),
                nats_submits_per_cpu_s=ok / cpu.of("nats"),
            )
        drain = Cpu({"worker": worker} | nats_procs(stack))
        with drain.measuring():
            worker.send_signal(signal.SIGCONT)
            await done.wait_until(lambda: len(done.done) >= ok, plan.timeout_s)
        finished = len(done.done)
    report.add(
        f"(3) worker, {slots} provider slots: {finished / drain.wall:,.0f} jobs/s draining "
        f"{finished} of {ok} (mock 0 ms, {drain.wall:.1f} s); per CPU-second: worker "
        f"{finished / drain.of('worker'):,.0f}, NATS {finished / drain.of('nats'):,.0f} jobs",
        **{
            f"worker_{slots}_slots_jobs_per_s": finished / drain.wall,
            f"worker_{slots}_slots_jobs_per_cpu_s": finished / drain.of("worker"),
            f"nats_{slots}_slots_jobs_per_cpu_s": finished / drain.of("nats"),
        },
    )
    completions = metric(scrape(worker_metrics_port(stack, name)), "imagejobs_completions_total")
    report.add(f"    check: {finished} completions seen on NATS, {completions:.0f} in the metrics")
    terminate([worker], WORKER_STOP_S)


# --- (4) memory per in-flight job -----------------------------------------------------------


async def memory_per_job(stack: Stack, plan: Plan, report: Report) -> None:
    env = {
        "IMAGEJOBS_WORKER_CONCURRENCY": str(plan.held),
        "IMAGEJOBS_PROVIDERS__MOCK__CONCURRENCY": str(plan.held),
    }
    name, worker = stack.start_worker(env)
    await asyncio.sleep(2.0)  # settled after its start
    idle_kb, _ = memory_kb(worker.pid)
    worker.send_signal(signal.SIGSTOP)
    body = json.dumps(
        {"model": "mock/image-1", "prompt": "held", "size": "16x16",
         "mock_latency_ms": plan.held_latency_ms}
    ).encode()  # fmt: skip
    async with Completions(stack.nats_port) as done:
        queued = await queue_jobs(stack, plan, plan.held, body)
        worker.send_signal(signal.SIGCONT)
        port = worker_metrics_port(stack, name)
        peak_kb, peak_in_flight = idle_kb, 0.0
        deadline = time.monotonic() + plan.held_latency_ms / 1000 + plan.timeout_s
        while len(done.done) < queued.ok and time.monotonic() < deadline:
            peak_kb = max(peak_kb, memory_kb(worker.pid)[0])
            peak_in_flight = max(peak_in_flight, metric(scrape(port), "imagejobs_jobs_in_flight"))
            await asyncio.sleep(0.25)
    per_job = (peak_kb - idle_kb) / max(peak_in_flight, 1)
    report.add(
        f"(4) memory: {per_job:,.0f} KiB per in-flight job (worker RSS idle "
        f"{idle_kb / 1024:.0f} MiB, peak {peak_kb / 1024:.0f} MiB with {peak_in_flight:.0f} "
        f"jobs in flight at once)",
        worker_kib_per_in_flight_job=per_job,
        worker_idle_mib=idle_kb / 1024,
    )
    terminate([worker], WORKER_STOP_S)


# --- the run -------------------------------------------------------------------------------


async def main_async(root: Path, plan: Plan) -> Report:
    report = Report()
    config = {
        "metrics_port": free_port_run(24),
        "queue_max_jobs": 1_000_000,
        "ack_wait_s": 30.0,  # the default: no redelivery of a held slow job
    }
    stack = Stack(root, config, apis=1, workers=0, nats_nodes=3)
    try:
        stack.start()
        await nats_throughput(stack, plan, report)
        await submits_and_drain(stack, plan, report, jobs=plan.submits, slots=64)
        await submits_and_drain(stack, plan, report, jobs=plan.submits // 3, slots=plan.held)
        await memory_per_job(stack, plan, report)
    finally:
        stack.stop()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small loads: a works-check")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if not load.have_h2load():
        print("bench/cluster.py needs h2load (apt-get install nghttp2-client)")
        return 2
    plan = SMOKE if args.smoke else FULL
    started, load_before = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="imagejobs-bench-cluster-") as tmp:
        report = asyncio.run(main_async(Path(tmp), plan))
    print(
        f"bench/cluster.py: {os.cpu_count()} cores; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; took {time.monotonic() - started:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(report.numbers, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
