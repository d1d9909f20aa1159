"""The `imagejobs` command. Server commands: `up` runs the whole local stack; `api`,
`worker`, `dispatcher` (webhooks), `gateway` and `nats` run one component each (for real
deployments, e.g. docker-compose.yml); `new-key`, `hash-key` and `new-webhook-secret`
make keys and secrets. Client commands
(`generate`, `edit`, `vary`, `get`, `watch`, `cancel`, `jobs`) talk to a running server
through the SDK: client_commands.py."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click

from imagejobs import __version__
from imagejobs.config import Settings, load_settings
from imagejobs.domain.errors import ConfigError, StoreUnavailable
from imagejobs.domain.keys import key_hash
from imagejobs.runtime import logs
from imagejobs.runtime.client_commands import COMMANDS as CLIENT_COMMANDS


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    try:
        settings = load_settings(ctx.obj.get("config"), **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logs.configure(settings)  # text or JSON lines (log_format), on stderr
    return settings


def _run(coro: Any) -> None:
    try:
        result = asyncio.run(coro)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        result = 0
    if isinstance(result, int) and result:
        sys.exit(result)


@click.group()
@click.version_option(__version__)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar="IMAGEJOBS_CONFIG",
    help="TOML settings file (see README: Configuration).",
)
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """Asynchronous image jobs over REST (Bifrost-compatible) and gRPC.

    Try it: `imagejobs up` in one terminal, then
    `imagejobs generate "a red fox" --model mock/image-1` in another.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.command()
@click.option("--gateway-port", type=int, help="REST + gRPC listener (default 8080).")
@click.option("--api-port", type=int, help="First API port (default 50051).")
@click.option("--api-processes", type=int, default=None, help="API processes (default 1).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
@click.option("--nats-port", type=int, help="nats-server port (default 4222).")
@click.option(
    "--nats-nodes",
    type=click.IntRange(1, 5),
    default=None,
    help="JetStream nodes to run as a local cluster (default 1; 3 for replicas 3).",
)
@click.option("--data-dir", type=click.Path(file_okay=False), help="NATS store and logs.")
@click.pass_context
def up(
    ctx: click.Context,
    gateway_port: int | None,
    api_port: int | None,
    api_processes: int | None,
    workers: int | None,
    nats_port: int | None,
    nats_nodes: int | None,
    data_dir: str | None,
) -> None:
    """Start nats-server (one node, or a local cluster), the API, workers and Envoy, and
    restart any of them that dies; Ctrl-C stops them all. Each of them reads the same
    --config file."""
    from imagejobs.runtime.supervisor import run_up

    settings = _settings(
        ctx,
        gateway_port=gateway_port,
        api_port=api_port,
        worker_processes=workers,
        nats_port=nats_port,
        nats_nodes=nats_nodes,
        data_dir=data_dir,
    )
    if api_processes:
        first = settings.api_port
        settings = settings.model_copy(
            update={"api_ports": tuple(range(first, first + api_processes))}
        )
    _run(run_up(settings, ctx.obj.get("config")))


@main.command()
@click.option("--port", type=int, help="Listen port (default: api_port).")
@click.pass_context
def api(ctx: click.Context, port: int | None) -> None:
    """Run one gRPC API server."""
    from imagejobs.api import server as api_module

    settings = _settings(ctx)
    _run(api_module.serve(settings, port or settings.api_port))


@main.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run one worker process."""
    from imagejobs.worker import worker as worker_module

    _run(worker_module.serve(_settings(ctx)))


@main.command()
@click.pass_context
def dispatcher(ctx: click.Context) -> None:
    """Run one webhook dispatcher process (delivers to the [[webhooks]] endpoints)."""
    from imagejobs.webhooks import dispatcher as dispatcher_module

    settings = _settings(ctx)
    try:
        settings.webhook_endpoints()  # every enabled endpoint's secret, before anything
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    _run(dispatcher_module.serve(settings))


@main.command(name="gateway")
@click.option("--api", "apis", multiple=True, help="host:port of an API server (repeatable).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None)
@click.option("--print-config", is_flag=True, help="Print the Envoy config; write and run nothing.")
@click.pass_context
def gateway_cmd(
    ctx: click.Context, apis: tuple[str, ...], workdir: str | None, print_config: bool
) -> None:
    """Render the Envoy config into the workdir and exec envoy."""
    from imagejobs import gateway

    settings = _settings(ctx)
    hosts = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in apis] or None
    where = Path(workdir or Path(settings.data_dir) / "gateway")
    if print_config:
        click.echo(gateway.config_json(settings, where, hosts), nl=False)
        return
    config = gateway.render(settings, where, hosts)
    argv = gateway.command(config)
    os.execv(argv[0], argv)


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Client listen address.")
@click.option("--port", type=int, default=None, help="Client port (default: nats_port).")
@click.option("--server-name", default="imagejobs", show_default=True, help="Unique per node.")
@click.option(
    "--store-dir", type=click.Path(file_okay=False), help="JetStream store (default data_dir/nats)."
)
@click.option("--cluster-name", default=None, help="Join a cluster of this name.")
@click.option(
    "--cluster", "cluster_listen", default=None, help="Route listen URL, e.g. nats://0.0.0.0:6222."
)
@click.option("--routes", default="", help="Comma-separated route URLs of the other nodes.")
@click.option("--http-port", type=int, default=0, help="Monitoring port (/healthz); 0 = none.")
@click.pass_context
def nats(
    ctx: click.Context,
    host: str,
    port: int | None,
    server_name: str,
    store_dir: str | None,
    cluster_name: str | None,
    cluster_listen: str | None,
    routes: str,
    http_port: int,
) -> None:
    """Exec a nats-server with JetStream: one node, or one node of a cluster (give
    --cluster-name, --cluster and --routes, as docker-compose.yml does)."""
    from imagejobs.runtime import natsd

    settings = _settings(ctx)
    try:
        cluster = natsd.cluster_options(cluster_name, cluster_listen, routes)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    node = natsd.NatsNode(
        name=server_name,
        host=host,
        port=port or settings.nats_port,
        store_dir=Path(store_dir or Path(settings.data_dir) / "nats"),
        http_port=http_port,
        **cluster,
    )
    argv = natsd.command(node)
    os.execv(argv[0], argv)


@main.command(name="new-key")
@click.argument("key_id")
def new_key(key_id: str) -> None:
    """Make a virtual key: prints the key (give it to the client, once) and the config
    section that admits it (only the key's SHA-256 goes into the config)."""
    key = "sk-bf-" + secrets.token_urlsafe(32)
    click.echo(f"key: {key}", err=True)
    click.echo(f'[virtual_keys.{key_id}]\nkey_sha256 = "{key_hash(key)}"')


@main.command(name="new-webhook-secret")
def new_webhook_secret() -> None:
    """Print a new random webhook signing secret (whsec_...): put it in the environment
    variable an endpoint's secret_env names, and give it to the receiver."""
    from imagejobs.webhooks.signing import new_secret

    click.echo(new_secret())


@main.command(name="hash-key")
def hash_key() -> None:
    """Print the SHA-256 of a virtual key read from stdin (for `key_sha256`)."""
    key = sys.stdin.readline().strip()
    if not key:
        raise click.ClickException("no key on stdin")
    click.echo(key_hash(key))


for _command in CLIENT_COMMANDS:
    main.add_command(_command)

# Last, after every command is registered (`python -m imagejobs` runs __main__.py instead).
if __name__ == "__main__":
    main()
