"""The client commands of `imagejobs`, built on the SDK (`imagejobs.client`):

    imagejobs generate PROMPT --model M [--size WxH] [-n N] [--param KEY=VALUE ...]
                              [--out DIR] [--json] [--no-wait]
    imagejobs edit IMAGE... --prompt P --model M [--mask FILE] [same options]
    imagejobs vary IMAGE --model M [same options]
    imagejobs get JOB_ID [--out DIR] [--json]
    imagejobs watch JOB_ID [--json]
    imagejobs cancel JOB_ID [--json]
    imagejobs jobs [--status S] [--kind K] [--limit N] [--json]
    imagejobs usage [--json]

Every one takes `--server HOST:PORT` (or IMAGEJOBS_SERVER; default localhost:8080),
`--key` (or IMAGEJOBS_KEY) and `--tls`. Images are saved as `DIR/<job id>-<index>.<ext>`
and their paths printed; exit codes are in output.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from imagejobs.client import DEFAULT_SERVER, AsyncClient, Job, KeyUsage, Kind, Status
from imagejobs.client.errors import ClientError
from imagejobs.client.requests import is_text_field
from imagejobs.domain.budget import dollars, micro
from imagejobs.domain.jobs import rfc3339
from imagejobs.runtime.output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Progress,
    echo_json,
    job_doc,
    job_line,
    report_end,
    report_error,
    save_images,
)

F = TypeVar("F", bound=Callable[..., Any])
KINDS = [k.value for k in Kind]
STATUSES = [s.value for s in Status]


@dataclass(frozen=True)
class Target:
    """Where the client commands connect, and as whom."""

    server: str
    key: str | None
    tls: bool


@dataclass
class Run:
    """One command's run: the job it is about, once known (for the Ctrl-C message)."""

    target: Target
    job_id: str = ""


def _decorate(f: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):  # so --help lists them in this order
        f = option(f)
    return f


def connection_options(f: F) -> F:
    return _decorate(
        f,
        [
            click.option(
                "--server",
                envvar="IMAGEJOBS_SERVER",
                default=DEFAULT_SERVER,
                show_default=True,
                help="host:port of the gateway (REST and gRPC), or of an API process.",
            ),
            click.option("--key", envvar="IMAGEJOBS_KEY", help="Virtual key (sent as x-bf-vk)."),
            click.option("--tls", is_flag=True, help="Use TLS (the system's root certificates)."),
        ],
    )


def submit_options(f: F) -> F:
    return _decorate(
        f,
        [
            click.option("--model", required=True, help="provider/model, e.g. mock/image-1."),
            click.option("--size", help="WxH, e.g. 1024x1024."),
            click.option("-n", "n", type=click.IntRange(1), help="Number of images."),
            click.option(
                "--param",
                "params",
                multiple=True,
                metavar="KEY=VALUE",
                help="Any other request field or provider parameter (repeatable); VALUE "
                "is read as JSON when it parses (42, true, [..]), else as text.",
            ),
            out_option,
            json_option,
            click.option("--no-wait", is_flag=True, help="Print the job id and exit."),
        ],
    )


out_option = click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    help="Directory for the images (default: the current one).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; a VALUE for a text field stays text, others are read as JSON
    when they parse."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        value: Any = text
        if not is_text_field(key):
            try:
                value = json.loads(text)
            except ValueError:
                value = text
        params[key] = value
    return params


def execute(target: Target, work: Callable[[AsyncClient, Run], Awaitable[int]]) -> NoReturn:
    """Run `work` with a client of `target`; exit with its code, or the code of the error
    it raised (the error printed)."""
    run = Run(target)

    async def main() -> int:
        async with AsyncClient(target.server, key=target.key, tls=target.tls) as client:
            return await work(client, run)

    try:
        code = asyncio.run(main())
    except ClientError as exc:
        code = report_error(exc, target.server)
    except ValueError as exc:  # a --param value of the wrong type for its field
        raise click.UsageError(str(exc)) from exc
    except KeyboardInterrupt:
        goes_on = f"; job {run.job_id} goes on (imagejobs watch {run.job_id})" if run.job_id else ""
        click.echo(f"imagejobs: interrupted{goes_on}", err=True)
        code = EXIT_INTERRUPTED
    sys.exit(code)


def finish(job: Job, out: Path, as_json: bool) -> int:
    """Save a completed job's images and print their paths (or the job as JSON); the exit
    code for the job's state."""
    paths = save_images(job, out) if job.status is Status.COMPLETED else []
    if as_json:
        echo_json(job_doc(job, paths))
    else:
        for path in paths:
            click.echo(str(path))
        if not job.terminal:
            click.echo(f"{job.id} {job.status.value}")
    return report_end(job)


@dataclass(frozen=True)
class Submission:
    """What a submit command asks for."""

    kind: Kind
    model: str
    prompt: str | None
    images: tuple[Path, ...]
    mask: Path | None
    params: dict[str, Any]


async def submit_and_follow(
    client: AsyncClient, run: Run, sub: Submission, out: Path, as_json: bool, no_wait: bool
) -> int:
    """Submit, then follow the job to its end with the progress line (unless `no_wait`)."""
    with Progress() as progress:
        job = await client.submit(
            sub.kind, sub.model, sub.prompt, images=sub.images, mask=sub.mask, params=sub.params
        )
        run.job_id = job.id
        progress.show(job)
        if not no_wait:
            async for state in client.watch(job.id):
                progress.show(state)
                job = state
    if no_wait and not as_json:
        click.echo(job.id)
        return EXIT_OK
    return finish(job, out, as_json)


def _submit(
    kind: Kind,
    options: dict[str, Any],
    prompt: str | None = None,
    images: tuple[str, ...] = (),
    mask: str | None = None,
) -> NoReturn:
    """Run a submit command with its click options (submit_options, connection_options)."""
    target = Target(options.pop("server"), options.pop("key"), options.pop("tls"))
    size, n = options.pop("size"), options.pop("n")
    params = {
        **parse_params(options.pop("params")),
        **({"size": size} if size else {}),
        **({"n": n} if n else {}),
    }
    sub = Submission(
        kind,
        options.pop("model"),
        prompt,
        tuple(Path(i) for i in images),
        Path(mask) if mask else None,
        params,
    )
    out, as_json, no_wait = options.pop("out"), options.pop("as_json"), options.pop("no_wait")
    execute(target, lambda c, r: submit_and_follow(c, r, sub, out, as_json, no_wait))


@click.command()
@click.argument("prompt")
@submit_options
@connection_options
def generate(prompt: str, **options: Any) -> None:
    """Generate images from PROMPT; save them in --out and print their paths."""
    _submit(Kind.GENERATION, options, prompt)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--prompt", help="What to change (not needed for --param type=background_removal).")
@click.option("--mask", type=click.Path(exists=True, dir_okay=False), help="PNG mask.")
@submit_options
@connection_options
def edit(images: tuple[str, ...], prompt: str | None, mask: str | None, **options: Any) -> None:
    """Edit the images as --prompt says (the first IMAGE is the base)."""
    _submit(Kind.EDIT, options, prompt, images, mask)


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@submit_options
@connection_options
def vary(image: str, **options: Any) -> None:
    """Make variations of IMAGE."""
    _submit(Kind.VARIATION, options, images=(image,))


def job_command(f: F) -> click.Command:
    """A command about one job: `JOB_ID`, `--json` and the connection options."""
    return click.command()(click.argument("job_id")(json_option(connection_options(f))))


@job_command
@out_option
def get(job_id: str, out: Path, as_json: bool, **target: Any) -> None:
    """Show a job; save a completed one's images in --out and print their paths."""

    async def work(client: AsyncClient, run: Run) -> int:
        return finish(await client.get(job_id), out, as_json)

    execute(Target(**target), work)


@job_command
def watch(job_id: str, as_json: bool, **target: Any) -> None:
    """Print each state of a job until it ends (one line, or one JSON object, each)."""

    async def work(client: AsyncClient, run: Run) -> int:
        run.job_id = job_id
        last: Job | None = None
        with Progress() as progress:
            async for job in client.watch(job_id, images=False):
                progress.show(job)
                progress.echo(json.dumps(job.to_dict()) if as_json else job.status.value)
                last = job
        return report_end(last) if last is not None else EXIT_FAILED

    execute(Target(**target), work)


@job_command
def cancel(job_id: str, as_json: bool, **target: Any) -> None:
    """Cancel a pending or processing job."""

    async def work(client: AsyncClient, run: Run) -> int:
        job = await client.cancel(job_id)
        if as_json:
            echo_json(job.to_dict())
        else:
            click.echo(f"{job.id} {job.status.value}")
        return EXIT_OK

    execute(Target(**target), work)


@click.command()
@click.option("--status", type=click.Choice(STATUSES), help="Only jobs in this state.")
@click.option("--kind", type=click.Choice(KINDS), help="Only jobs of this kind.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@json_option
@connection_options
def jobs(status: str | None, kind: str | None, limit: int, as_json: bool, **target: Any) -> None:
    """List your jobs, newest first (the key's own, or the anonymous ones)."""

    async def work(client: AsyncClient, run: Run) -> int:
        found = [j async for j in client.list(status=status, kind=kind, limit=limit)]
        if as_json:
            echo_json({"jobs": [j.to_dict() for j in found]})
        else:
            for job in found:
                click.echo(job_line(job))
        return EXIT_OK

    execute(Target(**target), work)


def usage_lines(report: KeyUsage) -> list[str]:
    """The usage report as a few aligned lines (amounts in dollars)."""
    when = "in total"
    if report.period_start is not None and report.resets_at is not None:
        start, end = report.period_start.timestamp(), report.resets_at.timestamp()
        when = f"{rfc3339(start)} to {rfc3339(end)}"
    rows = [("key", report.key), ("period", f"{report.period} ({when})")]
    amounts = [("budget", report.budget_usd), ("spent", report.spent_usd)]
    amounts += [("reserved", report.reserved_usd), ("remaining", report.remaining_usd)]
    rows += [(name, dollars(micro(value))) for name, value in amounts if value is not None]
    bound = f" (at most {report.max_queued_jobs})" if report.max_queued_jobs else ""
    rows.append(("queued", f"{report.queued_jobs}{bound}"))
    return [f"{name:<10}{value}" for name, value in rows]


@click.command()
@json_option
@connection_options
def usage(as_json: bool, **target: Any) -> None:
    """Show your virtual key's spend in its current budget period, and its queue."""

    async def work(client: AsyncClient, run: Run) -> int:
        report = await client.usage()
        if as_json:
            echo_json(report.to_dict())
        else:
            for line in usage_lines(report):
                click.echo(line)
        return EXIT_OK

    execute(Target(**target), work)


COMMANDS = (generate, edit, vary, get, watch, cancel, jobs, usage)
