"""The processes a bench run needs, all on free loopback ports under one temp dir:

- our stack (imagejobs.testing.Stack: nats-server, API processes, workers, Envoy over
  every API), plus a second Envoy over API 0 alone, for 1-vs-2-API runs;
- baseline (c) REST: an Envoy that answers every request itself (bench/direct_envoy.yaml);
- baseline (c) RPC: the no-op grpc.aio servicer (bench/noop_server.py) behind an Envoy
  rendered by the very same code as ours (imagejobs.gateway).

Also: RSS from /proc, Prometheus scrapes, and a NATS watcher that timestamps every job's
terminal write (the KV bucket republishes each write on `imagejobs.state.<id>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import nats
from imagejobs import gateway
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.testing import (
    START_TIMEOUT_S,
    Samples,
    Stack,
    free_port,
    free_port_run,
    scrape,
    tcp_open,
    terminate,
    wait_until,
)

BENCH_DIR = Path(__file__).resolve().parent
WORKER_STOP_TIMEOUT_S = 40.0  # a worker drains its in-flight jobs on SIGTERM


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM = peak RSS) of a live process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every sample whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class BenchStack:
    """Everything above; `stop()` ends every process it started, by its own handle."""

    def __init__(self, root: Path, *, apis: int = 2, extra: dict[str, Any] | None = None) -> None:
        self.root = root
        self.metrics_base = free_port_run(apis + 24)
        config = {
            "metrics_port": self.metrics_base,
            "ack_wait_s": 30.0,  # the default: heartbeats every 10 s, none in a 5 s job
            "queue_max_jobs": 1_000_000,  # the submit runs queue far more than the default
            "providers": {"mock": {"concurrency": 4096}},  # (e): 2,000 calls at once
            **(extra or {}),
        }
        self.stack = Stack(root / "stack", config, workers=0, apis=apis)
        self.settings: Settings = self.stack.settings
        self.workers: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.gateway_one_api = 0  # an Envoy over API 0 only
        self.direct_port = 0  # baseline: Envoy answering directly
        self.noop_grpc_port = 0  # baseline: the no-op servicer ...
        self.noop_gateway_port = 0  # ... and our Envoy config in front of it

    # --- starting ---------------------------------------------------------------------

    def start(self) -> BenchStack:
        """Our stack (nats, APIs, Envoy over all APIs; no workers yet), then the extra
        Envoy over API 0 and both baselines. Every process lives in `self.stack.procs`."""
        self.stack.start()
        self.gateway_one_api = self.stack.start_envoy("gw-api0", [self.stack.api_ports[0]])
        self.noop_grpc_port = free_port()
        self.stack.spawn(
            "noop",
            [sys.executable, "-m", "bench.noop_server", "--port", str(self.noop_grpc_port)],
            {"PYTHONPATH": str(BENCH_DIR.parent)},  # `bench` is not installed
            cwd=BENCH_DIR.parent,
        )
        wait_until(lambda: tcp_open(self.noop_grpc_port), START_TIMEOUT_S, "noop servicer")
        self.noop_gateway_port = self.stack.start_envoy("gw-noop", [self.noop_grpc_port])
        self.direct_port = self._direct_envoy()
        return self

    def _direct_envoy(self) -> int:
        port = free_port()
        text = string.Template((BENCH_DIR / "direct_envoy.yaml").read_text()).substitute(
            admin_port=free_port(), listen_port=port
        )
        config = self.root / "direct_envoy.yaml"
        config.write_text(text)
        self.stack.spawn("gw-direct", gateway.command(config))
        wait_until(lambda: tcp_open(port), START_TIMEOUT_S, "direct envoy")
        return port

    def start_workers(self, count: int, env: dict[str, str] | None = None) -> None:
        """`count` more workers, each with `env` added to its environment."""
        for _ in range(count):
            self.workers.append(self.stack.start_worker(env))

    def stop_workers(self) -> None:
        """Stop the running workers (each drains its in-flight jobs first)."""
        terminate((proc for _, proc in self.workers), WORKER_STOP_TIMEOUT_S)
        self.workers = []

    def stop(self) -> None:
        self.stop_workers()
        self.stack.stop()

    # --- looking in ------------------------------------------------------------------

    @property
    def api_pids(self) -> list[int]:
        return [self.stack.procs[f"api-{p}"].pid for p in self.stack.api_ports]

    def api_metrics(self) -> Samples:
        """The API processes' metrics, summed (API i serves on metrics_port + i)."""
        return _merge(scrape(self.metrics_base + i) for i in range(len(self.stack.api_ports)))

    def worker_metrics(self) -> Samples:
        """The running workers' metrics, summed (each logs the port it took)."""
        ports = []
        for name, _ in self.workers:
            m = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", self.stack.log(name))
            if m is None:
                raise RuntimeError(f"{name} logged no metrics port")
            ports.append(int(m.group(1)))
        return _merge(scrape(p) for p in ports)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) so far of each process a submit and job touch."""
        procs = {
            "API": self.stack.procs[f"api-{self.stack.api_ports[0]}"],
            "Envoy": self.stack.procs["gw-api0"],
            "nats": self.stack.procs["nats"],
        }
        for i, (_, proc) in enumerate(self.workers):
            procs[f"worker{i + 1}" if len(self.workers) > 1 else "worker"] = proc
        return {name: cpu_seconds(proc.pid) for name, proc in procs.items()}

    def worker_peak_rss_mb(self) -> float:
        return max(memory_kb(p.pid)[1] for _, p in self.workers) / 1024

    async def purge_queue(self) -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{self.stack.nats_port}")
        try:
            await nc.jetstream().purge_stream(constants.QUEUE_STREAM)
        finally:
            await nc.close()


def _merge(parts: Iterable[Samples]) -> Samples:
    merged: Samples = {}
    for samples in parts:
        for key, value in samples.items():
            merged[key] = merged.get(key, 0.0) + value
    return merged


class Completions:
    """Timestamps (time.time()) of each job's first terminal write, as NATS delivers the
    KV republish of it; also counts writes seen, for a sanity check."""

    def __init__(self, nats_port: int) -> None:
        self._url = f"nats://127.0.0.1:{nats_port}"
        self.done: dict[str, tuple[float, str]] = {}
        self.records: dict[str, dict[str, Any]] = {}  # the terminal record of each
        self._nc: Any = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Completions:
        self._nc = await nats.connect(self._url, pending_size=256 * 1024 * 1024)

        async def on_write(msg: Any) -> None:
            data = msg.data
            for status in (b'"status":"completed"', b'"status":"failed"'):
                if status in data:
                    job_id = msg.subject.rsplit(".", 1)[-1]
                    if job_id not in self.done:
                        self.done[job_id] = (time.time(), status.decode()[10:-1])
                        self.records[job_id] = json.loads(data)
                        self._changed.set()
                    return

        await self._nc.subscribe(f"{constants.STATE_SUBJECT_PREFIX}.>", cb=on_write)
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._nc.close()

    async def wait_for(self, ids: set[str], timeout_s: float) -> bool:
        """Until every id in `ids` is terminal, or `timeout_s`; True if all are."""
        return await self.wait_until(lambda: ids <= self.done.keys(), timeout_s)

    async def wait_until(self, check: Callable[[], bool], timeout_s: float) -> bool:
        """Until `check()` holds (tested at each terminal write), or `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return True


def job_id(body: bytes) -> str:
    return str(json.loads(body)["id"])
