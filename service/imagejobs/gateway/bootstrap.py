"""Envoy's bootstrap config, as data: one listener for REST (HTTP/1.1 and h2c) and native
gRPC (h2c) in front of the API processes.

The HTTP filters, in order: health check (`/health` answers 200 only while an API
backend is healthy), Lua (rest.lua: REST shaping), the gRPC-JSON transcoder (REST <->
gRPC, from the descriptor set), the router. rest.lua's limits and fallback error bodies
reach it as the route's metadata under the Lua filter's name (`handle:metadata()`), so
its source is shipped and run as it is, never templated.

With `otlp_endpoint` set, Envoy traces every request with its OpenTelemetry tracer
(honouring a caller's `traceparent`, passing its own on to the API) and exports the spans
to that collector as `imagejobs-gateway`.

The web console (`/console/`) is static files Envoy answers itself (direct responses,
read from the working directory when Envoy starts), with a Content-Security-Policy that
lets the page load and call nothing but this listener; every other path goes to the API.

Pure: `build()` returns a dict; envoy.py writes it (with the files it names) to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imagejobs.config import Settings
from imagejobs.gateway import replies

# REST request header limits, enforced by rest.lua with a 431 and the error body. Bytes are
# counted as HTTP/2 and gRPC count them (name + value + 32 per header; path and host twice,
# since Envoy forwards copies of both), so that the metadata reaching the API stays under
# grpcio's default 8 KiB limit (beyond it grpcio refuses calls at random, up to 16 KiB,
# and always beyond; the refusal would read as a 429). Envoy's codec limits below
# (64 KiB, 200 headers) are a backstop above these.
MAX_REQUEST_HEADERS = 100
MAX_REQUEST_HEADER_BYTES = 7 * 1024
CODEC_MAX_HEADERS_KB = 64
CODEC_MAX_HEADERS = 200

LUA_FILTER = "envoy.filters.http.lua"
TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
BUFFER_LIMIT_BYTES = 1024 * 1024  # per connection, downstream and upstream
STREAM_IDLE_TIMEOUT = "300s"
GRPC_SERVICE = "imagejobs.v1.ImageJobService"
API_CLUSTER = "api"
OTLP_CLUSTER = "otlp"
GATEWAY_SERVICE_NAME = "imagejobs-gateway"
OTLP_DEFAULT_PORT = 4317

CONSOLE_PATH = "/console/"
# file -> its content type; index.html is the page at CONSOLE_PATH itself
CONSOLE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    # JavaScript modules (`import`), which browsers load natively: no build step
    "console.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "form.js": "text/javascript; charset=utf-8",
}
CONSOLE_MAX_FILE_BYTES = 256 * 1024  # Envoy refuses a larger direct-response body
# the page may load and call its own origin only; images are fetched with the key and
# shown from blob: URLs
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    """A `typed_config` of the protobuf message `type_name`."""
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def lua_metadata() -> dict[str, Any]:
    """What rest.lua reads with `handle:metadata():get(name)`."""
    return {
        "max_request_headers": MAX_REQUEST_HEADERS,
        "max_request_header_bytes": MAX_REQUEST_HEADER_BYTES,
        **replies.fallback_bodies(),
    }


def _console_routes(console_dir: Path) -> list[dict[str, Any]]:
    """`/console` (redirected to `/console/`), the page and its files, for GET and HEAD;
    another method falls through to the API's routes (a 404 error body). The transcoder
    is off on them: it would refuse a path that is no gRPC method before the router
    answers."""
    method = {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}
    off = {
        TRANSCODER_FILTER: _typed("envoy.config.route.v3.FilterConfig", disabled=True),
    }
    routes: list[dict[str, Any]] = [
        {
            "match": {"path": CONSOLE_PATH.rstrip("/"), "headers": [method]},
            "redirect": {"path_redirect": CONSOLE_PATH},
            "typed_per_filter_config": off,
        }
    ]
    for name, content_type in CONSOLE_FILES.items():
        path = CONSOLE_PATH if name == "index.html" else CONSOLE_PATH + name
        headers = {
            "content-type": content_type,
            "content-security-policy": CONSOLE_CSP,
            "x-content-type-options": "nosniff",
            "cache-control": "no-cache",
        }
        routes.append(
            {
                "match": {"path": path, "headers": [method]},
                "direct_response": {"status": 200, "body": {"filename": str(console_dir / name)}},
                "response_headers_to_add": [
                    {
                        "header": {"key": k, "value": v},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                    for k, v in headers.items()
                ],
                "typed_per_filter_config": off,
            }
        )
    return routes


def _route_config(console_dir: Path) -> dict[str, Any]:
    api = {
        "match": {"prefix": "/"},
        # long-polls and streams are bounded by the servicer, not here
        "route": {"cluster": API_CLUSTER, "timeout": "0s"},
    }
    routes = [*_console_routes(console_dir), api]
    for route in routes:  # rest.lua runs on every request and reads these
        route["metadata"] = {"filter_metadata": {LUA_FILTER: lua_metadata()}}
    host = {"name": "imagejobs", "domains": ["*"], "routes": routes}
    return {
        "name": "local",
        "virtual_hosts": [host],
        "max_direct_response_body_size_bytes": CONSOLE_MAX_FILE_BYTES,
    }


def _http_filters(settings: Settings, lua_path: Path, descriptor_path: Path) -> list[Any]:
    health = _typed(
        "envoy.extensions.filters.http.health_check.v3.HealthCheck",
        pass_through_mode=False,
        headers=[{"name": ":path", "string_match": {"exact": "/health"}}],
        cluster_min_healthy_percentages={API_CLUSTER: {"value": 1}},
    )
    lua = _typed(
        "envoy.extensions.filters.http.lua.v3.Lua",
        default_source_code={"filename": str(lua_path)},
    )
    transcoder = _typed(
        "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        proto_descriptor=str(descriptor_path),
        services=[GRPC_SERVICE],
        print_options={"preserve_proto_field_names": True},
        convert_grpc_status=True,
        ignore_unknown_query_parameters=True,
        request_validation_options={"reject_unknown_method": True},
        max_request_body_size=settings.max_body_bytes,
        max_response_body_size=settings.max_body_bytes * 2,
    )
    router = _typed("envoy.extensions.filters.http.router.v3.Router")
    return [
        {"name": "envoy.filters.http.health_check", "typed_config": health},
        {"name": LUA_FILTER, "typed_config": lua},
        {"name": TRANSCODER_FILTER, "typed_config": transcoder},
        {"name": "envoy.filters.http.router", "typed_config": router},
    ]


def _listener(
    settings: Settings, lua_path: Path, descriptor_path: Path, console_dir: Path
) -> dict[str, Any]:
    manager = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="ingress",
        codec_type="AUTO",
        max_request_headers_kb=CODEC_MAX_HEADERS_KB,
        stream_idle_timeout=STREAM_IDLE_TIMEOUT,
        common_http_protocol_options={"max_headers_count": CODEC_MAX_HEADERS},
        route_config=_route_config(console_dir),
        local_reply_config=replies.local_reply_config(),
        http_filters=_http_filters(settings, lua_path, descriptor_path),
    )
    if settings.otlp_endpoint:
        manager["tracing"] = _tracing()
        # Envoy would otherwise decide sampling from x-request-id (and rewrite a UUID one
        # to record that decision); callers send any request id they like
        manager["request_id_extension"] = {
            "typed_config": _typed(
                "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
                pack_trace_reason=False,
                use_request_id_for_trace_sampling=False,
            )
        }
    return {
        "name": "main",
        "address": _address(settings.host, settings.gateway_port),
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _tracing() -> dict[str, Any]:
    """Every request traced (the collector decides what to keep) and exported over OTLP."""
    otel = _typed(
        "envoy.config.trace.v3.OpenTelemetryConfig",
        grpc_service={"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
        service_name=GATEWAY_SERVICE_NAME,
    )
    return {
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": otel},
        "random_sampling": {"value": 100},
    }


def _http2() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": {"max_concurrent_streams": 1000}},
        )
    }


def _otlp_cluster(endpoint: str) -> dict[str, Any]:
    """The OTLP/gRPC collector at `endpoint` (`http://host:port`)."""
    url = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    address = _address(url.hostname or "127.0.0.1", url.port or OTLP_DEFAULT_PORT)
    return {
        "name": OTLP_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": _http2(),
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def _cluster(api_hosts: list[tuple[str, int]]) -> dict[str, Any]:
    """The API processes, over h2c, each checked with the gRPC health protocol."""
    endpoints = [{"endpoint": {"address": _address(h, p)}} for h, p in api_hosts]
    return {
        "name": API_CLUSTER,
        "type": "STRICT_DNS",
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": "2s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "typed_extension_protocol_options": _http2(),
        "load_assignment": {
            "cluster_name": API_CLUSTER,
            "endpoints": [{"lb_endpoints": endpoints}],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "no_traffic_interval": "2s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
    }


def build(
    settings: Settings,
    lua_path: Path,
    descriptor_path: Path,
    api_hosts: list[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """The bootstrap config. `lua_path` and `descriptor_path` are where rest.lua and the
    descriptor set are (or will be) on disk, the console's files in `console/` beside
    them; `api_hosts` (host, port) defaults to the settings' API ports on `api_host`."""
    hosts = api_hosts or [(settings.api_host, p) for p in settings.all_api_ports]
    console_dir = lua_path.parent / "console"
    return {
        "admin": {"address": _address("127.0.0.1", settings.gateway_admin_port)},
        "static_resources": {
            "listeners": [_listener(settings, lua_path, descriptor_path, console_dir)],
            "clusters": [_cluster(hosts)]
            + ([_otlp_cluster(settings.otlp_endpoint)] if settings.otlp_endpoint else []),
        },
    }
