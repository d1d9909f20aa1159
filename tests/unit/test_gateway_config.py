"""The gateway's config as data, without running Envoy (tests/e2e/test_gateway.py runs it):
the error bodies Envoy makes come from ErrorBody, rest.lua gets every setting it reads
from the route metadata and is shipped untemplated, and gateway/envoy.example.json is
what `imagejobs gateway --print-config` prints."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from imagejobs import gateway
from imagejobs.config import Settings
from imagejobs.domain.errors import ErrorBody
from imagejobs.gateway import bootstrap, envoy, replies
from imagejobs.runtime.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "gateway" / "envoy.example.json"


def _manager(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    return dict(manager["typed_config"])


def _status_of(match: dict[str, Any]) -> int:
    return int(match["status_code_filter"]["comparison"]["value"]["default_value"])


def _built(**settings: Any) -> dict[str, Any]:
    return bootstrap.build(Settings.model_construct(**settings), Path("w/rest.lua"), Path("w/pb"))


def test_a_local_reply_has_the_contract_error_body() -> None:
    mappers = _manager(_built())["local_reply_config"]["mappers"]
    body = mappers[list(replies.LOCAL_REPLY_STATUSES).index(413)]["body_format_override"]
    assert body["content_type"] == "application/json"
    assert body["json_format"] == {
        "event_id": "%STREAM_ID%",
        "type": "invalid_request_error",
        "is_bifrost_error": True,
        "status_code": 413,
        "error": {
            "type": "invalid_request_error",
            "code": "request_too_large",
            "message": "request body too large",
            "event_id": "%STREAM_ID%",
        },
    }


def test_rest_replies_need_the_rest_mark_and_codec_replies_come_last() -> None:
    mappers = _manager(_built())["local_reply_config"]["mappers"]
    rest, codec = mappers[: len(replies.LOCAL_REPLY_STATUSES)], mappers[-2:]
    assert len(mappers) == len(replies.LOCAL_REPLY_STATUSES) + len(replies.CODEC_REPLY_STATUSES)
    for mapper, status in zip(rest, replies.LOCAL_REPLY_STATUSES, strict=True):
        marked, status_filter = mapper["filter"]["and_filter"]["filters"]
        assert marked["metadata_filter"]["matcher"]["filter"] == "imagejobs"
        assert _status_of(status_filter) == status
    for mapper, status in zip(codec, replies.CODEC_REPLY_STATUSES, strict=True):
        assert _status_of(mapper["filter"]) == status
        body = mapper["body_format_override"]["json_format"]
        assert body["event_id"] == body["error"]["event_id"] == replies.CODEC_EVENT_ID
    assert codec[1]["body_format_override"]["json_format"]["error"]["code"] == "headers_too_large"


def _fill(template: str, **values: str) -> str:
    """What rest.lua's fallback_body does: one pass of @NAME@ -> value."""
    return re.sub(r"@([A-Z_]+)@", lambda m: values.get(m.group(1), m.group(0)), template)


@pytest.mark.parametrize(("key", "status", "etype"), [
    ("error_body_4xx", 404, "invalid_request_error"),
    ("error_body_5xx", 503, "api_error"),
])  # fmt: skip
def test_rest_lua_fallback_body_is_the_error_body(key: str, status: int, etype: str) -> None:
    template = replies.fallback_bodies()[key]
    text = _fill(template, STATUS_CODE=str(status), MESSAGE="m @EVENT_ID@", EVENT_ID="e-1")
    expected = ErrorBody(
        status_code=status, type=etype, code="gateway_error", message="m @EVENT_ID@", event_id="e-1"
    )
    assert json.loads(text) == expected.to_dict()
    assert f'"status_code":{status},' in text  # a JSON number, not a string


def test_every_setting_rest_lua_reads_is_in_the_route_metadata() -> None:
    lua = envoy.lua_source().decode()
    wanted = set(re.findall(r'setting\(handle, "(\w+)"\)', lua))
    assert wanted >= {"max_request_headers", "max_request_header_bytes", "error_body_4xx"}
    (host,) = _manager(_built())["route_config"]["virtual_hosts"]
    for route in host["routes"]:
        metadata = route["metadata"]["filter_metadata"][bootstrap.LUA_FILTER]
        assert wanted == set(metadata)
        assert metadata["max_request_headers"] == gateway.MAX_REQUEST_HEADERS
        assert metadata["max_request_header_bytes"] == gateway.MAX_REQUEST_HEADER_BYTES


def test_rest_lua_is_shipped_untemplated() -> None:
    lua = envoy.lua_source().decode()
    assert "function envoy_on_request" in lua
    assert "${" not in lua and "$$" not in lua  # no string.Template left in the source


def test_render_writes_a_working_directory(tmp_path: Path) -> None:
    settings = Settings.model_construct(gateway_port=18080, api_ports=(1, 2))
    config = gateway.render(settings, tmp_path / "gw")
    assert config == tmp_path / "gw" / "envoy.json"
    assert (tmp_path / "gw" / "rest.lua").read_bytes() == envoy.lua_source()
    assert (tmp_path / "gw" / "imagejobs.pb").read_bytes() == envoy.descriptor_set()
    data = json.loads(config.read_text())
    manager = _manager(data)
    lua, transcoder = manager["http_filters"][1:3]
    assert lua["typed_config"]["default_source_code"]["filename"] == str(tmp_path / "gw/rest.lua")
    assert transcoder["typed_config"]["proto_descriptor"] == str(tmp_path / "gw/imagejobs.pb")
    (cluster,) = data["static_resources"]["clusters"]
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [1, 2]


def test_the_example_config_is_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("IMAGEJOBS_")]:
        monkeypatch.delenv(name)  # the example is for the default settings
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["gateway", "--print-config"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "data").exists()  # printing writes nothing
    assert result.stdout == EXAMPLE.read_text(), (
        "gateway/envoy.example.json is stale: see gateway/README.md to regenerate it"
    )


def test_every_file_the_package_reads_is_package_data() -> None:
    # what is not Python must be declared, or a wheel leaves it out (tests/e2e/test_wheel.py
    # runs the wheel itself; this names the missing file at once)
    package = REPO / "service" / "imagejobs"
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["imagejobs"]
    declared = {p for pattern in patterns for p in package.glob(pattern)}
    data = {
        p
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    }
    assert data, "no data files found: is the package where this test looks?"
    assert data <= declared, sorted(str(p.relative_to(package)) for p in data - declared)


def test_the_console_is_served_by_envoy_itself_from_the_working_directory(tmp_path: Path) -> None:
    config = json.loads(gateway.render(Settings.model_construct(), tmp_path / "gw").read_text())
    (host,) = _manager(config)["route_config"]["virtual_hosts"]
    routes = {r["match"].get("path", r["match"].get("prefix")): r for r in host["routes"]}
    assert routes["/console"]["redirect"] == {"path_redirect": "/console/"}
    page = routes["/console/"]["direct_response"]["body"]["filename"]
    assert Path(page).read_bytes() == envoy.console_files()["index.html"]
    assert Path(page).parent == tmp_path / "gw" / "console"
    for path in ("/console/", "/console/console.js", "/console/console.css"):
        route = routes[path]
        off = route["typed_per_filter_config"][bootstrap.TRANSCODER_FILTER]
        assert off["disabled"] is True  # else the transcoder refuses a path that is no RPC
        headers = {
            h["header"]["key"]: h["header"]["value"] for h in route["response_headers_to_add"]
        }
        assert headers["content-security-policy"].startswith("default-src 'none'")
    assert list(routes)[-1] == "/"  # everything else goes to the API
    limit = _manager(config)["route_config"]["max_direct_response_body_size_bytes"]
    assert max(len(data) for data in envoy.console_files().values()) < limit


def test_tracing_is_configured_only_with_an_otlp_endpoint() -> None:
    assert "tracing" not in _manager(_built())
    config = _built(otlp_endpoint="http://collector.internal:4317")
    manager = _manager(config)
    assert manager["tracing"]["provider"]["name"] == "envoy.tracers.opentelemetry"
    sampling = manager["request_id_extension"]["typed_config"]
    assert sampling["use_request_id_for_trace_sampling"] is False
    otlp = config["static_resources"]["clusters"][-1]
    assert otlp["name"] == bootstrap.OTLP_CLUSTER
    address = otlp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "collector.internal", "port_value": 4317}
