"""openapi/openapi.yaml agrees with what the gateway serves: it is valid OpenAPI 3.1, it
describes exactly the proto's HTTP bindings (plus /health), and real responses from the
stack validate against its schemas, status by status and content type by content type."""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from google.api import annotations_pb2
from imagejobs.v1 import jobs_pb2
from openapi_spec_validator import validate as validate_spec
from PIL import Image
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.conftest import submit, wait_terminal

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
SPEC_URI = "urn:imagejobs:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(SPEC))
METHODS = ("get", "put", "post", "delete", "patch")
GEN = {"model": "mock/m", "prompt": "a heron", "size": "16x16"}

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time")
def _rfc3339_utc_millis(value: object) -> bool:
    """Our times exactly: RFC 3339, UTC, milliseconds (none on a whole second: protobuf's
    JSON mapping prints 0, 3, 6 or 9 digits, and ours are whole milliseconds)."""
    return not isinstance(value, str) or bool(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", value)
    )


# --- the document ------------------------------------------------------------------------


def test_the_spec_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1")
    validate_spec(SPEC)


def _binding_paths() -> set[tuple[str, str]]:
    """(METHOD, path) of every google.api.http binding, `{kind=edits}` written `edits`."""
    service = jobs_pb2.DESCRIPTOR.services_by_name["ImageJobService"]
    found: set[tuple[str, str]] = set()
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        for binding in [rule, *rule.additional_bindings]:
            verb = binding.WhichOneof("pattern")
            assert verb in METHODS, (method.name, verb)
            path = re.sub(r"\{(\w+)=([^}]+)\}", r"\2", getattr(binding, verb))
            found.add((verb.upper(), path))
    return found


def _spec_paths() -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the spec, `{kind}` expanded to its enum."""
    kinds = SPEC["components"]["schemas"]["Kind"]["enum"]
    found: set[tuple[str, str]] = set()
    for template, item in SPEC["paths"].items():
        for verb in METHODS:
            if verb not in item:
                continue
            paths = (
                [template.replace("{kind}", k) for k in kinds]
                if "{kind}" in template
                else [template]
            )
            found.update((verb.upper(), p) for p in paths)
    return found


def test_every_proto_binding_is_in_the_spec_and_nothing_else() -> None:
    bindings = _binding_paths()
    # 3 submits, 3 x (get, delete, image, events, deliveries, request), the job list, the
    # models, the stats, the usage report
    assert len(bindings) == 25
    assert _spec_paths() - {("GET", "/health")} == bindings


def test_every_operation_documents_the_error_body() -> None:
    for template, item in SPEC["paths"].items():
        for verb in METHODS:
            if verb not in item or template == "/health":
                continue
            responses = item[verb]["responses"]
            for status in ("400", "431", "503"):
                assert status in responses, (verb, template, status)
            for status, response in responses.items():
                if int(status) >= 400:
                    schema = _resolve(response)["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


# --- validating live responses -----------------------------------------------------------


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def validate(data: Any, schema: str) -> None:
    """Assert `data` is valid against the spec's `components/schemas/<schema>`."""
    _validate(data, f"/components/schemas/{schema}")


def _validate(data: Any, pointer: str) -> None:
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"}, registry=REGISTRY, format_checker=FORMATS
    )
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def check(r: httpx.Response, method: str, template: str) -> Any:
    """Assert the response is one the spec documents for this operation: its status, its
    content type, and its body against the schema. Returns the parsed body."""
    operation = SPEC["paths"][template][method.lower()]
    status = str(r.status_code)
    assert status in operation["responses"], f"{method} {template}: undocumented {status}"
    response = _resolve(operation["responses"][status])
    content = response.get("content")
    if not content:
        assert not r.content, r.content[:200]
        return None
    media = r.headers["content-type"].split(";")[0].strip()
    assert media in content, f"{method} {template} {status}: undocumented {media}"
    # the schema's location inside the document, so that its $refs resolve
    if "$ref" in operation["responses"][status]:
        base = operation["responses"][status]["$ref"].removeprefix("#")
    else:
        base = _pointer("paths", template, method.lower(), "responses", status)
    pointer = base + _pointer("content", media, "schema")
    if media == "application/json":
        body = r.json()
        _validate(body, pointer)
        return body
    if media == "text/event-stream":
        events = parse_sse(r.text)
        for event in events:
            _validate(event, pointer)
            _validate(json.loads(event["data"]), "/components/schemas/Job")
        return events
    return r.content


def parse_sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            events.append(fields)
    return events


JOB = "/v1/async/images/{kind}/{job_id}"
GENERATIONS = "/v1/async/images/generations"


@pytest.fixture
def api(client: httpx.Client) -> httpx.Client:
    """The session client with a virtual key of its own (the list is this test's jobs)."""
    client.headers["x-bf-vk"] = f"sk-bf-openapi-{uuid.uuid4().hex}"
    return client


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (0, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_submit_202_and_poll_202_then_200(api: httpx.Client) -> None:
    r = submit(api, {**GEN, "mock_latency_ms": 1500})
    job = check(r, "POST", GENERATIONS)
    assert r.status_code == 202 and job["status"] == "pending"
    running = api.get(f"/v1/async/images/generations/{job['id']}")
    assert running.status_code == 202
    check(running, "GET", JOB)
    done = api.get(f"/v1/async/images/generations/{job['id']}", params={"wait": 30})
    assert done.status_code == 200
    assert check(done, "GET", JOB)["status"] == "completed"


def test_edit_and_variation_submits(api: httpx.Client) -> None:
    r = api.post(
        "/v1/async/images/edits",
        data={"model": "mock/m", "prompt": "add a moon"},
        files=[("image[]", ("a.png", png(16, 16), "image/png"))],
    )
    assert r.status_code == 202
    job = check(r, "POST", "/v1/async/images/edits")
    done = wait_terminal(api, job["id"], "edits")
    assert check(done, "GET", JOB)["status"] == "completed"
    r = api.post(
        "/v1/async/images/variations",
        data={"model": "mock/m"},
        files=[("image", ("a.png", png(16, 16), "image/png"))],
    )
    assert r.status_code == 202
    check(r, "POST", "/v1/async/images/variations")


def test_failed_and_url_results_and_the_image(api: httpx.Client) -> None:
    failed = submit(api, {**GEN, "mock_fail_status": 422})
    body = check(wait_terminal(api, failed.json()["id"]), "GET", JOB)
    assert body["status"] == "failed" and body["error"]["status_code"] == 422

    r = submit(api, {**GEN, "response_format": "url", "n": 2})
    done = check(wait_terminal(api, r.json()["id"]), "GET", JOB)
    url = done["result"]["data"][1]["url"]
    image = api.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    check(image, "GET", "/v1/async/images/{kind}/{job_id}/images/{index}")
    missing = api.get(url.rsplit("/", 1)[0] + "/7")
    assert missing.status_code == 404
    check(missing, "GET", "/v1/async/images/{kind}/{job_id}/images/{index}")


def test_404_400_and_409s(api: httpx.Client) -> None:
    r = api.get(f"/v1/async/images/edits/{uuid.uuid4()}")
    assert r.status_code == 404
    check(r, "GET", JOB)
    r = submit(api, {"model": "nosuch/m", "prompt": "p"})
    assert r.status_code == 400
    check(r, "POST", GENERATIONS)
    r = api.get(f"/v1/async/images/generations/{uuid.uuid4()}", params={"wait": -1})
    assert r.status_code == 400
    check(r, "GET", JOB)

    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = submit(api, GEN, **key)
    assert first.status_code == 202
    reused = submit(api, {**GEN, "prompt": "another"}, **key)
    assert reused.status_code == 409
    assert check(reused, "POST", GENERATIONS)["error"]["code"] == "idempotency_key_reused"

    wait_terminal(api, first.json()["id"])
    again = api.delete(f"/v1/async/images/generations/{first.json()['id']}")
    assert again.status_code == 409
    assert check(again, "DELETE", JOB)["error"]["code"] == "job_not_cancellable"


def test_cancel_and_events(api: httpx.Client) -> None:
    r = submit(api, {**GEN, "mock_latency_ms": 5000})
    job_id = r.json()["id"]
    cancelled = api.delete(f"/v1/async/images/generations/{job_id}")
    assert cancelled.status_code == 200
    body = check(cancelled, "DELETE", JOB)
    assert body["status"] == "cancelled" and body["status_code"] == 499
    events = api.get(f"/v1/async/images/generations/{job_id}/events")
    assert events.status_code == 200
    parsed = check(events, "GET", "/v1/async/images/{kind}/{job_id}/events")
    assert json.loads(parsed[-1]["data"])["status"] == "cancelled"
    missing = api.get(f"/v1/async/images/generations/{uuid.uuid4()}/events")
    assert missing.status_code == 404
    check(missing, "GET", "/v1/async/images/{kind}/{job_id}/events")


def test_list_empty_and_full(api: httpx.Client) -> None:
    empty = api.get("/v1/async/images/jobs")
    assert empty.status_code == 200
    # an empty page still has both keys (clients index `jobs`)
    assert check(empty, "GET", "/v1/async/images/jobs") == {"jobs": [], "next_page_token": ""}
    ids = [submit(api, {**GEN, "response_format": "url"}).json()["id"] for _ in range(3)]
    for job_id in ids:
        wait_terminal(api, job_id)
    page = api.get("/v1/async/images/jobs", params={"limit": 2, "status": "completed"})
    assert page.status_code == 200
    body = check(page, "GET", "/v1/async/images/jobs")
    assert len(body["jobs"]) == 2 and body["next_page_token"]
    bad = api.get("/v1/async/images/jobs", params={"status": "nope"})
    assert bad.status_code == 400
    check(bad, "GET", "/v1/async/images/jobs")


def test_deliveries_of_a_job_without_a_webhook_and_of_an_unknown_job(api: httpx.Client) -> None:
    job = check(submit(api, GEN), "POST", GENERATIONS)
    path = "/v1/async/images/{kind}/{job_id}/deliveries"
    r = api.get(f"/v1/async/images/generations/{job['id']}/deliveries")
    assert r.status_code == 200
    assert check(r, "GET", path) == {"deliveries": []}
    missing = api.get(f"/v1/async/images/generations/{uuid.uuid4()}/deliveries")
    assert missing.status_code == 404
    check(missing, "GET", path)
    unknown = submit(api, GEN, **{"x-bf-async-webhook": "nosuch"})
    assert unknown.status_code == 400
    assert check(unknown, "POST", GENERATIONS)["error"]["code"] == "webhook_not_found"


def test_the_delivery_schema_holds_its_presence_rules() -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    base = {
        "webhook_id": "j.async_job.completed",
        "endpoint": "orders",
        "event": "async_job.completed",
        "created_at": now,
        "endpoint_gone": False,
        "total_attempts": 1,
        "round": 0,
        "attempts": [
            {"attempted_at": now, "status_code": 200, "duration_ms": 3, "outcome": "delivered"}
        ],
    }
    validate({**base, "status": "delivered"}, "WebhookDelivery")
    validate({**base, "status": "pending", "next_attempt_at": now}, "WebhookDelivery")
    with pytest.raises(AssertionError):  # only a pending delivery has a next attempt
        validate({**base, "status": "delivered", "next_attempt_at": now}, "WebhookDelivery")
    with pytest.raises(AssertionError):
        validate({**base, "status": "lost"}, "WebhookDelivery")


def test_the_model_listing(api: httpx.Client) -> None:
    r = api.get("/v1/async/images/models")
    assert r.status_code == 200
    body = check(r, "GET", "/v1/async/images/models")
    assert {p["name"] for p in body["providers"]} >= {"mock", "openai"}
    check(
        api.get("/v1/async/images/models", headers={"x-pad": "a" * 10_000}),
        "GET",
        "/v1/async/images/models",
    )
    r = submit(api, {**GEN, "model": "openai/dall-e-2"})
    assert r.status_code == 400
    assert check(r, "POST", GENERATIONS)["error"]["code"] == "model_retired"


def test_a_jobs_request_and_the_stats(api: httpx.Client) -> None:
    job = check(submit(api, {**GEN, "fallbacks": ["mock/b"]}), "POST", GENERATIONS)
    path = "/v1/async/images/{kind}/{job_id}/request"
    body = check(api.get(f"/v1/async/images/generations/{job['id']}/request"), "GET", path)
    assert body["model"] == "mock/m" and body["prompt"] == "a heron"
    assert body["params"]["size"] == "16x16" and body["fallbacks"] == ["mock/b"]
    other = api.get(f"/v1/async/images/generations/{job['id']}/request", headers={"x-bf-vk": ""})
    assert other.status_code == 404  # another caller's job
    check(other, "GET", path)
    stats = check(api.get("/v1/async/images/stats"), "GET", "/v1/async/images/stats")
    assert stats["queue"]["max_jobs"] > 0 and len(stats["workers"]) >= 1


def test_envoys_own_errors_and_health(api: httpx.Client, stack: Any) -> None:
    r = api.post(
        GENERATIONS,
        content=b"x" * (stack.settings.max_body_bytes + 1),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    check(r, "POST", GENERATIONS)
    r = api.get("/v1/async/images/jobs", headers={"x-pad": "a" * 10_000})
    assert r.status_code == 431
    check(r, "GET", "/v1/async/images/jobs")
    r = api.get("/v1/async/images/jobs?limit=notanumber")
    assert r.status_code == 400
    check(r, "GET", "/v1/async/images/jobs")
    r = api.get("/health")
    assert r.status_code == 200
    check(r, "GET", "/health")


def test_the_job_schema_rejects_fields_out_of_place() -> None:
    """The presence rules are in the schema (so the live checks above mean something)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    pending = {"id": str(uuid.uuid4()), "request_id": "r", "status": "pending", "created_at": now}
    _validate(pending, "/components/schemas/Job")
    extras: list[dict[str, object]] = [
        {"status_code": 200},
        {"result": {"data": []}},
        {"completed_at": now},
    ]
    for extra in extras:
        with pytest.raises(AssertionError):
            _validate({**pending, **extra}, "/components/schemas/Job")
    with pytest.raises(AssertionError):  # completed without a result
        _validate(
            {**pending, "status": "completed", "completed_at": now, "expires_at": now},
            "/components/schemas/Job",
        )
    with pytest.raises(AssertionError):  # not our time format
        _validate({**pending, "created_at": "2026-01-01 10:00"}, "/components/schemas/Job")
