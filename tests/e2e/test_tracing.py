"""One trace per job across real processes: Envoy, the API, the worker and the webhook
dispatcher export their spans over OTLP/gRPC to a collector that runs inside this test
(a gRPC server implementing the collector's TraceService on loopback). A REST submit
with a caller's `traceparent` (through Envoy) gives one trace: the gateway's span, the
API's submit, the queue wait, the worker's delivery with its claim, the primary's two
calls (the retry) and the fallback's one, the image store, the finish and the webhook
attempt, each with the job's attributes. With `log_format = "json"` every worker line
about the job carries its fields."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import httpx
import pytest
from imagejobs.testing import Stack, require_binary, wait_until
from imagejobs.webhooks.signing import new_secret
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from tests.conftest import wait_terminal
from tests.fakes.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

SECRET = new_secret()
CALLER_TRACE = uuid.uuid4().hex
CALLER_SPAN = uuid.uuid4().hex[:16]
EXPORT_WAIT_S = 30.0  # Envoy flushes its spans every 5 s; the SDKs every 0.2 s here


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, object]
    ok: bool


def _value(value: common_pb2.AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    span = Span(
                        service=str(resource.get("service.name", "")),
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent=s.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        ok=s.status.code != s.status.STATUS_CODE_ERROR,
                    )
                    with self._lock:
                        self._spans.append(span)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self._spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver({"main": [SECRET]}) as r:
        yield r


@pytest.fixture(scope="module")
def traced_stack(
    tmp_path_factory: pytest.TempPathFactory,
    collector: tuple[Collector, int],
    receiver: WebhookReceiver,
) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    hook = {
        "name": "main",
        "url": f"{receiver.url}/main",
        "secret_env": "HOOK_SECRET",
        "allow_private_network": True,
    }
    config = {
        "otlp_endpoint": f"http://127.0.0.1:{collector[1]}",
        "log_format": "json",
        "webhooks": [hook],
        "providers": {"mock": {"max_retries": 1}},
    }
    # OTEL_BSP_SCHEDULE_DELAY: the SDK's batch export interval (ms), short for the test
    env = {"HOOK_SECRET": SECRET, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    stack = Stack(tmp_path_factory.mktemp("traced"), config, env=env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def _one(spans: list[Span], name: str, **attributes: object) -> Span:
    found = [
        s
        for s in spans
        if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [(s.service, s.name) for s in spans])
    return found[0]


def test_a_job_is_one_trace_across_envoy_api_worker_provider_and_webhook(
    traced_stack: Stack, collector: tuple[Collector, int], receiver: WebhookReceiver
) -> None:
    spans_of, _ = collector
    body = {
        "model": "mock/a",
        "prompt": "a traced fox",
        "size": "16x16",
        "fallbacks": ["mock/b"],
        # the primary's call and its retry answer 503; the fallback's call completes it
        "mock_fail_status": 503,
        "mock_fail_times": 2,
    }
    headers = {
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        "x-bf-async-webhook": "main",
        "x-bf-vk": f"sk-bf-traced-{uuid.uuid4().hex}",
        "x-request-id": "traced-1",
    }
    with httpx.Client(base_url=traced_stack.url, timeout=30) as client:
        r = client.post("/v1/async/images/generations", json=body, headers=headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        client.headers["x-bf-vk"] = headers["x-bf-vk"]
        assert wait_terminal(client, job_id).json()["status"] == "completed"
    wait_until(lambda: receiver.to("main"), 30, "the webhook delivery")
    wanted = {
        ("imagejobs-gateway", None),
        ("imagejobs-api", "imagejobs.v1.ImageJobService/SubmitImageJobJson"),
        ("imagejobs-worker", "imagejobs.store_images"),
        ("imagejobs-dispatcher", "imagejobs.webhook"),
    }

    def exported() -> list[Span] | None:
        spans = spans_of.of(CALLER_TRACE)
        seen = {(s.service, s.name) for s in spans} | {(s.service, None) for s in spans}
        return spans if wanted <= seen else None

    spans = wait_until(exported, EXPORT_WAIT_S, "every process's spans", 0.2)

    gateway = [s for s in spans if s.service == "imagejobs-gateway" and s.parent == CALLER_SPAN]
    assert len(gateway) == 1, spans  # the caller's traceparent, honoured by Envoy
    submit = _one(spans, "imagejobs.v1.ImageJobService/SubmitImageJobJson")
    assert submit.parent == gateway[0].span_id  # Envoy passed its own on to the API
    assert submit.attributes["imagejobs.job_id"] == job_id
    assert submit.attributes["imagejobs.request_id"] == "traced-1"
    assert submit.attributes["imagejobs.model"] == "mock/a"

    run = _one(spans, "imagejobs.job")
    assert run.service == "imagejobs-worker"
    assert run.parent == submit.span_id  # the context travelled in the queue message
    assert _one(spans, "imagejobs.queue_wait").parent == submit.span_id
    assert (run.attributes["imagejobs.job_id"], run.attributes["imagejobs.status"]) == (
        job_id,
        "completed",
    )
    assert (run.attributes["imagejobs.provider"], run.attributes["imagejobs.model_used"]) == (
        "mock",
        "b",
    )
    for name in ("imagejobs.claim", "imagejobs.store_images", "imagejobs.finish"):
        assert _one(spans, name).parent == run.span_id, name

    primary = _one(spans, "imagejobs.provider", **{"imagejobs.model": "a"})
    fallback = _one(spans, "imagejobs.provider", **{"imagejobs.model": "b"})
    assert primary.parent == fallback.parent == run.span_id
    assert fallback.attributes["imagejobs.fallback"] == 1
    calls = sorted(
        (s for s in spans if s.name == "imagejobs.provider_call"),
        key=lambda s: int(str(s.attributes["imagejobs.attempt"])),
    )
    assert [c.parent for c in calls] == [primary.span_id, primary.span_id, fallback.span_id]
    assert [c.attributes.get("http.response.status_code") for c in calls] == [503, 503, None]
    assert [c.ok for c in calls] == [False, False, True]
    assert all(c.attributes["imagejobs.provider"] == "mock" for c in calls)

    webhook = _one(spans, "imagejobs.webhook")
    assert webhook.service == "imagejobs-dispatcher"
    assert webhook.parent == _one(spans, "imagejobs.finish").span_id  # via the intent
    assert webhook.attributes["imagejobs.job_id"] == job_id
    assert webhook.attributes["imagejobs.outcome"] == "delivered"

    # the worker's JSON log lines about the job carry its fields
    lines = [json.loads(x) for x in traced_stack.log("worker-1").splitlines() if x.startswith("{")]
    about = [line for line in lines if line.get("job_id") == job_id]
    assert len(about) >= 2, lines  # the primary's failure (then the fallback), the end
    for line in about:
        assert line["request_id"] == "traced-1"
        assert line["key_id"] and line["key_id"] not in headers["x-bf-vk"]
        assert line["provider"] == "mock"
        assert line["trace_id"] == CALLER_TRACE
