"""`log_format = "json"`: one JSON object per line, and every line about a job carries its
`job_id`, `request_id`, `key_id` and `provider`, in the API's calls and in the worker's
deliveries alike; lines about nothing in particular carry none of them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from imagejobs.api.service import JobService
from imagejobs.runtime import logs
from imagejobs.worker.worker import Worker

from tests.unit.conftest import ALICE, submit


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What the root logger writes while the test runs, set up as logs.configure does
    for `log_format = "json"`."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.JobFields())
    handler.setFormatter(logs.formatter("json"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_every_line_about_a_job_carries_its_fields(
    service: JobService, worker: Worker, written: io.StringIO
) -> None:
    log = logging.getLogger("imagejobs.test")
    with logs.about():  # one API call, as the interceptor opens it
        job = await submit(service, ALICE)
        log.info("submitted")
    log.info("between calls")
    await worker.run(burst=True)
    assert logs.current() == {}  # nothing leaks out of a scope
    lines = _lines(written)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    about = [line for line in lines if line["message"] == "submitted" or job.id in line["message"]]
    assert len(about) >= 2  # the API's line and the worker's "completed" line at least
    for line in about:
        assert (line["job_id"], line["request_id"], line["key_id"], line["provider"]) == (
            job.id,
            "req",
            "alice",
            "mock",
        )
    between = next(line for line in lines if line["message"] == "between calls")
    assert "job_id" not in between


def test_text_lines_stay_plain() -> None:
    record = logging.LogRecord("imagejobs.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    assert logs.formatter("text").format(record).endswith("INFO imagejobs.x: hello you")
