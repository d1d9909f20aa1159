"""The stack harness: nats-server (one node, or a local cluster), API servers, workers and
Envoy on free loopback ports, each logging to a file under one root directory.

`Stack` starts in the same order as `imagejobs up` (nats-server -> APIs -> workers ->
Envoy, each ready before the next) but keeps a synchronous handle on every process, so
a test can kill -9 a worker or a NATS node, or restart nats-server. Every wait has a
deadline.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from imagejobs import gateway
from imagejobs.config import Settings, load_settings
from imagejobs.runtime.binaries import imagejobs_command
from imagejobs.testing.nats import NatsNodes
from imagejobs.testing.processes import (
    START_TIMEOUT_S,
    TomlTable,
    free_port,
    free_port_run,
    http_ok,
    tcp_open,
    terminate,
    to_toml,
    wait_until,
)


class Stack:
    """nats-server + API + workers + Envoy. `config` is written as the TOML settings file
    `root/imagejobs.toml`, which every process reads (IMAGEJOBS_CONFIG); logs go to
    `root/<name>.log`, the NATS store to `root/data/nats`. With `nats_nodes` > 1, a
    local JetStream cluster (`self.nats`, nodes `nats-1`…, stores under
    `root/data/nats/<node>`), every stream with min(nodes, 3) replicas."""

    def __init__(
        self,
        root: Path,
        config: TomlTable | None = None,
        *,
        workers: int = 1,
        apis: int = 1,
        dispatchers: int | None = None,
        env: dict[str, str] | None = None,
        nats_nodes: int = 1,
    ) -> None:
        self.root = root
        self.extra_env = env or {}
        self.root.mkdir(parents=True, exist_ok=True)
        self.nats_port = free_port() if nats_nodes == 1 else free_port_run(nats_nodes)
        cluster: dict[str, object] = {}
        if nats_nodes > 1:  # the route and monitoring ports, nats_nodes of each
            cluster = {
                "nats_nodes": nats_nodes,
                "nats_cluster_port": free_port_run(nats_nodes),
                "nats_http_port": free_port_run(nats_nodes),
            }
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
            **cluster,
            **(config or {}),
        }
        self.config_path = root / "imagejobs.toml"
        self.config_path.write_text(to_toml(values))
        self.settings: Settings = load_settings(self.config_path)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nats = NatsNodes(self.settings, root / "data", self.spawn)
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
        """Every NATS node, each ready (a cluster: every node current with its meta leader)."""
        self.nats.start()

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
        NATS still up), then the NATS node(s); SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        terminate(p for n, p in self.procs.items() if n not in self.nats.nodes)
        terminate(p for n, p in self.procs.items() if n in self.nats.nodes)

    def restart_nats(self) -> None:
        """Stop every NATS node (SIGTERM) and start them again on the same ports and stores."""
        for name in self.nats.names:
            self.nats.stop(name)
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
