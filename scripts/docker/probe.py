"""`imagejobs-probe grpc HOST:PORT` (scripts/docker/probe): exit status 0 when the gRPC
health service at HOST:PORT says SERVING (the overall status; the API's follows the
store's ability to accept jobs), 1 when not (the reason on stderr). The call gives up
after 3 s, so a probe never hangs."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def grpc_serving(target: str) -> str:
    """'' when the gRPC health service at `target` says SERVING, else why not."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return f"{target}: {exc.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return ""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    problem = grpc_serving(argv[0])
    if problem:
        print(problem, file=sys.stderr)
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
