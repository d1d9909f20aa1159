"""Where the time goes: run one bench load and sample a process with py-spy meanwhile.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py submit   # API process under REST submits (32 conns)
    .venv/bin/python bench/profile.py e2e      # worker process draining a full queue
    .venv/bin/python bench/profile.py large    # API process serving 16 MB polls

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

from bench import load
from bench.run import FULL, GEN_BODY, SUBMIT_PATH, burst, fetch, multipart, noise_png
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


async def main_async(what: str, seconds: float, out: Path, top: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="imagejobs-profile-"))
    bs = BenchStack(root)
    try:
        bs.start()  # in the try: a failed start still stops what it started
        if what == "submit":
            proc = record(bs.api_pids[0], seconds, out)
            await asyncio.to_thread(
                load.h2load,
                f"http://127.0.0.1:{bs.gateway_one_api}{SUBMIT_PATH}",
                json.dumps(GEN_BODY).encode(),
                {"content-type": "application/json"},
                total=int(3000 * seconds),
                connections=32,
                h1=True,
                timeout_s=seconds + 5,
            )
        elif what == "e2e":
            bs.start_workers(1)
            _, worker = bs.workers[0]
            worker.send_signal(signal.SIGSTOP)
            async with Completions(bs.stack.nats_port) as done:
                filled = await burst(FULL, bs.gateway_one_api, json.dumps(GEN_BODY).encode(), 4000)
                proc = record(worker.pid, seconds, out)
                worker.send_signal(signal.SIGCONT)
                await done.wait_until(lambda: len(done.done) >= filled.ok, seconds + 30)
        else:
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
        proc.wait(timeout=seconds + 30)
    finally:
        bs.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(summarize(out, top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("submit", "e2e", "large"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, help=f"default {OUT_DIR}/profile-WHAT.collapsed")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="C/C++ frames too (slower)")
    args = parser.parse_args()
    global NATIVE
    NATIVE = args.native
    out: Path = args.out or OUT_DIR / f"profile-{args.what}.collapsed"
    out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(args.what, args.seconds, out, args.top))
    print(f"collapsed stacks in {out}")


if __name__ == "__main__":
    main()
