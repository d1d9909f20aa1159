"""Baseline (c): a no-op grpc.aio ImageJobService, the Python RPC layer's own limit.

The same server options as the API (message sizes), gRPC health for Envoy's checks, and
a SubmitImageJob (gRPC) and a SubmitImageJobJson (REST, through Envoy) that answer like
ours (a pending Job; its JSON) without parsing, recording or enqueueing anything.
Run: `python -m bench.noop_server --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from imagejobs.api.server import SERVICE_NAME, server_options
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def pending_job() -> jobs_pb2.Job:
    now = timestamp_pb2.Timestamp()
    now.FromNanoseconds(time.time_ns())
    return jobs_pb2.Job(
        id=str(uuid.uuid4()),
        request_id=str(uuid.uuid4()),
        status=jobs_pb2.JOB_STATUS_PENDING,
        kind=jobs_pb2.JOB_KIND_GENERATION,
        created_at=now,
    )


class NoopServicer(jobs_pb2_grpc.ImageJobServiceServicer):
    async def SubmitImageJob(
        self, request: jobs_pb2.SubmitImageJobRequest, context: Context
    ) -> jobs_pb2.Job:
        await context.send_initial_metadata((("x-http-status", "202"),))
        return pending_job()

    async def SubmitImageJobJson(
        self, request: jobs_pb2.SubmitImageJobJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        job = pending_job()
        body = {
            "id": job.id,
            "request_id": job.request_id,
            "status": "pending",
            "created_at": job.created_at.ToJsonString(),
        }
        return httpbody_pb2.HttpBody(
            content_type="application/json", data=json.dumps(body).encode()
        )

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: Context) -> jobs_pb2.Job:
        await context.send_initial_metadata((("x-http-status", "202"),))
        return pending_job()


async def serve(port: int) -> None:
    server = grpc.aio.server(options=server_options())
    jobs_pb2_grpc.add_ImageJobServiceServicer_to_server(NoopServicer(), server)  # type: ignore[abstract]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"noop servicer ready on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
