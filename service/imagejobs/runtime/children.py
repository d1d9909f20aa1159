"""The children of `imagejobs up`, one at a time: spawning one with its log pump, the
readiness checks the start waits on, a dead child's last words, and the restart policy
for a child that dies after the start.

A restarted child waits `RestartPolicy.delay_s()` first: 1 s, doubling up to 30 s while
it keeps dying, back to 1 s once it has stayed up for `STABLE_S` (as systemd's and
Docker's restart policies do, so a crash loop neither spins nor gives up).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import textwrap
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LAST_LINES = 20  # of a dead child's log, in the error
FIRST_RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STABLE_S = 60.0  # a child up this long counts as healthy again: its next restart is quick

Check = Callable[[], Awaitable[bool]]


@dataclass
class RestartPolicy:
    """Backoff between restarts of one child (module docstring); times in seconds."""

    first_s: float = FIRST_RESTART_DELAY_S
    max_s: float = MAX_RESTART_DELAY_S
    stable_s: float = STABLE_S
    _next_s: float = 0.0

    def delay_s(self, ran_s: float) -> float:
        """The wait before restarting a child that exited after running `ran_s` seconds."""
        if ran_s >= self.stable_s or not self._next_s:
            self._next_s = self.first_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


@dataclass
class Child:
    """One process of the stack: `name` is its log's name, `role` picks its grace.
    `restarts` counts how often it was restarted after dying."""

    name: str
    role: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    restarts: int = 0
    started_at: float = 0.0  # monotonic time of its latest spawn
    policy: RestartPolicy = field(default_factory=RestartPolicy)

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None


async def pump(child: Child, log_path: Path, echo: bool) -> None:
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
