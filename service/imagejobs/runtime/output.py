"""What the client commands show: a live progress line on a terminal (rich, on stderr),
saved images, jobs as text or JSON (stdout), errors (stderr), and the exit codes.

Exit codes: 0 completed (or, for `get`, still running); 1 failed or cancelled, or the
server refused the request (the error printed); 2 usage; 3 server unreachable or key
refused.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner

from imagejobs.client import Job, Status
from imagejobs.client.errors import (
    AuthenticationError,
    ClientError,
    DeadlineExceeded,
    JobFailed,
    ServerUnavailable,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
REFRESH_PER_S = 8


class Progress:
    """A spinner, the job's state and the elapsed seconds, redrawn on stderr while the
    block runs, and only when stderr is a terminal (scripts see nothing of it). `show()`
    sets the state; the final state stays on screen as one plain line."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.state = "submitting"
        self.job_id = ""
        self._started = time.monotonic()
        self._spinner = Spinner("dots")
        self._live: Live | None = None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def _line(self) -> str:
        job = f"  {self.job_id}" if self.job_id else ""
        return f"{self.state}  {self.elapsed_s:.1f} s{job}"

    def __rich__(self) -> RenderableType:
        self._spinner.update(text=self._line())  # elapsed time moves on every refresh
        return self._spinner

    def show(self, job: Job) -> None:
        self.job_id = job.id
        self.state = job.status.value

    def echo(self, text: str) -> None:
        """A line of output for stdout. While the progress line is drawn and stdout is the
        same terminal, it is printed above the progress line instead (written to stdout
        there, it would be drawn over); stdout that is a pipe or a file gets it as is."""
        if self._live is not None and sys.stdout.isatty():
            self._live.console.print(text, highlight=False, markup=False)
        else:
            click.echo(text)

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live = Live(
                self,
                console=self.console,
                refresh_per_second=REFRESH_PER_S,
                transient=True,
                # stdout stays ours: redirected, a pipe's output would go to the terminal
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            if exc_type is None:
                self.console.print(self._line(), highlight=False)


def save_images(job: Job, out: Path) -> list[Path]:
    """Each result image as `out/<job id>-<index>.<ext>` (the directory made if missing);
    returns the paths in order."""
    assert job.result is not None
    out.mkdir(parents=True, exist_ok=True)
    return [i.save(out / f"{job.id}-{i.index}.{i.extension}") for i in job.result.images]


def job_doc(job: Job, paths: list[Path] | None = None) -> dict[str, Any]:
    """The job as `--json` prints it (`Job.to_dict`), with each saved image's `path`."""
    doc = job.to_dict()
    for image, path in zip(doc.get("result", {}).get("data", []), paths or [], strict=False):
        image["path"] = str(path)
    return doc


def echo_json(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False))


def job_line(job: Job) -> str:
    """One job as a line of `imagejobs jobs`."""
    created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{job.id}  {job.kind.value:<11} {job.status.value:<10} {created}"


def error_text(error: ClientError) -> str:
    """`message (HTTP 400 invalid_request, param prompt)`."""
    body = error.error
    status = " ".join(
        filter(None, [f"HTTP {body.status_code}" if body.status_code else "", body.code])
    )
    facts = [f for f in (status, f"param {body.param}" if body.param else "") if f]
    return f"{body.message} ({', '.join(facts)})" if facts else body.message


def report_end(job: Job) -> int:
    """The exit code for a job's state, with the error on stderr when it did not
    complete."""
    if job.status is Status.COMPLETED or not job.terminal:
        return EXIT_OK
    assert job.error is not None
    click.echo(
        f"imagejobs: job {job.id} {job.status.value}: {error_text(JobFailed(job))}", err=True
    )
    return EXIT_FAILED


def report_error(error: ClientError, server: str) -> int:
    """Print a failed call's error; the exit code it means."""
    if isinstance(error, ServerUnavailable | DeadlineExceeded):
        click.echo(f"imagejobs: cannot reach {server}: {error_text(error)}", err=True)
        return EXIT_UNREACHABLE
    if isinstance(error, AuthenticationError):
        click.echo(f"imagejobs: the key was refused: {error_text(error)}", err=True)
        return EXIT_UNREACHABLE
    click.echo(f"imagejobs: {error_text(error)}", err=True)
    return EXIT_FAILED
