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

from imagejobs import connector, constants
from imagejobs.config import Settings
from imagejobs.engine import Engine
from imagejobs.objects import ObjectStore
from imagejobs.queue import JobQueue
from imagejobs.servicer import ImageJobServicer
from imagejobs.store import JobStore
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc
from imagejobs.wire import ErrorInterceptor

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
    nc, js = await connector.connect(settings, f"imagejobs-api-{port}")
    await connector.declare(js, settings)
    engine = Engine(JobStore(js), JobQueue(js), ObjectStore(nc, js))

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
        await server.stop(SHUTDOWN_GRACE_S)
        await nc.close()
        log.info("api stopped")
