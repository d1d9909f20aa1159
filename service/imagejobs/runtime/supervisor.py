"""`imagejobs up`: the whole stack on one machine, in the foreground, supervised.

Start order; each child is ready before the next one starts:

1. nats-server node(s) `nats_nodes` of them (runtime/natsd.py): one node is ready when it
                      accepts TCP on `nats_port`; a cluster's nodes start together (they
                      elect a meta leader among themselves) and each is ready when its
                      monitoring /healthz answers 200
2. API process(es)    all spawned at once; each ready when it accepts TCP on its port
3. worker process(es) one at a time; ready when its log says "ready"
4. webhook dispatcher(s), when `[[webhooks]]` are configured: as workers
5. Envoy (gateway)    ready when its /health answers 200 (it checks the APIs)

While waiting, a child that has exited fails the start at once (`StartFailed`, naming
it and showing its last log lines) instead of waiting out READY_TIMEOUT_S. Every child
gets the config file `up` read (IMAGEJOBS_CONFIG, absolute), so it sees the same keys,
providers and quotas, and every NATS URL. Each child's output goes to
`<data_dir>/logs/<name>.log` and, prefixed with its name, to the console.

Once started, the stack is supervised: a child that dies is logged (`[up] <name> exited
with code N; restarting in D s`) and restarted with the same command, after a backoff
(runtime/children.py: 1 s doubling to 30 s, reset once it stays up a minute); the rest of
the stack keeps running.

Stop order is the reverse, one child at a time, each given SIGTERM and its own grace
period (STOP_GRACE_S) before SIGKILL: Envoy (no new requests), dispatchers (their
in-flight attempts end; waiting retries stay in the outbox), workers (they finish their
in-flight jobs while NATS is still up), APIs, nats-server last. Ctrl-C or SIGTERM stops
the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from imagejobs import gateway
from imagejobs.config import Settings
from imagejobs.domain.errors import ConfigError
from imagejobs.runtime import natsd
from imagejobs.runtime.binaries import imagejobs_command
from imagejobs.runtime.children import (
    Check,
    Child,
    http_ok,
    last_lines,
    log_contains,
    port_free,
    pump,
    tcp_accepts,
)

__all__ = ["Child", "StartFailed", "Supervisor", "run_up"]

READY_TIMEOUT_S = 30.0  # one child, from spawn to ready
READY_POLL_S = 0.1
PUMP_DRAIN_S = 2.0  # to copy a dead child's last output into its log
STOP_GRACE_S = {"gateway": 5.0, "api": 10.0, "worker": 40.0, "dispatcher": 20.0, "nats": 10.0}


class StartFailed(RuntimeError):
    """A child exited while the stack was starting (the message names it and quotes
    the end of its log)."""


class Supervisor:
    """Starts, supervises and stops the children of `imagejobs up` (module docstring).

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
        self.nats_nodes = natsd.local_cluster(settings, self.data_dir)
        self.children: list[Child] = []
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

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
                "IMAGEJOBS_STREAM_REPLICAS": str(s.replicas),
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
        """Start `child` (in its own session, with child_env()) and its log pump; no wait.
        A child spawned again (a restart) keeps its place and its log."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.child_env(),
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        child.started_at = time.monotonic()
        child.pump = asyncio.create_task(pump(child, self.log_path(child), self.echo))
        if child not in self.children:
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
                if c.exited:
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

    def nats_log_name(self, node: natsd.NatsNode) -> str:
        return node.name if len(self.nats_nodes) > 1 else "nats"

    async def _start_nats(self) -> None:
        for node in self.nats_nodes:
            for port in (node.port, node.cluster_port, node.http_port):
                if port and not port_free("127.0.0.1", port):
                    raise RuntimeError(
                        f"port {port} is taken ({node.name}): is another nats-server running?"
                    )
        started = [
            (node, await self.spawn(Child(self.nats_log_name(node), "nats", natsd.command(node))))
            for node in self.nats_nodes
        ]
        async with httpx.AsyncClient() as client:
            for node, child in started:
                ready = (
                    http_ok(client, node.healthz_url)
                    if node.healthz_url
                    else tcp_accepts("127.0.0.1", node.port)
                )
                await self.wait_ready(child, ready, f"nats-server {node.name}")

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

    # --- after the start ---------------------------------------------------------------

    def supervise(self) -> None:
        """From now on, restart every child that dies (module docstring)."""
        self._watchers = [asyncio.create_task(self._keep_running(c)) for c in self.children]

    async def _keep_running(self, child: Child) -> None:
        while child.process is not None:
            code = await child.process.wait()
            if self._stopping.is_set():
                return
            delay = child.policy.delay_s(time.monotonic() - child.started_at)
            child.restarts += 1
            print(
                f"[up] {child.name} exited with code {code}; restarting in {delay:g} s "
                f"(restart {child.restarts}); its last log lines:\n"
                f"{last_lines(self.log_path(child), 5)}",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            await self.spawn(child)
            print(f"[up] {child.name} restarted", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        """Stop supervising, then stop the children in reverse start order, each SIGTERM
        then, after its grace period, SIGKILL; then wait briefly for their output to
        reach the logs."""
        self._stopping.set()
        for watcher in self._watchers:
            watcher.cancel()
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


def _ready_line(sup: Supervisor) -> str:
    s = sup.settings
    nats = ", ".join(str(n.port) for n in sup.nats_nodes)
    cluster = f" (a cluster of {len(sup.nats_nodes)})" if len(sup.nats_nodes) > 1 else ""
    return (
        f"imagejobs is ready: REST and gRPC on http://{s.host}:{s.gateway_port} "
        f"(API on {', '.join(map(str, s.all_api_ports))}, NATS on {nats}{cluster}, "
        f"streams with {s.replicas} replica{'s' if s.replicas > 1 else ''}); "
        f"logs in {sup.log_dir}. Ctrl-C stops."
    )


async def run_up(settings: Settings, config_path: str | os.PathLike[str] | None = None) -> int:
    """Start everything, supervise it until Ctrl-C/SIGTERM, stop everything.
    `config_path`: the settings file `settings` came from, handed to every child.
    Returns the exit code: 0 after Ctrl-C/SIGTERM, 1 if the start failed."""
    sup = Supervisor(settings, config_path=config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 1
    try:
        await sup.start()
        print(_ready_line(sup), flush=True)
        sup.supervise()
        await stop.wait()
        code = 0
    except (TimeoutError, RuntimeError, OSError, ConfigError) as exc:
        print(f"imagejobs up failed: {exc}\n(logs in {sup.log_dir})", file=sys.stderr, flush=True)
    finally:
        print("stopping…", flush=True)
        await sup.stop()
        print("stopped", flush=True)
    return code
