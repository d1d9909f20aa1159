"""`imagejobs up`: the whole stack on one machine, in the foreground.

Start order; each child is ready before the next one starts:

1. nats-server        ready when it accepts TCP on `nats_port`
2. API process(es)    all spawned at once; each ready when it accepts TCP on its port
3. worker process(es) one at a time; ready when its log says "ready"
4. webhook dispatcher(s), when `[[webhooks]]` are configured: as workers
5. Envoy (gateway)    ready when its /health answers 200 (it checks the APIs)

While waiting, a child that has exited fails the start at once (`StartFailed`, naming
it and showing its last log lines) instead of waiting out READY_TIMEOUT_S. Every child
gets the config file `up` read (IMAGEJOBS_CONFIG, absolute), so it sees the same keys,
providers and quotas. Each child's output goes to `<data_dir>/logs/<name>.log` and,
prefixed with its name, to the console.

Stop order is the reverse, one child at a time, each given SIGTERM and its own grace
period (STOP_GRACE_S) before SIGKILL: Envoy (no new requests), dispatchers (their
in-flight attempts end; waiting retries stay in the outbox), workers (they finish their
in-flight jobs while NATS is still up), APIs, nats-server last. Ctrl-C or SIGTERM
stops the stack; so does a child that dies on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import textwrap
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from imagejobs import gateway
from imagejobs.config import Settings
from imagejobs.domain.errors import ConfigError
from imagejobs.runtime import natsd
from imagejobs.runtime.binaries import imagejobs_command

READY_TIMEOUT_S = 30.0  # one child, from spawn to ready
READY_POLL_S = 0.1
PUMP_DRAIN_S = 2.0  # to copy a dead child's last output into its log
LAST_LINES = 20  # of a dead child's log, in the error
STOP_GRACE_S = {"gateway": 5.0, "api": 10.0, "worker": 40.0, "dispatcher": 20.0, "nats": 10.0}

Check = Callable[[], Awaitable[bool]]


class StartFailed(RuntimeError):
    """A child exited while the stack was starting (the message names it and quotes
    the end of its log)."""


@dataclass
class Child:
    """One process of the stack: `name` is its log's name, `role` picks its grace."""

    name: str
    role: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None


async def _pump(child: Child, log_path: Path, echo: bool) -> None:
    """Copy the child's output, line by line, to its log (and the console if `echo`)."""
    assert child.process is not None
    assert child.process.stdout is not None
    with log_path.open("ab") as log:
        async for line in child.process.stdout:
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.write(f"[{child.name}] {line.decode(errors='replace')}")
                sys.stdout.flush()


def tcp_accepts(host: str, port: int) -> Check:
    """A check: does something accept TCP connections on host:port?"""

    async def accepts() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        writer.close()
        return True

    return accepts


def http_ok(client: httpx.AsyncClient, url: str) -> Check:
    """A check: does GET `url` answer 200 (within 2 s)?"""

    async def ok() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(url, timeout=2)).status_code == 200
        return False

    return ok


def log_contains(path: Path, needle: str) -> Check:
    """A check: does the log file `path` contain `needle` yet?"""

    def contains() -> bool:
        return path.exists() and needle in path.read_text(errors="replace")

    return lambda: asyncio.to_thread(contains)


def last_lines(path: Path, count: int = LAST_LINES) -> str:
    """The last `count` lines of a log file, indented, or a note that it is empty."""
    if not path.exists():
        return "  (no output)"
    with path.open(errors="replace") as f:
        tail = "".join(deque(f, maxlen=count)).rstrip()
    return textwrap.indent(tail, "  ") if tail else "  (no output)"


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


class Supervisor:
    """Starts and stops the children of `imagejobs up` (order: module docstring).

    `config_path` is the settings file `settings` were read from (None: none); every
    child is given it. `echo` copies the children's output to our stdout."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | os.PathLike[str] | None = None,
        start_nats: bool = True,
        echo: bool = True,
    ) -> None:
        self.settings = settings
        self.config_path = Path(config_path).resolve() if config_path else None
        self.start_nats = start_nats
        self.echo = echo
        self.data_dir = Path(settings.data_dir).resolve()
        self.log_dir = self.data_dir / "logs"
        self.children: list[Child] = []

    def child_env(self) -> dict[str, str]:
        """Our environment, plus what every child must agree on: the config file (ours
        wins over an inherited IMAGEJOBS_CONFIG) and the settings given on our command
        line (environment variables outrank the file)."""
        s = self.settings
        env = dict(os.environ)
        env.pop("IMAGEJOBS_CONFIG", None)
        if self.config_path is not None:
            env["IMAGEJOBS_CONFIG"] = str(self.config_path)
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

    def log_path(self, child: Child) -> Path:
        return self.log_dir / f"{child.name}.log"

    async def spawn(self, child: Child) -> Child:
        """Start `child` (in its own session, with child_env()) and its log pump; no wait."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.child_env(),
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        child.pump = asyncio.create_task(_pump(child, self.log_path(child), self.echo))
        self.children.append(child)
        return child

    async def exit_report(self, child: Child) -> str:
        """'<name> exited with code N; its last log lines: …' for a child that exited
        (waits up to PUMP_DRAIN_S for its last output to reach the log)."""
        if child.pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(child.pump), PUMP_DRAIN_S)
        rc = child.process.returncode if child.process else None
        return (
            f"{child.name} exited with code {rc}; its last log lines "
            f"({self.log_path(child)}):\n{last_lines(self.log_path(child))}"
        )

    async def wait_ready(self, child: Child, check: Check, what: str) -> None:
        """Until `check()` holds. StartFailed as soon as any child has exited;
        TimeoutError naming `what` (and quoting `child`'s log) after READY_TIMEOUT_S."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not await check():
            for c in self.children:
                if c.process is not None and c.process.returncode is not None:
                    raise StartFailed(f"while starting: {await self.exit_report(c)}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what} after {READY_TIMEOUT_S:g} s; {child.name}'s last log lines:\n"
                    f"{last_lines(self.log_path(child))}"
                )
            await asyncio.sleep(READY_POLL_S)

    async def start(self) -> None:
        """Start every child in order, each ready before the next (module docstring).
        On an exception, call stop(): what was started is still running."""
        if self.start_nats:
            await self._start_nats()
        await self._start_apis()
        for i in range(self.settings.worker_processes):
            await self._start_worker(f"worker-{i + 1}")
        if self.settings.webhooks:
            for i in range(self.settings.dispatcher_processes):
                await self._start_worker(f"dispatcher-{i + 1}", "dispatcher")
        await self._start_gateway()

    async def _start_nats(self) -> None:
        port = self.settings.nats_port
        if not port_free("127.0.0.1", port):
            raise RuntimeError(f"port {port} is taken: is another nats-server running?")
        argv = natsd.command("127.0.0.1", port, self.data_dir / "nats")
        nats = await self.spawn(Child("nats", "nats", argv))
        await self.wait_ready(nats, tcp_accepts("127.0.0.1", port), "nats-server")

    async def _start_apis(self) -> None:
        ports = self.settings.all_api_ports
        apis = [
            await self.spawn(Child(f"api-{p}", "api", imagejobs_command("api", "--port", str(p))))
            for p in ports
        ]
        for api, port in zip(apis, ports, strict=True):
            ready = tcp_accepts(self.settings.api_host, port)
            await self.wait_ready(api, ready, f"no API on port {port}")

    async def _start_worker(self, name: str, role: str = "worker") -> None:
        """A worker or a dispatcher (`role`, its command): ready when its log says so."""
        worker = await self.spawn(Child(name, role, imagejobs_command(role)))
        ready = log_contains(self.log_path(worker), "ready")
        await self.wait_ready(worker, ready, f"{name} not ready")

    async def _start_gateway(self) -> None:
        s = self.settings
        config = gateway.render(s, self.data_dir / "gateway")
        envoy = await self.spawn(Child("gateway", "gateway", gateway.command(config)))
        url = f"http://{s.host}:{s.gateway_port}/health"
        async with httpx.AsyncClient() as client:
            await self.wait_ready(envoy, http_ok(client, url), f"{url} not healthy")

    async def stop(self) -> None:
        """Stop the children in reverse start order, each SIGTERM then, after its grace
        period, SIGKILL; then wait briefly for their output to reach the logs."""
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
                    await asyncio.wait_for(child.pump, PUMP_DRAIN_S)

    async def wait_any_exit(self) -> Child:
        """The first child to exit (blocks until one does)."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self.children if c.process}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[next(iter(done))]


async def _serve(sup: Supervisor, stop: asyncio.Event) -> int:
    """Start, then run until `stop` is set (0) or a child dies (1)."""
    await sup.start()
    s = sup.settings
    print(
        f"imagejobs is ready: REST and gRPC on http://{s.host}:{s.gateway_port} "
        f"(API on {', '.join(map(str, s.all_api_ports))}, NATS on {s.nats_port}); "
        f"logs in {sup.log_dir}. Ctrl-C stops.",
        flush=True,
    )
    stopper = asyncio.create_task(stop.wait())
    died = asyncio.create_task(sup.wait_any_exit())
    try:
        await asyncio.wait({stopper, died}, return_when=asyncio.FIRST_COMPLETED)
        if not died.done():
            return 0
        print(f"{await sup.exit_report(died.result())}\nstopping", file=sys.stderr, flush=True)
        return 1
    finally:
        stopper.cancel()
        died.cancel()


async def run_up(settings: Settings, config_path: str | os.PathLike[str] | None = None) -> int:
    """Start everything, wait for Ctrl-C or a component's death, stop everything.
    `config_path`: the settings file `settings` came from, handed to every child.
    Returns the exit code: 0 after Ctrl-C/SIGTERM, 1 if the start failed or a child died."""
    sup = Supervisor(settings, config_path=config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 1
    try:
        code = await _serve(sup, stop)
    except (TimeoutError, RuntimeError, OSError, ConfigError) as exc:
        print(f"imagejobs up failed: {exc}\n(logs in {sup.log_dir})", file=sys.stderr, flush=True)
    finally:
        print("stopping…", flush=True)
        await sup.stop()
        print("stopped", flush=True)
    return code
