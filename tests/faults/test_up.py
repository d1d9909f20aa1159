"""`imagejobs up` as a user runs it: the whole stack from one command, on free ports.

It passes `--config FILE` to every process it starts (a setting only the API can honour
and a key policy only the API enforces, both seen through the gateway); it starts a
webhook dispatcher when endpoints are configured; it stops everything on Ctrl-C; and
when a child dies while starting (Envoy on a busy admin port) it fails at once, naming
the child and showing its last log lines, and leaves nothing running. With
`--nats-nodes 3` it runs a 3-node JetStream cluster (every stream on 3 replicas), and a
child that dies after the start is restarted, not the whole stack stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import nats
import pytest
from imagejobs.domain import constants
from imagejobs.runtime.binaries import imagejobs_command
from imagejobs.testing import (
    free_port,
    free_port_run,
    require_binary,
    tcp_open,
    to_toml,
    wait_until,
)
from imagejobs.webhooks.signing import new_secret

from tests.conftest import assert_error_body, mock_request, submit, wait_terminal
from tests.fakes.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

UP_READY_TIMEOUT_S = 60.0  # nats + API + workers + Envoy on a busy 2-core machine
UP_STOP_TIMEOUT_S = 30.0  # workers drain, then the rest stops
KEY = "sk-bf-up-test-0123456789abcdef"


@dataclass
class Up:
    """One `imagejobs … up` process; its stdout and stderr go to two files."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_until(
            lambda: "imagejobs is ready" in self.output() or self.proc.poll() is not None,
            UP_READY_TIMEOUT_S,
            "imagejobs up",
        )
        assert self.proc.poll() is None, self.output()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Start `imagejobs [--config FILE] up …` with no IMAGEJOBS_* from our environment
    (plus `env`); kills whatever is still running at the end of the test."""
    started: list[Up] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> Up:
        base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEJOBS_")}
        n = len(started)
        up = Up(
            subprocess.Popen(
                imagejobs_command(*argv),
                stdout=(tmp_path / f"up-{n}.out").open("wb"),
                stderr=(tmp_path / f"up-{n}.err").open("wb"),
                env=base | (env or {}),
                cwd=tmp_path,
            ),
            tmp_path / f"up-{n}.out",
            tmp_path / f"up-{n}.err",
        )
        started.append(up)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.proc.terminate()  # `up` stops its children, in reverse order
            try:
                up.proc.wait(timeout=UP_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()
    # children of an `up` that was killed (or a test killed) run in sessions of their own
    for pid in processes_mentioning(str(tmp_path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def processes_mentioning(marker: str) -> list[int]:
    """Live processes whose command line or environment contains `marker` (the test's
    data dir: every child of `up` gets it in IMAGEJOBS_DATA_DIR)."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in text:
            found.append(int(entry.name))
    return found


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_up_with_config_passes_the_file_to_every_child(
    tmp_path: Path, launch: Callable[..., Up]
) -> None:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    gateway_port, api_port, nats_port = free_port(), free_port(), free_port()
    config = tmp_path / "f.toml"
    config.write_text(
        to_toml(
            {
                "gateway_port": gateway_port,
                "gateway_admin_port": free_port(),
                "api_port": api_port,
                "nats_port": nats_port,
                "data_dir": str(tmp_path / "d"),
                "default_ttl_s": 1234,  # the API stamps expires_at with it
                "require_virtual_key": True,  # the API refuses anonymous calls
                "virtual_keys": {"x": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
            }
        )
    )
    # An inherited IMAGEJOBS_CONFIG naming another file: --config must win over it.
    other = tmp_path / "other.toml"
    other.write_text(to_toml({"default_ttl_s": 99}))
    up = launch(
        ["--config", config.name, "up", "--workers", "1"],  # relative: up's cwd is tmp_path
        {"IMAGEJOBS_CONFIG": str(other)},
    )
    try:
        up.wait_ready()
        url = f"http://127.0.0.1:{gateway_port}"
        with httpx.Client(base_url=url, timeout=30) as anonymous:
            assert_error_body(submit(anonymous, mock_request()), 401)
        with httpx.Client(base_url=url, timeout=30, headers={"x-bf-vk": KEY}) as keyed:
            r = submit(keyed, mock_request("keyed"))
            assert r.status_code == 202, r.text
            job = wait_terminal(keyed, r.json()["id"]).json()
        assert job["status"] == "completed", job
        assert ts(job["expires_at"]) - ts(job["completed_at"]) == pytest.approx(1234, abs=0.01)
        assert "running OPEN" not in (tmp_path / "d" / "logs" / f"api-{api_port}.log").read_text()
    finally:
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=60) == 0, up.output()
    for port in (gateway_port, api_port, nats_port):
        assert not tcp_open(port)


def test_up_starts_everything_and_ctrl_c_stops_it(
    tmp_path: Path, launch: Callable[..., Up]
) -> None:
    require_binary("nats-server")
    require_binary("envoy")
    ports = {"--gateway-port": free_port(), "--api-port": free_port(), "--nats-port": free_port()}
    argv = ["up", "--data-dir", str(tmp_path / "d")]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    argv += ["--workers", "2"]
    up = launch(argv, {"IMAGEJOBS_GATEWAY_ADMIN_PORT": str(free_port())})
    up.wait_ready()
    base = f"http://127.0.0.1:{ports['--gateway-port']}"
    with httpx.Client(base_url=base, timeout=30) as client:
        r = submit(client, {"model": "mock/m", "prompt": "via up", "size": "16x16"})
        assert wait_terminal(client, r.json()["id"]).json()["status"] == "completed"
    logs = sorted(p.name for p in (tmp_path / "d" / "logs").iterdir())
    assert logs == sorted(
        [
            "nats.log",
            f"api-{ports['--api-port']}.log",
            "worker-1.log",
            "worker-2.log",
            "gateway.log",
        ]
    )
    started = time.monotonic()
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0
    assert time.monotonic() - started < 60
    for port in ports.values():
        assert not tcp_open(port)


def test_up_fails_at_once_naming_a_child_that_died_while_starting(
    tmp_path: Path, launch: Callable[..., Up]
) -> None:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    data_dir = tmp_path / "d"
    ports = {"--gateway-port": free_port(), "--api-port": free_port(), "--nats-port": free_port()}
    argv = ["up", "--data-dir", str(data_dir), "--workers", "1"]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    with socket.socket() as busy:  # Envoy's admin port, held by us: Envoy exits at once
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        admin_port = busy.getsockname()[1]
        up = launch(argv, {"IMAGEJOBS_GATEWAY_ADMIN_PORT": str(admin_port)})
        # Everything before Envoy starts normally; from then on, `up` must not wait for
        # the 30 s health timeout but notice Envoy's exit.
        wait_until(
            lambda: "[worker-1]" in up.output() or up.proc.poll() is not None,
            UP_READY_TIMEOUT_S,
            "the worker's start",
        )
        started = time.monotonic()
        code = up.proc.wait(timeout=45)  # past the old 30 s wait: a clear failure below
        took = time.monotonic() - started
    err = up.stderr.read_text(errors="replace")
    assert code != 0, up.output()
    assert took < 10, f"{took:.1f} s: {up.output()}"
    assert "gateway" in err and "exited" in err, err
    assert f"cannot bind '127.0.0.1:{admin_port}': Address already in use" in err, err
    assert "imagejobs is ready" not in up.output()
    wait_until(lambda: not processes_mentioning(str(data_dir)), 5, "no child left running")
    for port in ports.values():
        assert not tcp_open(port)


def test_up_with_webhooks_starts_a_dispatcher_that_delivers(
    tmp_path: Path, launch: Callable[..., Up]
) -> None:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    secret = new_secret()
    gateway_port = free_port()
    with WebhookReceiver({"orders": [secret]}) as receiver:
        config = tmp_path / "hooks.toml"
        hook = {
            "name": "orders",
            "url": f"{receiver.url}/orders",
            "secret_env": "ORDERS_SECRET",
            "allow_private_network": True,
        }
        settings = {
            "gateway_port": gateway_port,
            "gateway_admin_port": free_port(),
            "api_port": free_port(),
            "nats_port": free_port(),
            "data_dir": str(tmp_path / "d"),
            "webhooks": [hook],
        }
        config.write_text(to_toml(settings))
        up = launch(["--config", str(config), "up"], {"ORDERS_SECRET": secret})
        try:
            up.wait_ready()
            with httpx.Client(base_url=f"http://127.0.0.1:{gateway_port}", timeout=30) as client:
                r = submit(client, mock_request("hooked"), **{"x-bf-async-webhook": "orders"})
                assert r.status_code == 202, r.text
                webhook_id = f"{r.json()['id']}.async_job.completed"
                [got] = wait_until(lambda: receiver.of(webhook_id), 30, webhook_id)
            assert got.verified_by == (0,)
            assert (tmp_path / "d" / "logs" / "dispatcher-1.log").exists()
        finally:
            up.proc.send_signal(signal.SIGINT)
            assert up.proc.wait(timeout=60) == 0, up.output()


def test_up_with_three_nats_nodes_runs_a_cluster_and_restarts_a_worker_that_dies(
    tmp_path: Path, launch: Callable[..., Up]
) -> None:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    data = tmp_path / "d"
    gateway, nats_port = free_port(), free_port_run(3)
    argv = ["up", "--data-dir", str(data), "--gateway-port", str(gateway)]
    argv += ["--api-port", str(free_port()), "--nats-port", str(nats_port), "--nats-nodes", "3"]
    env = {
        "IMAGEJOBS_GATEWAY_ADMIN_PORT": str(free_port()),
        "IMAGEJOBS_NATS_CLUSTER_PORT": str(free_port_run(3)),
        "IMAGEJOBS_NATS_HTTP_PORT": str(free_port_run(3)),
    }
    up = launch(argv, env)
    up.wait_ready()
    assert sorted(p.name for p in (data / "nats").iterdir()) == ["nats-1", "nats-2", "nats-3"]
    for i in range(3):
        assert tcp_open(nats_port + i)
    replicas = asyncio.run(stream_replicas(nats_port, constants.QUEUE_STREAM))
    assert replicas == 3
    body = {"model": "mock/m", "prompt": "on a cluster", "size": "16x16"}
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway}", timeout=30) as client:
        first = submit(client, body).json()["id"]
        assert wait_terminal(client, first).json()["status"] == "completed"
        [worker] = [p for p in processes_mentioning(str(data)) if b"worker" in cmdline(p)]
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: "worker-1 restarted" in up.output(), 30, "the worker's restart")
        assert "worker-1 exited with code -9; restarting in 1 s" in up.output()
        assert up.proc.poll() is None  # the rest of the stack kept running
        second = submit(client, body).json()["id"]
        assert wait_terminal(client, second).json()["status"] == "completed"


async def stream_replicas(nats_port: int, stream: str) -> int:
    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
    try:
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
    return int(info.config.num_replicas or 0)


def cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""
