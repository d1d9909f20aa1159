"""The gateway's own parts through a real Envoy, without the API: the rendered config is
one Envoy accepts, rest.lua takes its limits from the route metadata, and a gRPC error
that comes without our typed detail still gets the contract's error body (rest.lua's
fallback, made from the same ErrorBody as every other error body)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from imagejobs import gateway
from imagejobs.config import Settings
from imagejobs.domain.errors import ErrorBody
from imagejobs.gateway import bootstrap, envoy
from imagejobs.testing import free_port, require_binary, wait_until
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

pytestmark = pytest.mark.e2e

UPSTREAM_MESSAGE = "no such job here"


class BareServicer(jobs_pb2_grpc.ImageJobServiceServicer):
    """Errors as any gRPC server makes them: a code and a message, no typed detail.
    (The base class answers every other method UNIMPLEMENTED, which is a 501.)"""

    def GetJobJson(self, request: jobs_pb2.GetJobJsonRequest, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.NOT_FOUND, UPSTREAM_MESSAGE)


@pytest.fixture(scope="module")
def bare_backend() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    jobs_pb2_grpc.add_ImageJobServiceServicer_to_server(BareServicer(), server)  # type: ignore[abstract]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None)


def _settings() -> Settings:
    return Settings.model_construct(gateway_port=free_port(), gateway_admin_port=free_port())


def _run_envoy(config: Path, settings: Settings) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(envoy.command(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.gateway_port}/health"

    def healthy() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 20, "envoy /health")
    return proc


@pytest.fixture(scope="module")
def envoy_url(bare_backend: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_binary("envoy")
    settings = _settings()
    workdir = tmp_path_factory.mktemp("gateway")
    config = gateway.render(settings, workdir, api_hosts=[("127.0.0.1", bare_backend)])
    proc = _run_envoy(config, settings)
    yield f"http://127.0.0.1:{settings.gateway_port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_the_rendered_config_is_valid_for_envoy(tmp_path: Path) -> None:
    require_binary("envoy")
    config = gateway.render(Settings.model_construct(), tmp_path)
    argv = [*envoy.command(config), "--mode", "validate"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("path", "status", "etype", "message"),
    [
        ("/v1/async/images/generations/x", 404, "invalid_request_error", UPSTREAM_MESSAGE),
        ("/v1/async/images/jobs", 501, "api_error", "Method not implemented!"),
    ],
)
def test_a_grpc_error_without_our_detail_gets_the_error_body(
    envoy_url: str, path: str, status: int, etype: str, message: str
) -> None:
    r = httpx.get(envoy_url + path, headers={"x-request-id": "req-7"})
    assert r.status_code == status, r.text
    expected = ErrorBody(
        status_code=status, type=etype, code="gateway_error", message=message, event_id="req-7"
    ).to_dict()
    assert r.json() == expected
    assert r.text == json.dumps(expected, separators=(",", ":"))  # compact, in field order


def test_rest_lua_takes_its_limits_from_the_route_metadata(
    bare_backend: int, tmp_path: Path
) -> None:
    require_binary("envoy")
    settings = _settings()
    config = gateway.render(settings, tmp_path, api_hosts=[("127.0.0.1", bare_backend)])
    data = json.loads(config.read_text())
    manager = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][-1]
    assert route["match"] == {"prefix": "/"}  # the API's (the console's routes come first)
    route["metadata"]["filter_metadata"][bootstrap.LUA_FILTER]["max_request_headers"] = 20
    config.write_text(json.dumps(data))
    proc = _run_envoy(config, settings)
    try:
        url = f"http://127.0.0.1:{settings.gateway_port}/v1/async/images/generations/x"
        assert httpx.get(url).status_code == 404  # a handful of headers pass
        r = httpx.get(url, headers={f"x-h{i}": "v" for i in range(20)})
        assert r.status_code == 431, r.text
        assert r.json()["error"]["code"] == "headers_too_large"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
