"""Load generators, every one bounded by a request count AND a time limit.

- `h2load` (nghttp2-client, C): closed-loop REST over HTTP/1.1 keep-alive (`--h1`) and
  native gRPC over h2c (a pre-framed request body). Used when it is on PATH: it costs a
  fraction of a core where a Python client would compete with the servers for the
  machine's two. Latencies come from its per-request log.
- Python fallbacks (CI smoke, or no h2load): a raw-socket asyncio HTTP/1.1 keep-alive
  client and a grpc.aio client.
- `open_loop`: a fixed offered rate (requests scheduled at t0 + i/rate, latency counted
  from the scheduled instant, so a stalled server cannot hide its queueing).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

SUBMIT_PATH = "/imagejobs.v1.ImageJobService/SubmitImageJob"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass
class LoadResult:
    """One bounded run: `ok` responses (2xx, or gRPC OK) out of `done` in `elapsed_s`."""

    tool: str
    done: int = 0
    ok: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    hit_time_limit: bool = False

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def p(self, pct: float) -> float:
        return percentile(self.latencies_s, pct)


def have_h2load() -> bool:
    return shutil.which("h2load") is not None


def h2load_version() -> str:
    """`nghttp2/1.52.0` (what `h2load --version` names), or "" when it cannot be run."""
    try:
        out = subprocess.run(["h2load", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"nghttp2/[\w.]+", out.stdout)
    return m.group(0) if m else ""


def generator_name(tool: str) -> str:
    """What a run's `tool` stands for, as the output and `--json` (`load_generator`) say."""
    if tool == "h2load":
        return f"h2load ({h2load_version() or 'version unknown'})"
    return "python (asyncio HTTP/1.1 keep-alive and grpc.aio clients)"


# --- h2load ----------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    total: int,
    connections: int,
    streams: int = 1,
    h1: bool = False,
    timeout_s: float = 60.0,
) -> LoadResult:
    """POST `body` to `url` `total` times over `connections` (each with up to `streams`
    concurrent requests); killed at `timeout_s` (then `hit_time_limit`)."""
    connections = max(1, min(connections, total))  # h2load refuses more clients than requests
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        body_path, log_path = Path(tmp, "body"), Path(tmp, "log")
        body_path.write_bytes(body)
        argv = ["h2load", "-n", str(total), "-c", str(connections), "-t", "1"]
        argv += ["-m", str(streams), "-d", str(body_path), "--log-file", str(log_path)]
        if h1:
            argv.append("--h1")
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(url)
        result = LoadResult(tool="h2load")
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s).stdout
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else ""
            result.hit_time_limit = True
        if m := re.search(r"finished in ([\d.]+)(m?s)", out):
            seconds = float(m.group(1))
            result.elapsed_s = seconds / 1000 if m.group(2) == "ms" else seconds
        for line in log_path.read_text().splitlines() if log_path.exists() else ():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            status = parts[1]
            result.done += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status.startswith("2"):
                result.ok += 1
                result.latencies_s.append(int(parts[2]) / 1e6)
        return result


# --- Python HTTP/1.1 -------------------------------------------------------------------


def h2load_rest(
    port: int, path: str, body: bytes, *, total: int, connections: int, timeout_s: float = 60.0
) -> LoadResult:
    """`h2load` of JSON POSTs of `body` to `path` on `port`, over HTTP/1.1 keep-alive."""
    return h2load(
        f"http://127.0.0.1:{port}{path}",
        body,
        {"content-type": "application/json"},
        total=total,
        connections=connections,
        h1=True,
        timeout_s=timeout_s,
    )


def h2load_grpc(
    port: int,
    message: jobs_pb2.SubmitImageJobRequest,
    *,
    total: int,
    connections: int,
    streams: int,
    timeout_s: float = 60.0,
) -> LoadResult:
    """`h2load` of typed gRPC submits of `message` to the server on `port`."""
    return h2load(
        f"http://127.0.0.1:{port}{SUBMIT_PATH}",
        grpc_frame(message.SerializeToString()),
        {"content-type": "application/grpc", "te": "trailers"},
        total=total,
        connections=connections,
        streams=streams,
        timeout_s=timeout_s,
    )


def http_request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """The raw bytes of one keep-alive HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (content-length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length) if length else b""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def http_closed_loop(
    port: int, request: bytes, *, total: int, connections: int, timeout_s: float
) -> LoadResult:
    """Send `request` `total` times over `connections` keep-alive connections."""
    result = LoadResult(tool="python")
    issued = 0
    deadline = time.monotonic() + timeout_s

    async def connection() -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while issued < total and time.monotonic() < deadline:
                issued += 1
                started = time.perf_counter()
                writer.write(request)
                status, _ = await read_response(reader)
                _record(result, str(status), status < 300, time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    result.elapsed_s = time.perf_counter() - started
    result.hit_time_limit = result.done < total
    return result


def _record(result: LoadResult, status: str, ok: bool, latency_s: float) -> None:
    result.done += 1
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if ok:
        result.ok += 1
        result.latencies_s.append(latency_s)


@dataclass
class Sent:
    """One open-loop request: when it was due, when its answer came, what it said."""

    due: float  # time.time() it was scheduled for
    status: int = 0
    answered: float = 0.0
    body: bytes = b""


async def open_loop(
    port: int,
    make_request: Callable[[int], bytes],
    *,
    rate: float,
    total: int,
    timeout_s: float,
    connections: int = 64,
) -> list[Sent]:
    """Offer `rate` requests/s (at most `total`, for at most `timeout_s`) over a pool of
    keep-alive connections; a request waits for a free connection if none is idle."""
    queue: asyncio.Queue[tuple[int, Sent] | None] = asyncio.Queue()
    sent: list[Sent] = []
    start = time.time() + 0.05
    deadline = time.monotonic() + timeout_s

    async def schedule() -> None:
        for i in range(total):
            due = start + i / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() > deadline:
                break
            item = Sent(due=due)
            sent.append(item)
            queue.put_nowait((i, item))
        for _ in range(connections):
            queue.put_nowait(None)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (job := await queue.get()) is not None:
                i, item = job
                writer.write(make_request(i))
                item.status, item.body = await asyncio.wait_for(
                    read_response(reader), max(deadline - time.monotonic(), 0.1)
                )
                item.answered = time.time()
        finally:
            writer.close()

    await asyncio.gather(schedule(), *(connection() for _ in range(connections)))
    return sent


# --- Python gRPC -----------------------------------------------------------------------


async def grpc_closed_loop(
    target: str,
    request: jobs_pb2.SubmitImageJobRequest,
    *,
    total: int,
    concurrency: int,
    timeout_s: float,
) -> LoadResult:
    """`total` SubmitImageJob calls, `concurrency` at a time, over one channel."""
    result = LoadResult(tool="python")
    issued = 0
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)

        async def caller() -> None:
            nonlocal issued
            while issued < total and time.monotonic() < deadline:
                issued += 1
                started = time.perf_counter()
                try:
                    await stub.SubmitImageJob(request, timeout=10)
                    _record(result, "OK", True, time.perf_counter() - started)
                except grpc.aio.AioRpcError as exc:
                    _record(result, exc.code().name, False, 0)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    result.hit_time_limit = result.done < total
    return result


async def run_bounded(make: Callable[[], Awaitable[LoadResult]], timeout_s: float) -> LoadResult:
    """`make()` with a hard time limit on top of its own (a hung socket cannot stall)."""
    return await asyncio.wait_for(make(), timeout_s + 10)
