"""The containers' health checks (docker-compose.yml `healthcheck:`), installed in the
image as `imagejobs-probe`. Exit status 0 = healthy, 1 = not (the reason on stderr).

    imagejobs-probe http URL        200 from URL (nats /healthz, Envoy /health, /metrics)
    imagejobs-probe grpc HOST:PORT  the gRPC health service says SERVING (the API: it
                                    follows the store's ability to accept jobs)

Each check gives up after 3 s (Docker's own `timeout` is longer), so a probe never hangs.
"""

from __future__ import annotations

import sys
import urllib.request

TIMEOUT_S = 3.0


def http_ok(url: str) -> str:
    """'' when `url` answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return "" if response.status == 200 else f"{url}: HTTP {response.status}"
    except OSError as exc:  # URLError and HTTPError (a non-2xx answer) are OSErrors
        return f"{url}: {exc}"


def grpc_serving(target: str) -> str:
    """'' when the gRPC health service at `target` says SERVING (the overall status)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    checks = {"http": http_ok, "grpc": grpc_serving}
    if len(argv) != 2 or argv[0] not in checks:
        print(__doc__, file=sys.stderr)
        return 2
    problem = checks[argv[0]](argv[1])
    if problem:
        print(problem, file=sys.stderr)
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
