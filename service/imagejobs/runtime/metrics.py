"""Prometheus metrics for the API and worker processes, and the `/metrics` endpoint.

Every metric lives in one registry (`REGISTRY`, with the standard process collector for
CPU and memory). What is recorded, and where:

    imagejobs_submits_total{kind,result}        API   wire.ErrorInterceptor; result is
                                                      "accepted" or the error's code
    imagejobs_completions_total{status,provider} worker a terminal write that won
    imagejobs_job_seconds{kind,status}          worker submit -> terminal (histogram)
    imagejobs_provider_call_seconds{provider,outcome}  worker one provider call
    imagejobs_cost_usd_total{provider,model,key} worker a completed job's cost, once per job
                                                       (result.cost_usd: the provider's bill
                                                       when it sent one, else the price table)
    imagejobs_jobs_in_flight                    worker messages held right now
    imagejobs_queue_depth                       both  JOBQ messages not yet acked
    imagejobs_queue_undelivered                 both  of those, not yet handed to a worker
    imagejobs_workers                           API   live worker processes (heartbeats)
    imagejobs_webhook_attempts_total{endpoint,outcome}   dispatcher  one delivery attempt:
                                                      delivered, retry, failed or gone
    imagejobs_webhook_deliveries_total{endpoint,outcome} dispatcher  a delivery finished:
                                                      delivered or failed
    imagejobs_webhook_attempt_seconds{endpoint} dispatcher  one attempt (histogram)
    imagejobs_webhook_owed{endpoint}            dispatcher  deliveries still owed (sampled)
    imagejobs_webhook_endpoint_disabled{endpoint} dispatcher  1 while a 410 disables it

Ports (`metrics_port`, 0 = no endpoint): API process i (its place in `api_ports`) serves
on `metrics_port + i`; a worker takes the first free port from
`metrics_port + len(api_ports)` on, and a webhook dispatcher the first free port after
the workers', so `imagejobs up` with several of each needs no per-process setting. One
process per host (containers) simply uses `metrics_port`. A process that cannot tell its
place takes the first free port; each logs its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.jobs import Job
from imagejobs.domain.keys import key_label
from imagejobs.domain.kinds import Kind
from imagejobs.providers.base import (
    Provider,
    ProviderError,
    ProviderRequest,
    ProviderResult,
    WrappedProvider,
)
from imagejobs.providers.registry import KNOWN_PROVIDERS
from imagejobs.store.protocols import Presence, QueueDepth

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

QUEUE_SAMPLE_INTERVAL_S = 2.0
WORKER_PORT_SEARCH = 16  # ports a worker tries beyond worker_processes (extra workers)
MAX_API_OFFSET = 64
_KINDS = frozenset(k.value for k in Kind)
SUBMITS = Counter(
    "imagejobs_submits",
    "Submit calls by kind and result ('accepted' or the error code).",
    ["kind", "result"],
    registry=REGISTRY,
)
COMPLETIONS = Counter(
    "imagejobs_completions",
    "Jobs this worker brought to a terminal state, by status and provider.",
    ["status", "provider"],
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "imagejobs_job_seconds",
    "Submit to terminal state, per finished job.",
    ["kind", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=REGISTRY,
)
PROVIDER_SECONDS = Histogram(
    "imagejobs_provider_call_seconds",
    "One provider call (each retry counts), by provider and outcome.",
    ["provider", "outcome"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
COST = Counter(
    "imagejobs_cost_usd",
    "What completed jobs cost in USD (each job's cost_usd, counted once at its completion:"
    " the provider's reported bill, usage.cost_in_usd_ticks, when it sent one, else the"
    " price table), by the provider and model that served them and the virtual key (its"
    " id; anonymous; open).",
    ["provider", "model", "key"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "imagejobs_jobs_in_flight",
    "Job messages this worker holds (claimed, running or finishing).",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "imagejobs_queue_depth",
    f"Messages in the {constants.QUEUE_STREAM} work queue (queued or running, not acked); "
    f"sampled every {QUEUE_SAMPLE_INTERVAL_S:g} s.",
    registry=REGISTRY,
)
QUEUE_UNDELIVERED = Gauge(
    "imagejobs_queue_undelivered",
    "Work-queue messages no worker has been handed yet; sampled with queue_depth.",
    registry=REGISTRY,
)
WORKERS = Gauge(
    "imagejobs_workers",
    "Live worker processes (each heartbeats every 5 s; listed 15 s after its last); "
    "sampled with queue_depth by API processes.",
    registry=REGISTRY,
)


WEBHOOK_ATTEMPTS = Counter(
    "imagejobs_webhook_attempts",
    "Webhook delivery attempts by endpoint and outcome (delivered, retry, failed, gone).",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "imagejobs_webhook_deliveries",
    "Webhook deliveries finished, by endpoint and outcome (delivered, failed).",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_SECONDS = Histogram(
    "imagejobs_webhook_attempt_seconds",
    "One webhook delivery attempt, from sending to the answer (or the error).",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
WEBHOOK_OWED = Gauge(
    "imagejobs_webhook_owed",
    "Webhook deliveries an endpoint still owes (waiting, in flight or waiting to retry); "
    f"sampled every {QUEUE_SAMPLE_INTERVAL_S:g} s.",
    ["endpoint"],
    registry=REGISTRY,
)
WEBHOOK_DISABLED = Gauge(
    "imagejobs_webhook_endpoint_disabled",
    "1 while the endpoint is disabled because it answered 410 Gone (until its settings "
    "change; its deliveries are held), else 0.",
    ["endpoint"],
    registry=REGISTRY,
)


# --- recording -----------------------------------------------------------------------------


def kind_label(raw: str) -> str:
    """A request's kind as a bounded label value."""
    return raw if raw in _KINDS else "other"


def submitted(kind: str, result: str) -> None:
    SUBMITS.labels(kind_label(kind), result).inc()


def provider_label(name: str) -> str:
    """A provider name as a bounded label value (the model prefix is the client's text)."""
    return name if name in KNOWN_PROVIDERS else "other"


def finished(job: Job, now: float | None = None) -> None:
    """A terminal write of `job` succeeded (a worker's, or the API's for a cancel or an
    expiry)."""
    provider = job.result.provider if job.result is not None else job.provider
    COMPLETIONS.labels(job.status.value, provider_label(provider)).inc()
    end = job.completed_at or now or time.time()
    JOB_SECONDS.labels(job.kind.value, job.status.value).observe(max(end - job.created_at, 0.0))
    result = job.result
    if result is not None and result.cost_usd is not None:  # no price, no bill: none counted
        COST.labels(provider_label(provider), result.model, key_label(job.owner)).inc(
            result.cost_usd
        )


def webhook_attempted(endpoint: str, outcome: str, seconds: float) -> None:
    WEBHOOK_ATTEMPTS.labels(endpoint, outcome).inc()
    WEBHOOK_SECONDS.labels(endpoint).observe(seconds)


def webhook_finished(endpoint: str, outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(endpoint, outcome).inc()


def webhook_disabled(endpoint: str, disabled: bool) -> None:
    WEBHOOK_DISABLED.labels(endpoint).set(1.0 if disabled else 0.0)


def webhook_owed(endpoint: str, owed: int) -> None:
    WEBHOOK_OWED.labels(endpoint).set(owed)


def track_in_flight(count: Callable[[], int]) -> None:
    """The in-flight gauge reads `count()` at scrape time (no per-job bookkeeping)."""
    IN_FLIGHT.set_function(lambda: float(count()))


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        status = exc.status_code
        if status is not None and 400 <= status < 600:
            return f"{status // 100}xx"
        return "error"
    if isinstance(exc, asyncio.CancelledError | TimeoutError):
        return "cancelled"
    return "error"


class TimedProvider(WrappedProvider):
    """A provider whose every `run` is observed in `imagejobs_provider_call_seconds`."""

    async def run(self, request: ProviderRequest) -> ProviderResult:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._inner.run(request)
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            PROVIDER_SECONDS.labels(self.name, outcome).observe(time.perf_counter() - started)


def timed(provider: Provider) -> Provider:
    return TimedProvider(provider)


# --- queue depth -----------------------------------------------------------------------


async def sample_queue(queue: QueueDepth) -> None:
    """Read the work queue's depth once into the gauges."""
    messages, undelivered = await queue.depth()
    QUEUE_DEPTH.set(messages)
    QUEUE_UNDELIVERED.set(undelivered)


async def sample_workers(presence: Presence) -> None:
    """Count the live workers once into their gauge."""
    WORKERS.set(len(await presence.workers()))


Sampler = Callable[[], Awaitable[None]]


async def sample_queue_forever(
    queue: QueueDepth, interval_s: float = QUEUE_SAMPLE_INTERVAL_S, also: Sampler | None = None
) -> None:
    """Sample the work queue (and `also`, a process's own gauges) every `interval_s`."""
    while True:
        for sample in (lambda: sample_queue(queue), also):
            if sample is None:
                continue
            try:
                await sample()
            except Exception as exc:  # an election, a reconnect: keep the last value, go on
                log.debug("queue depth sample failed: %r", exc)
        await asyncio.sleep(interval_s)


# --- the endpoint ------------------------------------------------------------------------


class MetricsServer:
    """The `/metrics` HTTP endpoint (prometheus_client's threaded server) plus the queue
    sampler task; `close()` stops both."""

    def __init__(self, port: int, server: WSGIServer, sampler: asyncio.Task[None] | None) -> None:
        self.port = port
        self._server = server
        self._sampler = sampler

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()


def api_ports(settings: Settings, api_port: int) -> range:
    """Where the API process serving `api_port` may put its endpoint: its place in
    `api_ports`; or, for `imagejobs up --api-processes N` (ports api_port, api_port + 1,
    ... not in the file), its offset from `api_port`; else the first free port from
    `metrics_port` on (it logs which)."""
    base, apis = settings.metrics_port, settings.all_api_ports
    if api_port in apis:
        index = apis.index(api_port)
    elif 0 <= api_port - settings.api_port < MAX_API_OFFSET:
        index = api_port - settings.api_port
    else:
        return range(base, base + MAX_API_OFFSET)
    return range(base + index, base + index + 1)


def worker_ports(settings: Settings) -> range:
    first = settings.metrics_port + len(settings.all_api_ports)
    return range(first, first + settings.worker_processes + WORKER_PORT_SEARCH)


def dispatcher_ports(settings: Settings) -> range:
    first = settings.metrics_port + len(settings.all_api_ports) + settings.worker_processes
    return range(first, first + settings.dispatcher_processes + WORKER_PORT_SEARCH)


async def start(
    settings: Settings, ports: range, queue: QueueDepth, also: Sampler | None = None
) -> MetricsServer | None:
    """Serve `/metrics` on the first free port of `ports` and start sampling `queue`
    (and `also`); None when metrics are off (`metrics_port = 0`) or every port is taken
    (logged: a process does not refuse to work over its metrics)."""
    if settings.metrics_port == 0:
        return None
    for port in ports:
        if not 0 < port <= 65535:
            break
        try:
            server, _ = start_http_server(port, addr=settings.host, registry=REGISTRY)
        except OSError:
            continue
        sampler = asyncio.create_task(sample_queue_forever(queue, also=also))
        log.info("metrics on http://%s:%d/metrics", settings.host, port)
        return MetricsServer(port, server, sampler)
    log.error("no free metrics port in %d-%d; serving no /metrics", ports.start, ports.stop - 1)
    return None
