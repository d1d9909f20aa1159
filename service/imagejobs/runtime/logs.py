"""Log lines, and the job fields every line about a job carries.

`log_format = "text"` (the default) writes plain lines; `"json"` one JSON object per line
(python-json-logger): `time`, `level`, `logger`, `message`, and on every line about a job
`job_id`, `request_id`, `key_id` (the virtual key's id; '' for anonymous callers, never
the key) and `provider` (the one being called, during fallbacks), plus `trace_id` and
`span_id` while a trace span is recording. So `jq 'select(.job_id == "…")'` over the
logs of every process finds one job's whole story.

The fields live in a context variable: `about()` opens a scope (one RPC, one delivery of
a job, one webhook message), `tag()` adds what becomes known inside it. asyncio copies
the context into the tasks a scope starts, so a job's runner and heartbeat log with its
fields too, and no other task sees them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from imagejobs.config import Settings
from imagejobs.domain.jobs import Job

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "{asctime}{levelname}{name}{message}"
JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger"}

# never changed in place: each scope and tag sets a new mapping
_FIELDS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "imagejobs_log_fields", default=MappingProxyType({})
)


def job_fields(job: Job) -> dict[str, str]:
    """What a log line about `job` says of it."""
    provider = job.result.provider if job.result is not None else job.provider
    return {
        "job_id": job.id,
        "request_id": job.request_id,
        "key_id": job.owner,
        "provider": provider,
    }


@contextlib.contextmanager
def about(job: Job | None = None, **fields: str) -> Iterator[None]:
    """Every line logged in the block (and in the tasks it starts) carries `job`'s fields
    and `fields`; the scope's own `tag()`s end with it."""
    token = _FIELDS.set({**_FIELDS.get(), **(job_fields(job) if job else {}), **fields})
    try:
        yield
    finally:
        _FIELDS.reset(token)


def tag(job: Job | None = None, **fields: str) -> None:
    """Add `job`'s fields and `fields` to the current scope's (until it ends)."""
    _FIELDS.set({**_FIELDS.get(), **(job_fields(job) if job else {}), **fields})


def current() -> dict[str, str]:
    """The fields lines logged now carry."""
    return dict(_FIELDS.get())


class JobFields(logging.Filter):
    """Puts the current scope's fields (and the recording span's ids) on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _FIELDS.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, style="{", rename_fields=JSON_NAMES)
    return logging.Formatter(TEXT_FORMAT)


def configure(settings: Settings) -> None:
    """Send this process's logs to stderr in `log_format` at `log_level` (replacing any
    handler set before). httpx's request lines are kept out: they may carry keys."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobFields())
    handler.setFormatter(formatter(settings.log_format))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
