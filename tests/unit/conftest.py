"""Fixtures for unit tests of the job service and the worker: the in-memory store on a
fake clock (nothing sleeps for real; a test moves time with `clock.advance`), and a
scripted runner standing in for the providers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from imagejobs.api.requests import ImageRequest
from imagejobs.api.service import JobService, ServiceLimits
from imagejobs.config import Settings
from imagejobs.domain.jobs import Job, ObjectRef, ResultImage, StoredError, StoredResult
from imagejobs.domain.keys import Caller, KeyPolicy
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.store.clock import FakeClock
from imagejobs.store.memory import memory_backend
from imagejobs.store.protocols import Backend
from imagejobs.worker.handler import WorkerOptions
from imagejobs.worker.worker import Worker

ACK_WAIT_S = 30.0
MAX_ATTEMPTS = 3
MAX_JOB_AGE_S = 3600.0
QUEUE_MAX = 4
RESULT_TTL_S = 600

ANONYMOUS = Caller()
ALICE = Caller(owner="alice")
BOB = Caller(owner="bob")


def request(prompt: str = "a fox", kind: Kind = Kind.GENERATION, **params: Any) -> ImageRequest:
    return ImageRequest(kind=kind, model=ModelRef.parse("mock/m"), prompt=prompt, params=params)


def limited(owner: str, *, jobs: int = 0, per_minute: int = 0) -> Caller:
    """A caller whose virtual key has a concurrency and/or per-minute limit."""
    policy = KeyPolicy(id=owner, max_concurrent_jobs=jobs, requests_per_minute=per_minute)
    return Caller(owner=owner, policy=policy)


class ScriptedRunner:
    """A `Runner` that completes each job with one stored image after `seconds` on the
    fake clock, or fails it with `fail`; `gate`, when set, holds every run until opened.
    Records the jobs it was given, as the record stood (status `processing`)."""

    def __init__(self, clock: FakeClock, backend: Backend) -> None:
        self.clock = clock
        self.objects = backend.objects
        self.seconds = 0.0
        self.fail: StoredError | None = None
        self.raises: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.started: list[Job] = []
        self.finished: list[Job] = []

    async def run(self, job: Job) -> Job:
        self.started.append(job)
        if self.gate is not None:
            await self.gate.wait()
        if self.seconds:
            await self.clock.sleep(self.seconds)
        if self.raises is not None:
            raise self.raises
        now = self.clock.time()
        if self.fail is not None:
            final = job.fail(self.fail, now)
        else:
            object_id = f"{job.id}.out0"
            await self.objects.put(object_id, b"PNG!" + job.id.encode(), "image/png", job.ttl_s)
            ref = ObjectRef(object_id=object_id, content_type="image/png", size=40)
            result = StoredResult(
                created=int(now),
                images=(ResultImage(ref=ref),),
                provider="mock",
                model="m",
                latency_ms=int(self.seconds * 1000),
            )
            final = job.complete(result, now)
        self.finished.append(final)
        return final


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        ack_wait_s=ACK_WAIT_S,
        max_attempts=MAX_ATTEMPTS,
        max_job_age_s=MAX_JOB_AGE_S,
        queue_max_jobs=QUEUE_MAX,
        worker_drain_s=5.0,
    )


@pytest.fixture
def backend(clock: FakeClock, settings: Settings) -> Backend:
    return memory_backend(clock, settings)


@pytest.fixture
def service(backend: Backend, clock: FakeClock, settings: Settings) -> JobService:
    return JobService(backend, limits=ServiceLimits.from_settings(settings), clock=clock)


@pytest.fixture
def runner(clock: FakeClock, backend: Backend) -> ScriptedRunner:
    return ScriptedRunner(clock, backend)


def make_worker(
    backend: Backend, runner: Any, clock: FakeClock, settings: Settings, name: str = "w1"
) -> Worker:
    return Worker(
        backend,
        runner,
        options=WorkerOptions.from_settings(settings),
        clock=clock,
        worker_id=name,
    )


@pytest.fixture
def worker(
    backend: Backend, runner: ScriptedRunner, clock: FakeClock, settings: Settings
) -> Worker:
    return make_worker(backend, runner, clock, settings)


async def submit(service: JobService, caller: Caller = ANONYMOUS, **kwargs: Any) -> Job:
    prompt = kwargs.pop("prompt", "a fox")
    return await service.submit(
        request(prompt),
        ttl_s=kwargs.pop("ttl_s", RESULT_TTL_S),
        request_id="req",
        caller=caller,
        **kwargs,
    )
