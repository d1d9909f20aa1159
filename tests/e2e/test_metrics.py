"""Prometheus metrics on a real stack (one API, two workers): every count matches what
was submitted and how each job ended, on each process's own /metrics port."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from imagejobs.config import Settings
from imagejobs.domain.jobs import Job, StoredRequest, StoredResult
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.providers.base import ProviderError, ProviderRequest, ProviderResult
from imagejobs.runtime import metrics
from imagejobs.testing import Samples, Stack, free_port_run, require_binary, scrape, wait_until
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

from tests.conftest import submit, wait_terminal

pytestmark = pytest.mark.e2e

OK_JOBS = 12
FAILING_JOBS = 3  # the mock answers 400: failed at once, no retry
INVALID_SUBMITS = 2  # no prompt: 400 invalid_request
BAD_KIND_SUBMITS = 1  # gRPC, kind "bogus"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    base = free_port_run(3)
    s = Stack(tmp_path_factory.mktemp("metrics"), {"metrics_port": base}, workers=2)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_counts_match_what_was_submitted_and_finished(metrics_stack: Stack) -> None:
    base = metrics_stack.settings.metrics_port
    api_port, worker_ports = base, (base + 1, base + 2)  # API 0, then each worker its own
    ids = []
    with httpx.Client(base_url=metrics_stack.url, timeout=30) as client:
        for i in range(OK_JOBS):
            r = submit(client, {"model": "mock/m", "prompt": f"fox {i}", "size": "16x16"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        for i in range(FAILING_JOBS):
            body = {"model": "mock/m", "prompt": f"bad {i}", "mock_fail_status": 400}
            r = submit(client, body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        for _ in range(INVALID_SUBMITS):
            assert submit(client, {"model": "mock/m"}).status_code == 400
        with grpc.insecure_channel(metrics_stack.grpc_direct) as channel:
            stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
            for _ in range(BAD_KIND_SUBMITS):
                with pytest.raises(grpc.RpcError):
                    stub.SubmitImageJob(
                        jobs_pb2.SubmitImageJobRequest(
                            kind=jobs_pb2.JOB_KIND_UNSPECIFIED,
                            request=jobs_pb2.ImageRequest(model="mock/m", prompt="x"),
                        )
                    )
        statuses = [wait_terminal(client, job_id).json()["status"] for job_id in ids]
    assert statuses.count("completed") == OK_JOBS
    assert statuses.count("failed") == FAILING_JOBS

    api = scrape(api_port)
    assert value(api, "imagejobs_submits_total", kind="generations", result="accepted") == (
        OK_JOBS + FAILING_JOBS
    )
    assert (
        value(api, "imagejobs_submits_total", kind="generations", result="invalid_request")
        == INVALID_SUBMITS
    )
    assert value(api, "imagejobs_submits_total", kind="other", result="invalid_request") == (
        BAD_KIND_SUBMITS
    )
    assert total(api, "imagejobs_submits_total") == (
        OK_JOBS + FAILING_JOBS + INVALID_SUBMITS + BAD_KIND_SUBMITS
    )
    assert total(api, "imagejobs_completions_total") == 0  # the API finishes no job

    def workers_done() -> list[Samples] | None:
        scraped = [scrape(p) for p in worker_ports]
        done = sum(total(w, "imagejobs_completions_total") for w in scraped)
        return scraped if done == OK_JOBS + FAILING_JOBS else None

    scraped = wait_until(workers_done, 10, "the workers' completion counts")

    def summed(name: str, **labels: str) -> float:
        return sum(value(w, name, **labels) for w in scraped)

    assert summed("imagejobs_completions_total", status="completed", provider="mock") == OK_JOBS
    assert summed("imagejobs_completions_total", status="failed", provider="mock") == (FAILING_JOBS)
    count = "imagejobs_job_seconds_count"
    assert summed(count, kind="generations", status="completed") == OK_JOBS
    assert summed(count, kind="generations", status="failed") == FAILING_JOBS
    job_seconds = summed("imagejobs_job_seconds_sum", kind="generations", status="completed")
    assert 0 < job_seconds < 30 * OK_JOBS
    calls = "imagejobs_provider_call_seconds_count"
    assert summed(calls, provider="mock", outcome="ok") == OK_JOBS
    assert summed(calls, provider="mock", outcome="4xx") == FAILING_JOBS
    assert all(value(w, "imagejobs_jobs_in_flight") == 0 for w in scraped)
    assert all(value(w, "process_resident_memory_bytes") > 10e6 for w in scraped)
    assert all(total(w, "imagejobs_submits_total") == 0 for w in scraped)


def test_queue_depth_follows_the_work_queue(metrics_stack: Stack) -> None:
    """Jobs held by a stopped worker pool show as queue depth, then drain to 0."""
    base = metrics_stack.settings.metrics_port
    with httpx.Client(base_url=metrics_stack.url, timeout=30) as client:
        ids = [
            submit(
                client, {"model": "mock/m", "prompt": f"slow {i}", "mock_latency_ms": 5000}
            ).json()["id"]
            for i in range(4)
        ]

        def depth(port: int) -> float:
            return value(scrape(port), "imagejobs_queue_depth")

        wait_until(lambda: depth(base) == 4, 10, "queue depth 4 on the API", 0.2)
        wait_until(
            lambda: (
                sum(value(scrape(p), "imagejobs_jobs_in_flight") for p in (base + 1, base + 2)) == 4
            ),
            10,
            "4 jobs in flight on the workers",
            0.1,
        )
        for job_id in ids:
            assert wait_terminal(client, job_id).json()["status"] == "completed"
        wait_until(lambda: depth(base) == 0 and depth(base + 1) == 0, 10, "queue depth 0", 0.2)


def test_port_layout() -> None:
    s = Settings(metrics_port=9100, api_ports=(50051, 50052), worker_processes=2)
    assert metrics.api_ports(s, 50052) == range(9101, 9102)
    assert metrics.api_ports(s, 6000)[:2] == range(9100, 9102)  # unknown place: first free
    up = Settings(metrics_port=9100, api_port=50051)  # `up --api-processes 3`: 50051-50053
    assert metrics.api_ports(up, 50053) == range(9102, 9103)
    workers = metrics.worker_ports(s)
    assert workers.start == 9102 and len(workers) == 2 + metrics.WORKER_PORT_SEARCH


async def test_disabled_when_port_is_zero() -> None:
    assert await metrics.start(Settings(metrics_port=0), range(1, 2), None) is None  # type: ignore[arg-type]


def test_label_values_are_bounded() -> None:
    assert metrics.kind_label("edits") == "edits"
    assert metrics.kind_label("x" * 50) == "other"
    assert metrics.provider_label("mock") == "mock"
    assert metrics.provider_label("no-such-vendor-123") == "other"


async def test_provider_calls_are_timed_by_outcome() -> None:
    class Flaky:
        name = "flaky"
        operations = frozenset(Kind)

        async def run(self, request: ProviderRequest) -> ProviderResult:
            raise ProviderError("upstream down", status_code=503)

    def count(outcome: str) -> float:
        return value(
            {
                (s.name, frozenset(s.labels.items())): s.value
                for family in metrics.REGISTRY.collect()
                for s in family.samples
            },
            "imagejobs_provider_call_seconds_count",
            provider="flaky",
            outcome=outcome,
        )

    provider = metrics.timed(Flaky())
    request = ProviderRequest(kind=Kind.GENERATION, model="m", prompt="p", params={})
    with pytest.raises(ProviderError):
        await provider.run(request)
    assert count("5xx") == 1 and count("ok") == 0


def test_a_jobs_cost_is_counted_once_in_usd_by_provider_model_and_key() -> None:
    def cost(provider: str) -> float:
        labels = {"provider": provider, "model": "grok-imagine-image-2.0", "key": "team"}
        return metrics.REGISTRY.get_sample_value("imagejobs_cost_usd_total", labels) or 0.0

    before = cost("xai")
    job = Job(
        id="j",
        kind=Kind.GENERATION,
        request_id="r",
        created_at=1.0,
        ttl_s=60,
        owner="vk-team",
        request=StoredRequest(model=ModelRef.parse("xai/grok-imagine-image-2.0")),
    )
    result = StoredResult(
        created=2,
        images=(),
        usage={"cost_in_usd_ticks": 700_000_000},
        provider="xai",
        model="grok-imagine-image-2.0",
        latency_ms=5,
        cost_usd=0.07,  # the runner's computation: xAI's bill (runner tests cover that)
    )
    metrics.finished(job.claim("w", 1.5).complete(result, 2.0))
    assert cost("xai") == pytest.approx(before + 0.07)
    # the reported ticks are not counted a second time, nor without a computed cost
    metrics.finished(
        job.claim("w", 1.5).complete(result.model_copy(update={"cost_usd": None}), 2.0)
    )
    assert cost("xai") == pytest.approx(before + 0.07)
