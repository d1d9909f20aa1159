"""nats-server for the stack harness: one node, or a local cluster (`nats_nodes` > 1, the
very nodes `imagejobs up` starts: `runtime/natsd.py`), each node a process that a test can
kill -9, stop with SIGTERM and start again on its own store.

And what a fault test needs to know about the cluster, asked of JetStream itself: which
node leads a stream, whether every stream has a leader and all its replicas are current
again after a fault, and moving a stream's leadership to a chosen node (a stepdown with a
preferred server, nats-server >= 2.11).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.errors import Error as NatsError

from imagejobs.config import Settings
from imagejobs.runtime import natsd
from imagejobs.testing.processes import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    http_ok,
    tcp_open,
    wait_until,
)

T = TypeVar("T")
Spawn = Callable[[str, list[str]], subprocess.Popen[bytes]]
JS_TIMEOUT_S = 2.0  # one JetStream API request of the harness


class NatsNodes:
    """The nats-server node(s) of one stack, started through `spawn(name, argv)` (which
    logs them), named as `imagejobs up` names them: `nats` alone, `nats-<i>` in a
    cluster."""

    def __init__(self, settings: Settings, data_dir: Path, spawn: Spawn) -> None:
        nodes = natsd.local_cluster(settings, data_dir)
        # processes (and logs) are named as `imagejobs up` names them
        self.nodes = {(n.name if len(nodes) > 1 else "nats"): n for n in nodes}
        self._spawn = spawn
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def clustered(self) -> bool:
        return len(self.nodes) > 1

    @property
    def names(self) -> list[str]:
        return list(self.nodes)

    def running(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def ready(self, name: str) -> bool:
        """A clustered node answers its /healthz (JetStream current with the meta leader);
        a single node accepts TCP."""
        node = self.nodes[name]
        return http_ok(node.healthz_url) if node.healthz_url else tcp_open(node.port)

    def start(self, names: Iterable[str] | None = None, *, wait: bool = True) -> None:
        """Start the named nodes (all by default) on their stores; with `wait`, return once
        every one of them is ready."""
        chosen = list(names) if names is not None else self.names
        for name in chosen:
            self.procs[name] = self._spawn(name, natsd.command(self.nodes[name]))
        if wait:
            self.wait_ready(chosen)

    def wait_ready(self, names: Iterable[str], timeout_s: float = START_TIMEOUT_S) -> None:
        for name in names:
            proc = self.procs[name]

            def up(name: str = name, proc: subprocess.Popen[bytes] = proc) -> bool:
                return self.ready(name) or proc.poll() is not None

            wait_until(up, timeout_s, name)
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"

    def kill(self, name: str) -> None:
        """kill -9 the node (its store stays as the crash left it)."""
        self._signal(name, signal.SIGKILL)

    def stop(self, name: str) -> None:
        """SIGTERM: the node hands its leaderships over and exits."""
        self._signal(name, signal.SIGTERM)

    def _signal(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # --- what JetStream says ----------------------------------------------------------

    def _ask(self, call: Callable[[Any], Awaitable[T]]) -> T:
        """Run `call(nc)` on a connection to the running nodes."""

        async def run() -> T:
            servers = [self.nodes[n].client_url for n in self.running()]
            nc = await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=1)
            try:
                return await call(nc)
            finally:
                await nc.close()

        return asyncio.run(run())

    def _api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async def call(nc: Any) -> dict[str, Any]:
            reply = await nc.request(
                f"$JS.API.{subject}", json.dumps(body or {}).encode(), timeout=JS_TIMEOUT_S
            )
            answer: dict[str, Any] = json.loads(reply.data)
            return answer

        return self._ask(call)

    def stream_cluster(self, stream: str) -> dict[str, Any]:
        """The stream's `cluster` info (leader, replicas); {} when it did not answer."""
        try:
            info = self._api(f"STREAM.INFO.{stream}")
        except (TimeoutError, NatsError, OSError):
            return {}
        cluster: dict[str, Any] = info.get("cluster", {})
        return cluster

    def leader(self, stream: str) -> str:
        """The node leading `stream` ('' while it has none)."""
        return str(self.stream_cluster(stream).get("leader", ""))

    def streams(self) -> list[str]:
        return [str(n) for n in self._api("STREAM.NAMES").get("streams") or []]

    def all_current(self, streams: Iterable[str]) -> bool:
        """Whether each stream has a leader and every replica is current."""
        for stream in streams:
            cluster = self.stream_cluster(stream)
            if not cluster.get("leader"):
                return False
            if not all(r.get("current") for r in cluster.get("replicas") or []):
                return False
        return True

    def wait_current(self, timeout_s: float = 60.0) -> None:
        """Until every stream has a leader and all its replicas are current."""
        streams = self.streams()
        wait_until(
            lambda: self.all_current(streams), timeout_s, "every stream current", interval_s=0.25
        )

    def move_leader(self, stream: str, to: str, timeout_s: float = 30.0) -> None:
        """Make `to` the leader of `stream` (stepdowns with a preferred server)."""

        def moved() -> bool:
            if self.leader(stream) == to:
                return True
            with contextlib.suppress(TimeoutError, NatsError, OSError):
                self._api(f"STREAM.LEADER.STEPDOWN.{stream}", {"placement": {"preferred": to}})
            return False

        wait_until(moved, timeout_s, f"{to} leading {stream}", interval_s=0.5)
