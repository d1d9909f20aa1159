"""OpenTelemetry traces: one trace per job, from the submit to the webhook deliveries.

Off unless `otlp_endpoint` is set (then each process exports its spans over OTLP/gRPC
to it, batched, as service `imagejobs-api`, `imagejobs-worker` or
`imagejobs-dispatcher`; Envoy exports its own as `imagejobs-gateway`). Off, every call
here is OpenTelemetry's no-op: no span is recorded, and an incoming `traceparent` is
still passed along.

One job's trace (W3C trace context, `traceparent` / `tracestate`):

    imagejobs-gateway  ingress                     (Envoy; honours a caller's traceparent)
    imagejobs-api        <rpc>                     every unary RPC (interceptor.py); the
                                                   submit's carries the job's attributes
    imagejobs-worker       imagejobs.queue_wait    submit -> the first claim
                           imagejobs.job           one delivery, to its ack
                             imagejobs.claim       the compare-and-set claim
                             imagejobs.provider    one candidate: the primary, then each
                                                   fallback (`imagejobs.fallback` index)
                               imagejobs.provider_call   one call; each retry is another
                             imagejobs.store_images      the result images written
                             imagejobs.finish      the terminal write, the intent, the ack
    imagejobs-dispatcher       imagejobs.webhook   one delivery attempt (each one a child
                                                   of the span that owed it: the finish)

The context travels in the job's work-queue message (headers `traceparent`,
`tracestate`) and in the webhook intent. Attributes: `imagejobs.job_id`, `.kind`,
`.model`, `.provider`, `.status`, `.request_id`, `.key_id`, and per call `.attempt`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from imagejobs.config import Settings
from imagejobs.domain.jobs import Job
from imagejobs.providers.base import (
    Provider,
    ProviderError,
    ProviderRequest,
    ProviderResult,
    WrappedProvider,
)

TRACER = "imagejobs"
PREFIX = "imagejobs."
NS_PER_S = 1_000_000_000
FLUSH_AT_EXIT_S = 2.0

Attributes = Mapping[str, AttributeValue]


def setup(settings: Settings, service: str) -> Callable[[], None]:
    """Export this process's spans to `otlp_endpoint` as `service`, if it is set; returns
    what sends the spans still batched at exit, waiting FLUSH_AT_EXIT_S at most (a
    collector that is down must not hold up a shutdown; nothing to do when off)."""
    if not settings.otlp_endpoint:
        return lambda: None
    # imported here: a process without an endpoint never loads the gRPC exporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), shutdown_on_exit=False
    )
    exporter = OTLPSpanExporter(
        endpoint=settings.otlp_endpoint,
        insecure=settings.otlp_endpoint.startswith("http://"),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)

    def flush() -> None:
        provider.force_flush(timeout_millis=int(FLUSH_AT_EXIT_S * 1000))

    return flush


_provider: TracerProvider | None = None  # this process's; None: OpenTelemetry's no-op


def use_provider(provider: TracerProvider | None) -> None:
    """Record spans with `provider` from now on (None: record nothing). `setup` calls it;
    tests give an in-memory one."""
    global _provider
    _provider = provider


def tracer() -> trace.Tracer:
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer(TRACER)


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers ({} when there is none)."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def context_of(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context `headers` carry (a fresh one when they carry none)."""
    return propagate.extract(dict(headers or {}))


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: Mapping[str, str] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
) -> Iterator[Span]:
    """A span around the block, current inside it; a child of the current span, or of
    the context `parent` headers carry. An exception leaving the block marks it failed."""
    context = context_of(parent) if parent is not None else None
    with tracer().start_as_current_span(
        name, context=context, kind=kind, attributes=attributes
    ) as current:
        yield current


def job_attributes(job: Job) -> dict[str, AttributeValue]:
    """What a span about `job` says of it."""
    found: dict[str, AttributeValue] = {
        PREFIX + "job_id": job.id,
        PREFIX + "kind": job.kind.value,
        PREFIX + "model": str(job.request.model),
        PREFIX + "provider": job.provider,
        PREFIX + "status": job.status.value,
        PREFIX + "request_id": job.request_id,
        PREFIX + "key_id": job.owner,
    }
    if job.result is not None:  # who served it (a fallback's provider, when one did)
        found[PREFIX + "provider"] = job.result.provider
        found[PREFIX + "model_used"] = job.result.model
    if job.status_code is not None:
        found[PREFIX + "status_code"] = job.status_code
    return found


def annotate(job: Job) -> None:
    """Put `job`'s attributes on the current span."""
    trace.get_current_span().set_attributes(job_attributes(job))


def queue_wait(job: Job, now: float, parent: Mapping[str, str] | None) -> None:
    """A span from `job`'s submit to `now` (its first claim), a child of the context
    `parent` carries (the submit's), beside the delivery's own span."""
    started = tracer().start_span(
        PREFIX + "queue_wait",
        context=context_of(parent),
        start_time=int(job.created_at * NS_PER_S),
        attributes={PREFIX + "job_id": job.id},
    )
    started.end(end_time=max(int(now * NS_PER_S), int(job.created_at * NS_PER_S)))


class TracedProvider(WrappedProvider):
    """A provider whose every `run` (one call, each retry another) is a span."""

    async def run(self, request: ProviderRequest) -> ProviderResult:
        attributes: dict[str, AttributeValue] = {
            PREFIX + "provider": self.name,
            PREFIX + "model": request.model,
            PREFIX + "attempt": request.attempt,
        }
        with span(PREFIX + "provider_call", kind=SpanKind.CLIENT, attributes=attributes) as s:
            try:
                result = await self._inner.run(request)
            except ProviderError as exc:
                if exc.status_code is not None:
                    s.set_attribute("http.response.status_code", exc.status_code)
                s.set_status(Status(StatusCode.ERROR, exc.message[:200]))
                raise
            s.set_attribute(PREFIX + "images", len(result.images))
            return result


def traced(provider: Provider) -> Provider:
    return TracedProvider(provider)
