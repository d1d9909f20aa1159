"""The API process: a grpc.aio server (ImageJobService, gRPC health, reflection) over one
NATS connection. It records and enqueues jobs and reads them back; it never calls a
provider. Stops on SIGTERM/SIGINT: health goes NOT_SERVING, in-flight calls get a grace
period, then the NATS connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imagejobs.api.interceptor import ErrorInterceptor
from imagejobs.api.service import Engine, EngineLimits
from imagejobs.api.servicer import ImageJobServicer
from imagejobs.config import Settings
from imagejobs.domain import constants
from imagejobs.runtime import metrics
from imagejobs.store import jetstream as connector
from imagejobs.store.idempotency import IdempotencyStore
from imagejobs.store.index import JobIndex
from imagejobs.store.notifier import Notifier
from imagejobs.store.objects import ObjectStore
from imagejobs.store.queue import JobQueue
from imagejobs.store.quotas import Quotas
from imagejobs.store.records import JobStore
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["ImageJobService"].full_name
SHUTDOWN_GRACE_S = 5.0


def server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", constants.MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_send_message_length", constants.MAX_GRPC_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]


async def serve(settings: Settings, port: int, ready: asyncio.Event | None = None) -> None:
    """Run one API server on `port` until cancelled or signalled."""
    notifiers: list[Notifier] = []

    def reconnected() -> None:  # changes may have been missed: waiters re-read
        for n in notifiers:
            n.reconnected()

    nc, js = await connector.connect(settings, f"imagejobs-api-{port}", on_reconnect=reconnected)
    await connector.declare(js, settings)
    notifier = Notifier(nc)
    notifiers.append(notifier)
    await notifier.start()
    store = JobStore(js)
    engine = Engine(
        store,
        JobQueue(nc, js),
        ObjectStore(nc, js),
        index=JobIndex(nc, js, ttl_s=constants.PENDING_TTL_S + settings.max_ttl_s),
        idempotency=IdempotencyStore(js, ttl_s=settings.idempotency_ttl_s),
        notifier=notifier,
        quotas=Quotas(nc, js, store, slot_ttl_s=int(settings.max_job_age_s) + 60),
        limits=EngineLimits(
            max_job_age_s=settings.max_job_age_s,
            max_wait_s=settings.max_wait_s,
            failpoint=settings.failpoint,
        ),
    )
    metrics_server = await metrics.start(settings, metrics.api_ports(settings, port), js)

    server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=server_options())
    jobs_pb2_grpc.add_ImageJobServiceServicer_to_server(ImageJobServicer(engine, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.api_host}:{port}"
    server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("api listening on %s", address)
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
    if ready is not None:
        ready.set()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("api stopping")
        await health_servicer.enter_graceful_shutdown()
        # long-polls answer now and watches end (clients re-attach elsewhere); other
        # calls get the grace period to finish
        await notifier.stop()
        await server.stop(SHUTDOWN_GRACE_S)
        if metrics_server is not None:
            await metrics_server.close()
        await nc.close()
        log.info("api stopped")
