"""Real processes for tests and benchmarks: nats-server, API servers, workers and Envoy on
free loopback ports, each logging to a file under one root directory.

Shared by `tests/` and `bench/` (and usable by anyone testing against a local stack).
`Stack` starts in the same order as `imagejobs up` (nats-server -> APIs -> workers ->
Envoy, each ready before the next) but keeps a synchronous handle on every process, so
a test can kill -9 a worker or restart nats-server. Every wait has a deadline. Nothing
here imports pytest at module level: this module ships in the wheel.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from imagejobs import gateway
from imagejobs.config import Settings, load_settings
from imagejobs.domain.errors import ConfigError
from imagejobs.runtime import natsd
from imagejobs.runtime.binaries import find_binary, imagejobs_command

START_TIMEOUT_S = 30.0  # one process, from spawn to ready
STOP_TIMEOUT_S = 15.0  # one process, from SIGTERM to exit (then SIGKILL)

T = TypeVar("T")

# One Prometheus scrape: (metric name, its labels) -> value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# A settings table as to_toml writes it: scalars, lists, and nested tables as dicts.
TomlTable = Mapping[str, object]


def require_binary(name: str) -> None:
    """Under pytest: fail in CI (the binaries are part of the install), skip locally if
    `name` is missing. Imports pytest when called, not when this module is imported."""
    import pytest

    try:
        find_binary(name, name)
    except ConfigError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI")
        pytest.skip(f"{name} not installed")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (from the kernel's ephemeral range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(length: int, tries: int = 200) -> int:
    """A base port with `length` consecutive free ports from it, below the kernel's
    ephemeral range (where every `free_port()` comes from), so none of them can take one."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(10_000, max(low, 10_001 + length) - length)
        if all(_bindable(base + i) for i in range(length)):
            return base
    raise RuntimeError(f"no run of {length} free ports in {tries} tries")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """Whether GET `url` answers 200 within `timeout_s` seconds."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=timeout_s).status_code == 200
    return False


def scrape(port: int, timeout_s: float = 5.0) -> Samples:
    """Every sample that the /metrics endpoint on loopback `port` serves now."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll `check` every `interval_s` seconds until it returns something truthy, and
    return that; AssertionError naming `what` after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def toml_key(key: str) -> str:
    """A TOML key: bare when it can be, else quoted (`"together/org/model"`)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: object) -> str:
    """A TOML literal: scalars as JSON, lists as arrays, dicts as inline tables."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def to_toml(values: TomlTable, prefix: str = "") -> str:
    """A small TOML writer for test configs (scalars, lists of scalars, nested tables)."""
    lines: list[str] = []
    tables: list[tuple[str, TomlTable]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    out = f"[{prefix}]\n" if prefix else ""
    out += "\n".join(lines) + "\n"
    for key, table in tables:
        out += to_toml(table, f"{prefix}.{key}" if prefix else key)
    return out


def terminate(procs: Iterable[subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every live process at once, then wait for each, up to `timeout_s` seconds
    apiece; one still running then is killed (SIGKILL). Returns when all have exited."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stack:
    """nats-server + API + workers + Envoy. `config` is written as the TOML settings file
    `root/imagejobs.toml`, which every process reads (IMAGEJOBS_CONFIG); logs go to
    `root/<name>.log`, the NATS store to `root/data/nats`."""

    def __init__(
        self,
        root: Path,
        config: TomlTable | None = None,
        *,
        workers: int = 1,
        apis: int = 1,
        dispatchers: int | None = None,
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
        self.settings: Settings = load_settings(self.config_path)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._seq: dict[str, int] = {}  # workers and dispatchers started, by command
        # webhook dispatchers: one when endpoints are configured, unless told otherwise
        self.dispatcher_count = (
            dispatchers if dispatchers is not None else (1 if self.settings.webhooks else 0)
        )

    # --- processes ------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The children's environment: ours without any IMAGEJOBS_* (so the config file
        alone decides), plus the config path and `env` given to the constructor."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEJOBS_")}
        env["IMAGEJOBS_CONFIG"] = str(self.config_path)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def spawn(
        self,
        name: str,
        argv: list[str],
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` as `name` (its output appended to `root/<name>.log`); no wait."""
        env = self.env() | (extra_env or {})
        with (self.root / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        """Everything `name` has written so far ('' before it started)."""
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
        proc = self.spawn(name, imagejobs_command("api", "--port", str(port)), extra_env)
        wait_until(
            lambda: tcp_open(port) or proc.poll() is not None, START_TIMEOUT_S, f"api {port}"
        )
        assert proc.poll() is None, self.log(name)
        return proc

    def start_worker(
        self, extra_env: dict[str, str] | None = None
    ) -> tuple[str, subprocess.Popen[bytes]]:
        """One more worker, `worker-<n>`, returned once its log says it is ready."""
        return self._start_numbered("worker", extra_env)

    def start_dispatcher(
        self, extra_env: dict[str, str] | None = None
    ) -> tuple[str, subprocess.Popen[bytes]]:
        """One more webhook dispatcher, `dispatcher-<n>`, returned once it is ready."""
        return self._start_numbered("dispatcher", extra_env)

    def _start_numbered(
        self, command: str, extra_env: dict[str, str] | None
    ) -> tuple[str, subprocess.Popen[bytes]]:
        self._seq[command] = self._seq.get(command, 0) + 1
        name = f"{command}-{self._seq[command]}"
        proc = self.spawn(name, imagejobs_command(command), extra_env)
        wait_until(
            lambda: "ready" in self.log(name) or proc.poll() is not None, START_TIMEOUT_S, name
        )
        assert proc.poll() is None, self.log(name)
        return name, proc

    def start_gateway(self) -> None:
        """Envoy on gateway_port in front of every API in api_ports."""
        self._envoy("gateway", self.settings, None)

    def start_envoy(self, name: str, api_ports: list[int]) -> int:
        """Another Envoy from the same template, in front of `api_ports` only, on a free
        port (returned), once its /health answers 200."""
        settings = self.settings.model_copy(
            update={"gateway_port": free_port(), "gateway_admin_port": free_port()}
        )
        self._envoy(name, settings, [("127.0.0.1", p) for p in api_ports])
        return settings.gateway_port

    def _envoy(self, name: str, settings: Settings, hosts: list[tuple[str, int]] | None) -> None:
        config = gateway.render(settings, self.root / name, hosts)
        self.spawn(name, gateway.command(config))
        url = f"http://127.0.0.1:{settings.gateway_port}/health"
        wait_until(lambda: http_ok(url), START_TIMEOUT_S, f"{name} /health")

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/health")

    def start(self) -> Stack:
        """nats-server, then the APIs, then the workers and dispatchers, then Envoy; each
        one ready before the next starts. A test should call stop() even when start() raised."""
        self.start_nats()
        for port in self.api_ports:
            self.start_api(port)
        for _ in range(self.worker_count):
            self.start_worker()
        for _ in range(self.dispatcher_count):
            self.start_dispatcher()
        self.start_gateway()
        return self

    def stop(self) -> None:
        """Every process still running: all but nats-server first (so workers drain with
        NATS still up), then nats-server; SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        terminate(p for n, p in self.procs.items() if n != "nats")
        terminate(p for n, p in self.procs.items() if n == "nats")

    def restart_nats(self) -> None:
        """Stop nats-server (SIGTERM) and start it again on the same port and store."""
        proc = self.procs["nats"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT_S)
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
