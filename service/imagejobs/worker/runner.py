"""Running one claimed job: the primary provider, then each fallback in order, each with
its retry policy, all within the job's deadline; result images stored under the job's
TTL. Returns the terminal record to write; never raises for provider trouble.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

import httpx

from imagejobs.config import Settings
from imagejobs.domain.budget import usd
from imagejobs.domain.errors import ErrorCode, ErrorType, StoreError
from imagejobs.domain.jobs import Job, ObjectRef, ResultImage, StoredError, StoredResult
from imagejobs.domain.models import ModelRef
from imagejobs.providers.adapter import scrub
from imagejobs.providers.base import (
    ImageInput,
    Provider,
    ProviderError,
    ProviderNotConfigured,
    ProviderRequest,
    ProviderResult,
)
from imagejobs.providers.registry import build_provider
from imagejobs.runtime import logs, metrics, tracing
from imagejobs.store.protocols import ObjectStore, ProviderLimits
from imagejobs.worker.limits import ProviderGate, RateLimited
from imagejobs.worker.retry import RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

RESULT_EXTRA_TTL_S = 5  # result images outlive the record a little; the record rules

Count = Callable[[int], None]


class JobRunner:
    """Runs claimed jobs for one worker. `limits` holds the providers' cluster-wide
    concurrency slots and request rates (worker/limits.py); every provider's `concurrency`
    is also this worker's own bound."""

    def __init__(
        self,
        settings: Settings,
        objects: ObjectStore,
        http: httpx.AsyncClient,
        limits: ProviderLimits,
    ) -> None:
        self._settings = settings
        self._objects = objects
        self._http = http
        self._limits = limits
        self._providers: dict[str, tuple[Provider, ProviderGate, RetryPolicy]] = {}
        self._secrets = settings.all_secrets()
        self._prices = settings.price_table()  # governance: a completed job's cost

    def _provider(self, name: str) -> tuple[Provider, ProviderGate, RetryPolicy]:
        """The adapter, its limits and retry policy, built once per worker."""
        if name not in self._providers:
            config = self._settings.provider_config(name)
            if config is None:
                raise ProviderNotConfigured(name)
            per_minute = self._settings.providers[name].requests_per_minute
            gate = ProviderGate(name, config.concurrency, per_minute, self._limits)
            provider: Provider = tracing.traced(metrics.timed(build_provider(config, self._http)))
            if per_minute:
                provider = RateLimited(provider, gate)
            self._providers[name] = (provider, gate, RetryPolicy(max_retries=config.max_retries))
        return self._providers[name]

    async def _call(
        self,
        job: Job,
        request: ProviderRequest,
        provider_name: str,
        times: list[float],
        count: Count,
        candidate: tracing.Attributes,
    ) -> ProviderResult:
        """One candidate's call with its retries, once a slot of its provider is held,
        within the deadline `times[0]`. Waiting for the slot is not the job's time: the
        deadline, and the start `times[1]` its latency is counted from, move by it. The
        candidate's span (attributes `candidate`) covers the wait and the call."""
        provider, gate, policy = self._provider(provider_name)
        with tracing.span(tracing.PREFIX + "provider", attributes=candidate):
            async with gate.held(job.id) as waited:  # full: this job waits here, never fails
                times[0] += waited
                times[1] += waited
                deadline = times[0]
                return await asyncio.wait_for(
                    call_with_retries(
                        provider, request, policy=policy, deadline=deadline, on_attempt=count
                    ),
                    timeout=max(deadline - time.monotonic(), 0.001),
                )

    async def run(self, job: Job) -> Job:
        """The terminal record for `job` (completed or failed)."""
        now = time.monotonic()
        times = [now + self._settings.job_timeout_s, now]  # the deadline; the latency's start
        base = await self._inputs(job)
        attempts = job.attempts
        error: ProviderError | None = None
        failed_model = job.request.model  # the candidate whose error is reported
        for fallback, model in enumerate((job.request.model, *job.request.fallbacks)):
            provider_name, model_name = model.provider, model.name
            request = dataclasses.replace(base, model=model_name, attempt=attempts + 1)
            made = [attempts]  # provider calls so far, updated by call_with_retries

            def count(n: int, made: list[int] = made) -> None:
                made[0] = n

            candidate: tracing.Attributes = {
                tracing.PREFIX + "provider": provider_name,
                tracing.PREFIX + "model": model_name,
                tracing.PREFIX + "fallback": fallback,
            }
            logs.tag(provider=provider_name)  # this candidate's, in the lines about it
            try:
                result = await self._call(job, request, provider_name, times, count, candidate)
            except ProviderError as exc:
                attempts = made[0]
                error, failed_model = exc, model
                log.info("job %s: %s failed: %s", job.id, model, self._scrub(exc.message))
                continue
            except TimeoutError:
                failed_model = model
                error = ProviderError(
                    f"job did not finish within {self._settings.job_timeout_s:g} s",
                    type=ErrorType.TIMEOUT,
                    code=ErrorCode.JOB_TIMEOUT,
                )
                break
            latency_ms = int((time.monotonic() - times[1]) * 1000)
            stored = await self._store_result(job, result, provider_name, model_name, latency_ms)
            return job.with_attempts(made[0]).complete(stored, time.time())
        assert error is not None
        stored_error = self._stored_error(error, failed_model)
        return job.with_attempts(attempts).fail(stored_error, time.time())

    async def _inputs(self, job: Job) -> ProviderRequest:
        """The request with its uploaded images and mask read back from the object store;
        `model` and `attempt` are filled in per provider tried."""
        refs = list(job.request.images) + ([job.request.mask] if job.request.mask else [])
        # (a generation has none: no gather of nothing)
        objects = (
            await asyncio.gather(*(self._objects.get(r.object_id) for r in refs)) if refs else []
        )
        inputs = []
        for ref, obj in zip(refs, objects, strict=True):
            if obj is None:
                raise StoreError(f"upload {ref.object_id} of job {job.id} is missing")
            inputs.append(
                ImageInput(
                    data=obj.data,
                    content_type=obj.content_type,
                    filename=ref.filename or "image.png",
                )
            )
        mask = inputs.pop() if job.request.mask else None
        return ProviderRequest(
            kind=job.kind,
            model="",
            prompt=job.request.prompt,
            params=job.request.params,
            images=tuple(inputs),
            mask=mask,
        )

    async def _store_result(
        self, job: Job, result: ProviderResult, provider: str, model: str, latency_ms: int
    ) -> StoredResult:
        ttl = job.ttl_s + RESULT_EXTRA_TTL_S
        images = []
        stored: tracing.Attributes = {
            tracing.PREFIX + "images": len(result.images),
            tracing.PREFIX + "bytes": sum(len(i.data) for i in result.images),
        }
        with tracing.span(tracing.PREFIX + "store_images", attributes=stored):
            for i, image in enumerate(result.images):
                object_id = f"{job.id}.out{i}"
                await self._objects.put(object_id, image.data, image.content_type, ttl)
                ref = ObjectRef(
                    object_id=object_id, content_type=image.content_type, size=len(image.data)
                )
                images.append(ResultImage(ref=ref, revised_prompt=image.revised_prompt))
        cost = self._prices.cost(
            ModelRef(provider, model), result.usage, len(images), result.fields, job.request.params
        )
        return StoredResult(
            created=int(time.time()),
            images=tuple(images),
            fields=dict(result.fields),
            usage=dict(result.usage) if result.usage else None,
            provider=provider,
            model=model,
            latency_ms=latency_ms,
            cost_usd=usd(cost) if cost is not None else None,
        )

    def _stored_error(self, error: ProviderError, model: ModelRef) -> StoredError:
        """The job's error, naming the provider and model that produced it (the last
        fallback tried, when every candidate failed)."""
        return StoredError(
            status_code=error.status_code or 500,
            type=error.type or ErrorType.UPSTREAM,
            code=error.code or "",
            message=self._scrub(error.message),
            param=error.param or "",
            provider=model.provider,
            model=model.name,
        )

    def _scrub(self, text: str) -> str:
        """Upstream error text sometimes echoes the key it was sent: never pass it on."""
        return scrub(text, self._secrets)
