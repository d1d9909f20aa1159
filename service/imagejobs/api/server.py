"""The API process: a grpc.aio server (ImageJobService, gRPC health, reflection) over one
NATS connection. It records and enqueues jobs and reads them back; it never calls a
provider. Its gRPC health is SERVING only while the job store can accept jobs
(store/health.py: the job records and the work queue each have a leader with a quorum),
so that Envoy, and a load balancer asking Envoy's /health, stop sending it work when it
cannot take any. Stops on SIGTERM/SIGINT: health goes NOT_SERVING, in-flight calls get a
grace period, then the NATS connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imagejobs.api.interceptor import ErrorInterceptor
from imagejobs.api.service import JobService, ServiceHooks, ServiceLimits
from imagejobs.api.servicer import ImageJobServicer
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.domain.jobs import Job
from imagejobs.runtime import metrics, tracing
from imagejobs.store.factory import open_backend
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["ImageJobService"].full_name
SHUTDOWN_GRACE_S = 5.0
FAILPOINT_BEFORE_PUBLISH = constants.FAILPOINT_BEFORE_PUBLISH
CRASH_EXIT_CODE = 137  # what a kill -9 leaves


def server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", constants.MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_send_message_length", constants.MAX_GRPC_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]


def _die_before_publish(job: Job) -> None:
    log.critical("failpoint %s: exiting before publishing job %s", FAILPOINT_BEFORE_PUBLISH, job.id)
    os._exit(CRASH_EXIT_CODE)


def hooks_for(settings: Settings) -> ServiceHooks:
    """The service's hooks for the fault tests' `failpoint` setting (none without it):
    `submit.before_publish` makes the process die right after a submit's record is
    written, as a crash there would."""
    if settings.checked_failpoint() != FAILPOINT_BEFORE_PUBLISH:  # none, or another's
        return ServiceHooks()
    return ServiceHooks(after_record=_die_before_publish)


async def serve(settings: Settings, port: int, ready: asyncio.Event | None = None) -> None:
    """Run one API server on `port` until cancelled or signalled."""
    hooks = hooks_for(settings)
    flush_spans = tracing.setup(settings, "imagejobs-api")
    async with open_backend(
        settings, f"imagejobs-api-{port}", watch_changes=True, probe_health=True
    ) as backend:
        service = JobService(
            backend,
            limits=ServiceLimits.from_settings(settings),
            hooks=hooks,
            webhooks={w.name: w for w in settings.webhooks},
            prices=settings.price_table(),
        )
        metrics_server = await metrics.start(
            settings,
            metrics.api_ports(settings, port),
            backend.queue,
            also=lambda: metrics.sample_workers(backend.presence),
        )
        server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=server_options())
        jobs_pb2_grpc.add_ImageJobServiceServicer_to_server(
            ImageJobServicer(service, settings), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{settings.api_host}:{port}"
        server.add_insecure_port(address)
        await server.start()
        serving = _ServingStatus(health_servicer)
        backend.health.on_change(serving.store_changed)
        await serving.set(backend.health.accepting)
        log.info("api listening on %s", address)
        _log_key_mode(settings)
        if ready is not None:
            ready.set()
        try:
            await _until_signalled()
        finally:
            log.info("api stopping")
            serving.stopping = True
            await health_servicer.enter_graceful_shutdown()
            # long-polls answer now and watches end (clients re-attach elsewhere); other
            # calls get the grace period to finish
            await backend.changes.stop()
            await server.stop(SHUTDOWN_GRACE_S)
            if metrics_server is not None:
                await metrics_server.close()
            flush_spans()
    log.info("api stopped")


class _ServingStatus:
    """The gRPC health of this process, following the store's ability to accept jobs;
    NOT_SERVING for good once `stopping`."""

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self._servicer = servicer
        self._pending: set[asyncio.Task[None]] = set()
        self.stopping = False

    async def set(self, accepting: bool) -> None:
        if self.stopping:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if accepting
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self._servicer.set(name, status)

    def store_changed(self, accepting: bool) -> None:
        task = asyncio.create_task(self.set(accepting))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _log_key_mode(settings: Settings) -> None:
    if settings.virtual_keys:
        required = (
            "every call needs one"
            if settings.require_virtual_key
            else "calls without one are served anonymously (require_virtual_key = false)"
        )
        log.info("%d virtual keys configured: %s", len(settings.virtual_keys), required)
    else:
        log.warning(
            "no virtual keys configured: running OPEN (development mode) - any caller may "
            "submit; a presented key only scopes its own jobs"
        )
