"""Processes and ports for tests and benchmarks: free loopback ports, readiness polls with
deadlines, Prometheus scrapes, a small TOML writer for test configs, and stopping
processes (SIGTERM, then SIGKILL). Nothing here imports pytest at module level."""

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

from imagejobs.domain.errors import ConfigError
from imagejobs.runtime.binaries import find_binary

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
