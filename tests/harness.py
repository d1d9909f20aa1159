"""Real processes for tests: nats-server, API servers, workers and Envoy on free loopback
ports, each logging to a file under the test's temp dir. Every wait has a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from imagejobs import gateway
from imagejobs.config import load_settings
from imagejobs.runtime import natsd

START_TIMEOUT_S = 30.0


def require_binary(name: str) -> None:
    """Fail in CI (binaries are part of the install); skip locally if missing."""
    import pytest
    from imagejobs.domain.errors import ConfigError
    from imagejobs.runtime.binaries import find_binary

    try:
        find_binary(name, name)
    except ConfigError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI")
        pytest.skip(f"{name} not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def toml_value(value: Any) -> str:
    """A TOML literal: scalars as JSON, lists as arrays, dicts as inline tables."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def to_toml(values: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for test configs (scalars, lists of scalars, nested tables)."""
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {toml_value(value)}")
    out = ""
    if prefix:
        out += f"[{prefix}]\n"
    out += "\n".join(lines) + "\n"
    for key, table in tables:
        name = f"{prefix}.{key}" if prefix else key
        out += to_toml(table, name)
    return out


class Stack:
    """nats-server + API + workers + Envoy. `config` is written as the TOML settings file."""

    def __init__(
        self,
        root: Path,
        config: dict[str, Any] | None = None,
        *,
        workers: int = 1,
        apis: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.extra_env = env or {}
        self.root.mkdir(parents=True, exist_ok=True)
        self.nats_port = free_port()
        self.api_ports = [free_port() for _ in range(apis)]
        self.gateway_port = free_port()
        self.admin_port = free_port()
        self.worker_count = workers
        values = {
            "nats_port": self.nats_port,
            "api_port": self.api_ports[0],
            "api_ports": self.api_ports,  # the gateway routes to every one
            "gateway_port": self.gateway_port,
            "gateway_admin_port": self.admin_port,
            "data_dir": str(root / "data"),
            "ack_wait_s": 2.0,
            **(config or {}),
        }
        self.config_path = root / "imagejobs.toml"
        self.config_path.write_text(to_toml(values))
        self.settings = load_settings(self.config_path)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._worker_seq = 0

    # --- processes ------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEJOBS_")}
        env["IMAGEJOBS_CONFIG"] = str(self.config_path)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def spawn(
        self, name: str, argv: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        env = self.env() | (extra_env or {})
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_nats(self) -> None:
        self.spawn("nats", natsd.command("127.0.0.1", self.nats_port, self.root / "data" / "nats"))
        wait_until(lambda: tcp_open(self.nats_port), START_TIMEOUT_S, "nats-server")

    def start_api(
        self, port: int, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """An API process on `port` (not in the gateway's cluster unless in api_ports)."""
        name = f"api-{port}"
        argv = [sys.executable, "-m", "imagejobs", "api", "--port", str(port)]
        proc = self.spawn(name, argv, extra_env)
        wait_until(
            lambda: tcp_open(port) or proc.poll() is not None, START_TIMEOUT_S, f"api {port}"
        )
        assert proc.poll() is None, self.log(name)
        return proc

    def start_worker(self) -> tuple[str, subprocess.Popen[bytes]]:
        self._worker_seq += 1
        name = f"worker-{self._worker_seq}"
        proc = self.spawn(name, [sys.executable, "-m", "imagejobs", "worker"])
        wait_until(
            lambda: "ready" in self.log(name) or proc.poll() is not None, START_TIMEOUT_S, name
        )
        assert proc.poll() is None, self.log(name)
        return name, proc

    def start_gateway(self) -> None:
        config = gateway.render(self.settings, self.root / "gateway")
        self.spawn("gateway", gateway.command(config))
        wait_until(self.healthy, START_TIMEOUT_S, "gateway /health")

    def healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        return False

    def start(self) -> Stack:
        self.start_nats()
        for port in self.api_ports:
            self.start_api(port)
        for _ in range(self.worker_count):
            self.start_worker()
        self.start_gateway()
        return self

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "nats"):  # nats last
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart_nats(self) -> None:
        proc = self.procs["nats"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        self.start_nats()

    # --- addresses ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def grpc_gateway(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    @property
    def grpc_direct(self) -> str:
        return f"127.0.0.1:{self.api_ports[0]}"
