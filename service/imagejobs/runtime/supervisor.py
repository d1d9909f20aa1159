"""`imagejobs up`: the whole stack on one machine, in the foreground.

Start order, each checked ready before the next: nats-server -> API process(es) ->
worker process(es) -> Envoy. Each component's output goes to `<data_dir>/logs/<name>.log`
and, prefixed, to the console. Ctrl-C (or SIGTERM) stops them in reverse order, each
with its own grace period; a component that dies on its own stops the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from imagejobs import gateway
from imagejobs.config import Settings
from imagejobs.runtime import natsd

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = {"gateway": 5.0, "api": 10.0, "worker": 40.0, "nats": 10.0}


@dataclass
class Child:
    name: str
    role: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None


async def _pump(child: Child, log_path: Path, echo: bool) -> None:
    assert child.process is not None
    assert child.process.stdout is not None
    with log_path.open("ab") as log:
        async for line in child.process.stdout:
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.write(f"[{child.name}] {line.decode(errors='replace')}")
                sys.stdout.flush()


async def poll_until(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Until `check()` is true; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s:g} s")
        await asyncio.sleep(0.1)


async def wait_tcp(host: str, port: int) -> None:
    """Until something accepts TCP connections on host:port."""

    async def accepts() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        writer.close()
        return True

    await poll_until(accepts, f"nothing listening on {host}:{port}")


async def wait_http_ok(url: str) -> None:
    """Until `url` answers 200."""
    async with httpx.AsyncClient() as client:

        async def ok() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(url, timeout=2)).status_code == 200
            return False

        await poll_until(ok, f"{url} not healthy")


def _contains(path: Path, needle: str) -> bool:
    return path.exists() and needle in path.read_text(errors="replace")


async def wait_log_line(path: Path, needle: str) -> None:
    """Until `needle` appears in the log file `path`."""
    await poll_until(
        lambda: asyncio.to_thread(_contains, path, needle), f"{path.name}: no {needle!r}"
    )


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


class Supervisor:
    def __init__(self, settings: Settings, *, start_nats: bool = True, echo: bool = True) -> None:
        self.settings = settings
        self.start_nats = start_nats
        self.echo = echo
        self.data_dir = Path(settings.data_dir).resolve()
        self.log_dir = self.data_dir / "logs"
        self.children: list[Child] = []

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "IMAGEJOBS_NATS_URL": ",".join(s.nats_servers),
                "IMAGEJOBS_GATEWAY_PORT": str(s.gateway_port),
                "IMAGEJOBS_HOST": s.host,
                "IMAGEJOBS_DATA_DIR": str(self.data_dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    async def _spawn(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child.env or self._env(),
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        child.pump = asyncio.create_task(
            _pump(child, self.log_dir / f"{child.name}.log", self.echo)
        )
        self.children.append(child)

    async def start(self) -> None:
        s = self.settings
        py = [sys.executable, "-m", "imagejobs"]
        if self.start_nats:
            if not port_free("127.0.0.1", s.nats_port):
                raise RuntimeError(f"port {s.nats_port} is taken: is another nats-server running?")
            await self._spawn(
                Child(
                    "nats", "nats", natsd.command("127.0.0.1", s.nats_port, self.data_dir / "nats")
                )
            )
            await wait_tcp("127.0.0.1", s.nats_port)
        for port in s.all_api_ports:
            await self._spawn(Child(f"api-{port}", "api", [*py, "api", "--port", str(port)]))
        for port in s.all_api_ports:
            await wait_tcp(s.api_host, port)
        for i in range(s.worker_processes):
            name = f"worker-{i + 1}"
            await self._spawn(Child(name, "worker", [*py, "worker"]))
            await wait_log_line(self.log_dir / f"{name}.log", "ready")
        config = gateway.render(s, self.data_dir / "gateway")
        await self._spawn(Child("gateway", "gateway", gateway.command(config)))
        await wait_http_ok(f"http://{s.host}:{s.gateway_port}/health")

    async def stop(self) -> None:
        for child in reversed(self.children):
            proc = child.process
            if proc is None or proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S.get(child.role, 10.0))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for child in self.children:
            if child.pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.pump, 2)

    async def wait_any_exit(self) -> Child:
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self.children if c.process}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[next(iter(done))]


async def run_up(settings: Settings) -> int:
    """Start everything, wait for Ctrl-C or a component's death, stop everything."""
    sup = Supervisor(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await sup.start()
        s = settings
        print(
            f"imagejobs is ready: REST and gRPC on http://{s.host}:{s.gateway_port} "
            f"(API on {', '.join(map(str, s.all_api_ports))}, NATS on {s.nats_port}); "
            f"logs in {sup.log_dir}. Ctrl-C stops.",
            flush=True,
        )
        stopper = asyncio.create_task(stop.wait())
        died = asyncio.create_task(sup.wait_any_exit())
        await asyncio.wait({stopper, died}, return_when=asyncio.FIRST_COMPLETED)
        if died.done():
            child = died.result()
            rc = child.process.returncode if child.process else None
            print(f"{child.name} exited with {rc}; stopping", flush=True)
            code = 1
        stopper.cancel()
        died.cancel()
    except (TimeoutError, RuntimeError, OSError) as exc:
        print(f"imagejobs up failed: {exc} (see {sup.log_dir})", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("stopping…", flush=True)
        await sup.stop()
        print("stopped", flush=True)
    return code
