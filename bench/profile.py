"""Where the time goes: run one bench load and sample a process with py-spy meanwhile.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py submit   # API process under REST submits (32 conns)
    .venv/bin/python bench/profile.py grpc     # API process under typed gRPC submits, direct
    .venv/bin/python bench/profile.py e2e      # worker process draining a full queue
    .venv/bin/python bench/profile.py slow     # worker taking 2,000 slow jobs at once
    .venv/bin/python bench/profile.py large    # API process serving 16 MB polls
    .venv/bin/python bench/profile.py list --jobs 100000   # API process answering first
                                               # list pages, the caller having that many jobs

`submit` uses h2load when it is installed (scripts/toolchains.sh), else the Python
generator (in this process: it then shares the cores with the API it samples).

Prints the top functions by inclusive and by self time (share of samples), and writes
the collapsed stacks (for flamegraph tools) to --out, by default
`bench/out/profile-<what>.collapsed` (bench/out/ is git-ignored: generated, never tracked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` is not installed

from bench import load, store_rows
from bench.run import FULL, GEN_BODY, GRPC_SUBMIT, SUBMIT_PATH, burst, fetch, multipart, noise_png
from bench.stack import BenchStack, Completions, job_id

NATIVE = False
OUT_DIR = Path(__file__).resolve().parent / "out"  # git-ignored


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", "250", "--format", "raw", "--output", str(out)]
    # --native pauses the process per sample (py-spy cannot unwind C frames otherwise)
    argv.append("--native" if NATIVE else "--nonblocking")
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize(collapsed: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples"]
    for title, table in (("inclusive", inclusive), ("self", own)):
        lines.append(f"-- top {top} by {title} time")
        lines += [f"{n / total:6.1%}  {frame}" for frame, n in table.most_common(top)]
    return "\n".join(lines)


async def profile_submit(bs: BenchStack, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """API 0 under closed-loop REST submits (32 connections) for `seconds`."""
    proc = record(bs.api_pids[0], seconds, out)
    body = json.dumps(GEN_BODY).encode()
    total = int(3000 * seconds)
    if load.have_h2load():
        await asyncio.to_thread(
            load.h2load_rest,
            bs.gateway_one_api,
            SUBMIT_PATH,
            body,
            total=total,
            connections=32,
            timeout_s=seconds + 5,
        )
    else:
        request = load.http_request("POST", SUBMIT_PATH, body, {"Content-Type": "application/json"})
        await load.run_bounded(
            lambda: load.http_closed_loop(
                bs.gateway_one_api, request, total=total, connections=32, timeout_s=seconds
            ),
            seconds,
        )
    await bs.purge_queue()
    return proc


async def profile_grpc(bs: BenchStack, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """API 0 under typed gRPC submits straight to it (4 connections x 16 streams, as
    bench/run.py's (b) row), with h2load."""
    if not load.have_h2load():
        raise SystemExit("grpc needs h2load (scripts/toolchains.sh installs nghttp2-client)")
    proc = record(bs.api_pids[0], seconds, out)
    await asyncio.to_thread(
        load.h2load_grpc,
        bs.stack.api_ports[0],
        GRPC_SUBMIT,
        total=int(2000 * seconds),
        connections=4,
        streams=16,
        timeout_s=seconds + 5,
    )
    await bs.purge_queue()
    return proc


async def profile_slow(bs: BenchStack, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """The worker taking 2,000 queued jobs of 5 s mock latency at once (bench/run.py's
    (e) row), sampled from its thaw."""
    bs.start_workers(1, env={"IMAGEJOBS_WORKER_CONCURRENCY": "2000"})
    _, worker = bs.workers[0]
    worker.send_signal(signal.SIGSTOP)
    body = json.dumps({**GEN_BODY, "mock_latency_ms": 5000}).encode()
    async with Completions(bs.stack.nats_port) as done:
        filled = await burst(FULL, bs.gateway_one_api, body, 2000)
        proc = record(worker.pid, seconds, out)
        worker.send_signal(signal.SIGCONT)
        await done.wait_until(lambda: len(done.done) >= filled.ok, seconds + 60)
    return proc


async def profile_e2e(bs: BenchStack, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """The worker draining a queue filled while it was frozen."""
    bs.start_workers(1)
    _, worker = bs.workers[0]
    worker.send_signal(signal.SIGSTOP)
    async with Completions(bs.stack.nats_port) as done:
        filled = await burst(FULL, bs.gateway_one_api, json.dumps(GEN_BODY).encode(), 4000)
        proc = record(worker.pid, seconds, out)
        worker.send_signal(signal.SIGCONT)
        await done.wait_until(lambda: len(done.done) >= filled.ok, seconds + 30)
    return proc


async def profile_large(bs: BenchStack, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """API 0 serving one 16 MB result as b64 polls, one after another."""
    bs.start_workers(1)
    body, ctype = multipart({"model": "mock/m", "n": "4"}, noise_png(1160))
    request = load.http_request(
        "POST", "/v1/async/images/variations", body, {"Content-Type": ctype}
    )
    async with Completions(bs.stack.nats_port) as done:
        reader, writer = await asyncio.open_connection("127.0.0.1", bs.gateway_one_api)
        writer.write(request)
        _, answer = await load.read_response(reader)
        writer.close()
        job = job_id(answer)
        await done.wait_for({job}, 60)
    proc = record(bs.api_pids[0], seconds, out)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await fetch(bs.gateway_one_api, f"/v1/async/images/variations/{job}")
    return proc


async def profile_list(
    bs: BenchStack, seconds: float, out: Path, jobs: int
) -> subprocess.Popen[bytes]:
    """API 0 answering first list pages, one after another, for a caller with `jobs`
    live jobs (written straight through the store API, as bench/run.py's (h) row)."""
    await store_rows.empty_store(bs.stack.nats_port)
    await store_rows.fill(bs.settings, jobs)
    await store_rows.settle(bs.api_pids[0])
    proc = record(bs.api_pids[0], seconds, out)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await store_rows.first_pages(bs.gateway_one_api, 1, min(jobs, store_rows.PAGE_SIZE))
    return proc


async def main_async(what: str, seconds: float, out: Path, top: int, jobs: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="imagejobs-profile-"))
    bs = BenchStack(root)
    try:
        bs.start()  # in the try: a failed start still stops what it started
        if what == "list":
            proc = await profile_list(bs, seconds, out, jobs)
        else:
            run = {
                "submit": profile_submit,
                "grpc": profile_grpc,
                "e2e": profile_e2e,
                "slow": profile_slow,
                "large": profile_large,
            }[what]
            proc = await run(bs, seconds, out)
        proc.wait(timeout=seconds + 30)
    finally:
        bs.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(summarize(out, top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("submit", "grpc", "e2e", "slow", "large", "list"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, help=f"default {OUT_DIR}/profile-WHAT.collapsed")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--jobs", type=int, default=100_000, help="list: the caller's jobs")
    parser.add_argument("--native", action="store_true", help="C/C++ frames too (slower)")
    args = parser.parse_args()
    global NATIVE
    NATIVE = args.native
    out: Path = args.out or OUT_DIR / f"profile-{args.what}.collapsed"
    out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(args.what, args.seconds, out, args.top, args.jobs))
    print(f"collapsed stacks in {out}")


if __name__ == "__main__":
    main()
