"""One trace per job, on the in-memory store with the real runner and the mock provider:
the submit's span (a child of the caller's `traceparent`) is the parent of the queue wait
and of the worker's job span; under that, the claim, each candidate (the primary, then
the fallback) with its calls, the image store and the finish; the webhook attempt joins
the same trace through the intent. Spans go to an in-memory exporter."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest
from imagejobs.api.service import JobService, ServiceLimits
from imagejobs.config import ProviderSettings, Settings
from imagejobs.domain.jobs import Status
from imagejobs.domain.models import ModelRef
from imagejobs.runtime import tracing
from imagejobs.store.clock import FakeClock
from imagejobs.store.protocols import Backend
from imagejobs.webhooks.dispatcher import Dispatcher
from imagejobs.webhooks.endpoints import Endpoint
from imagejobs.webhooks.signing import parse_secret
from imagejobs.worker.runner import JobRunner
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.unit.conftest import ALICE, make_worker, request
from tests.unit.test_dispatcher import SECRET, FakeSender, hook

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def _parent(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return int(span.parent.span_id)


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


async def test_a_job_is_one_trace_from_the_callers_traceparent_to_the_webhook(
    spans: InMemorySpanExporter, backend: Backend, clock: FakeClock
) -> None:
    settings = Settings(providers={"mock": ProviderSettings(max_retries=0)}, ack_wait_s=30.0)
    service = JobService(
        backend,
        limits=ServiceLimits.from_settings(settings),
        clock=clock,
        webhooks={"orders": hook()},
    )
    # the primary fails once with a 400 (not retried), the fallback completes it
    job_request = request(mock_fail_status=400, mock_fail_times=1, size="16x16")
    job_request = dataclasses.replace(job_request, fallbacks=(ModelRef.parse("mock/b"),))
    with tracing.span(
        "ImageJobService/SubmitImageJobJson",
        parent={"traceparent": TRACEPARENT},
        kind=SpanKind.SERVER,
    ):
        job = await service.submit(
            job_request, ttl_s=600, request_id="req-1", caller=ALICE, webhook="orders"
        )
    async with httpx.AsyncClient() as http:
        worker = make_worker(
            backend, JobRunner(settings, backend.objects, http, backend.providers), clock, settings
        )
        await worker.run(burst=True)
    found = await backend.records.get(job.id)  # (the runner's own clock is the real one)
    assert found is not None and found[0].status is Status.COMPLETED
    endpoint = Endpoint(settings=hook(), secrets=(parse_secret(SECRET),))
    sender = FakeSender()
    dispatcher = Dispatcher(
        backend, {"orders": endpoint}, sender, concurrency=4, base_url="https://gw", clock=clock
    )
    await dispatcher.run(burst=True)
    assert len(sender.sent) == 1

    finished = list(spans.get_finished_spans())
    assert {s.context.trace_id for s in finished if s.context} == {int(CALLER_TRACE, 16)}
    submit = _one(finished, "ImageJobService/SubmitImageJobJson")
    assert _parent(submit) == int(CALLER_SPAN, 16)  # the caller's traceparent, honoured
    assert submit.attributes is not None
    assert submit.attributes["imagejobs.job_id"] == job.id
    assert submit.attributes["imagejobs.key_id"] == "alice"

    run = _one(finished, "imagejobs.job")
    wait = _one(finished, "imagejobs.queue_wait")
    assert _parent(run) == _parent(wait) == _id(submit)
    assert run.kind is SpanKind.CONSUMER
    assert run.attributes is not None
    assert run.attributes["imagejobs.status"] == "completed"
    assert run.attributes["imagejobs.provider"] == "mock"
    assert run.attributes["imagejobs.model_used"] == "b"
    for name in ("imagejobs.claim", "imagejobs.store_images", "imagejobs.finish"):
        assert _parent(_one(finished, name)) == _id(run), name

    candidates = [s for s in finished if s.name == "imagejobs.provider"]
    assert [(s.attributes or {}).get("imagejobs.model") for s in candidates] == ["m", "b"]
    assert [(s.attributes or {}).get("imagejobs.fallback") for s in candidates] == [0, 1]
    assert all(_parent(s) == _id(run) for s in candidates)
    calls = [s for s in finished if s.name == "imagejobs.provider_call"]
    assert [_parent(c) for c in calls] == [_id(c) for c in candidates]
    failed, served = calls
    assert failed.attributes is not None and failed.attributes["http.response.status_code"] == 400
    assert not failed.status.is_ok and served.status.is_ok

    webhook = _one(finished, "imagejobs.webhook")
    assert _parent(webhook) == _id(_one(finished, "imagejobs.finish"))
    assert webhook.attributes is not None
    assert webhook.attributes["imagejobs.outcome"] == "delivered"
    assert webhook.attributes["imagejobs.job_id"] == job.id


async def test_off_nothing_is_recorded_and_a_callers_context_passes_along() -> None:
    tracing.use_provider(None)
    with tracing.span("rpc", parent={"traceparent": TRACEPARENT}):
        carried = tracing.carrier()
    assert carried["traceparent"] == TRACEPARENT  # no span of ours: the caller's, as it came
    with tracing.span("rpc"):
        assert tracing.carrier() == {}
