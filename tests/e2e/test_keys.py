"""Virtual keys on a stack of its own that configures them (and requires one): every
identity header form, 401s without a key, 400s for an unknown key, ownership across keys
(always 404), rate and concurrency limits (429 with
Retry-After), allowed models (403), TTL capping, and no secret in any log. A second stack
configures keys without requiring one (the gateway's default), and the session stack (no
keys configured) shows the open mode."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from imagejobs.testing import Stack, require_binary, wait_until
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

from tests.conftest import assert_error_body, mock_request, status_word, submit, wait_terminal
from tests.fakes.openai import FakeOpenAI
from tests.fakes.upstream import FakeResponse

pytestmark = pytest.mark.e2e

KEYS = {name: f"sk-bf-{name}-{uuid.uuid4().hex}" for name in ("alpha", "beta", "rate", "conc")}
PROVIDER_KEY = "sk-provider-secret-4c1d9e"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=PROVIDER_KEY) as f:
        yield f


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    config: dict[str, Any] = {
        "providers": {
            "mock": {},
            "openai": {"base_url": fake.url, "keys": [{"env": "TEST_PROVIDER_KEY"}]},
        },
        "require_virtual_key": True,
        "virtual_keys": {
            "alpha": {
                "key_sha256": sha(KEYS["alpha"]),
                "allowed_models": ["mock/*", "openai/gpt-image-2.6-sunburst"],
                "max_ttl_s": 120,
            },
            "beta": {"key_sha256": sha(KEYS["beta"])},
            "rate": {"key_sha256": sha(KEYS["rate"]), "requests_per_minute": 3},
            "conc": {"key_sha256": sha(KEYS["conc"]), "max_concurrent_jobs": 2},
        },
    }
    s = Stack(tmp_path_factory.mktemp("keys"), config, env={"TEST_PROVIDER_KEY": PROVIDER_KEY})
    try:
        s.start()
        yield s
    finally:
        s.stop()


def client(stack: Stack, key: str | None = None) -> httpx.Client:
    headers = {"x-bf-vk": key} if key else {}
    return httpx.Client(base_url=stack.url, timeout=30, headers=headers)


# --- identity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        lambda k: {"x-bf-vk": k},
        lambda k: {"Authorization": f"Bearer {k}"},
        lambda k: {"x-api-key": k},
        lambda k: {"x-goog-api-key": k},
    ],
    ids=["x-bf-vk", "bearer", "x-api-key", "x-goog-api-key"],
)
def test_each_identity_header_form_is_accepted(keyed: Stack, header: Any) -> None:
    with client(keyed) as c:
        r = c.post(
            "/v1/async/images/generations", json=mock_request(), headers=header(KEYS["beta"])
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        got = c.get(f"/v1/async/images/generations/{job_id}", headers=header(KEYS["beta"]))
        assert got.status_code in (200, 202)
        # the same job is the same owner's whichever header form carries the key
        other_form = {"x-bf-vk": KEYS["beta"]}
        assert c.get(f"/v1/async/images/generations/{job_id}", headers=other_form).is_success


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": KEYS["beta"].removeprefix("sk-bf-")},
        {"Authorization": "Basic " + KEYS["beta"]},
    ],
    ids=["none", "no-prefix", "not-bearer"],
)
def test_missing_key_is_401_when_one_is_required(keyed: Stack, headers: dict[str, str]) -> None:
    with client(keyed) as c:
        r = c.post("/v1/async/images/generations", json=mock_request(), headers=headers)
        assert assert_error_body(r, 401)["error"]["code"] == "missing_virtual_key"
        r = c.get(f"/v1/async/images/generations/{uuid.uuid4()}", headers=headers)
        assert_error_body(r, 401)
        assert_error_body(c.get("/v1/async/images/jobs", headers=headers), 401)


@pytest.mark.parametrize(
    "headers",
    [{"x-bf-vk": "sk-bf-not-a-real-key"}, {"Authorization": "Bearer sk-bf-forged"}],
    ids=["unknown", "unknown-bearer"],
)
def test_unknown_key_is_400(keyed: Stack, headers: dict[str, str]) -> None:
    """As the gateway we follow answers an unknown virtual key: 400, not 401."""
    with client(keyed) as c:
        r = c.post("/v1/async/images/generations", json=mock_request(), headers=headers)
        assert assert_error_body(r, 400)["error"]["code"] == "invalid_virtual_key"
        r = c.get(f"/v1/async/images/generations/{uuid.uuid4()}", headers=headers)
        assert assert_error_body(r, 400)["error"]["code"] == "invalid_virtual_key"
        r = c.get("/v1/async/images/jobs", headers=headers)
        assert assert_error_body(r, 400)["error"]["code"] == "invalid_virtual_key"


def test_grpc_metadata_carries_the_key(keyed: Stack) -> None:
    with grpc.insecure_channel(keyed.grpc_gateway) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        request = jobs_pb2.SubmitImageJobRequest(
            kind=jobs_pb2.JOB_KIND_GENERATION,
            request=jobs_pb2.ImageRequest(model="mock/m", prompt="g"),
        )
        job = stub.SubmitImageJob(request, metadata=(("authorization", f"Bearer {KEYS['beta']}"),))
        assert status_word(job) == "pending"
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitImageJob(request)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- ownership -----------------------------------------------------------------------------


def test_another_key_sees_nothing_of_a_job(keyed: Stack) -> None:
    with client(keyed, KEYS["alpha"]) as owner, client(keyed, KEYS["beta"]) as other:
        done = submit(owner, mock_request("done")).json()["id"]
        wait_terminal(owner, done)
        running = submit(owner, mock_request("running", ms=20_000)).json()["id"]
        base = "/v1/async/images/generations"
        for path in (f"{base}/{done}", f"{base}/{done}/images/0", f"{base}/{running}"):
            assert_error_body(other.get(path), 404, "job not found or expired")
        assert_error_body(other.get(f"{base}/{running}", params={"wait": 2}), 404)
        assert_error_body(other.get(f"{base}/{running}/events"), 404)
        assert_error_body(other.delete(f"{base}/{running}"), 404)
        theirs = {j["id"] for j in other.get("/v1/async/images/jobs").json().get("jobs", [])}
        assert not theirs & {done, running}
        listed = [j["id"] for j in owner.get("/v1/async/images/jobs").json()["jobs"]]
        assert set(listed) >= {done, running}
        assert owner.delete(f"{base}/{running}").status_code == 200  # the owner still can
    with grpc.insecure_channel(keyed.grpc_direct) as channel:
        stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(
                stub.WatchJob(
                    jobs_pb2.WatchJobRequest(kind=jobs_pb2.JOB_KIND_GENERATION, job_id=done),
                    metadata=(("x-bf-vk", KEYS["beta"]),),
                )
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --- keys configured but not required: the gateway's default --------------------------------


@pytest.fixture(scope="module")
def optional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Keys configured, `require_virtual_key` left at its default (false)."""
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    config: dict[str, Any] = {"virtual_keys": {"beta": {"key_sha256": sha(KEYS["beta"])}}}
    s = Stack(tmp_path_factory.mktemp("optional-keys"), config)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_without_require_virtual_key_anonymous_callers_are_served(optional: Stack) -> None:
    with client(optional) as anonymous:
        job_id = submit(anonymous, mock_request("anon")).json()["id"]
        assert wait_terminal(anonymous, job_id).json()["status"] == "completed"
        listed = [j["id"] for j in anonymous.get("/v1/async/images/jobs").json()["jobs"]]
        assert job_id in listed
    with client(optional, "sk-bf-not-a-real-key") as unknown:
        r = submit(unknown, mock_request())
        assert assert_error_body(r, 400)["error"]["code"] == "invalid_virtual_key"
    assert "calls without one are served anonymously" in optional.log(
        f"api-{optional.api_ports[0]}"
    )


@pytest.mark.parametrize("mode", ["keys-optional", "open"])
def test_a_job_submitted_without_a_key_is_public(optional: Stack, stack: Stack, mode: str) -> None:
    """As the gateway's own tests check: any caller may poll an anonymous job, with a key or
    without; a keyed job stays its key's alone."""
    target = optional if mode == "keys-optional" else stack
    key = KEYS["beta"] if mode == "keys-optional" else f"sk-bf-{uuid.uuid4().hex}"
    with client(target) as anonymous, client(target, key) as keyed_caller:
        public = submit(anonymous, mock_request("public", ms=300)).json()["id"]
        base = "/v1/async/images/generations"
        assert keyed_caller.get(f"{base}/{public}").status_code in (200, 202)
        assert wait_terminal(keyed_caller, public).json()["status"] == "completed"
        assert keyed_caller.get(f"{base}/{public}/images/0").status_code == 200
        private = submit(keyed_caller, mock_request("private")).json()["id"]
        wait_terminal(keyed_caller, private)
        assert_error_body(anonymous.get(f"{base}/{private}"), 404)
        # lists stay per caller: a keyed caller's list does not show others' public jobs
        mine = [j["id"] for j in keyed_caller.get("/v1/async/images/jobs").json()["jobs"]]
        assert public not in mine and private in mine


# --- quotas --------------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(keyed: Stack) -> None:
    with client(keyed, KEYS["rate"]) as c:
        statuses = [submit(c, mock_request(f"r{i}")).status_code for i in range(3)]
        assert statuses == [202, 202, 202]
        r = submit(c, mock_request("one too many"))
        assert assert_error_body(r, 429)["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
    with client(keyed, KEYS["beta"]) as other:  # the limit is per key
        assert submit(other, mock_request()).status_code == 202


def test_concurrency_limit_is_429_until_a_job_ends(keyed: Stack) -> None:
    with client(keyed, KEYS["conc"]) as c:
        first = submit(c, mock_request("c1", ms=20_000)).json()["id"]
        second = submit(c, mock_request("c2", ms=300)).json()["id"]
        r = submit(c, mock_request("c3"))
        assert assert_error_body(r, 429)["error"]["code"] == "concurrency_limited"
        assert int(r.headers["retry-after"]) >= 1
        wait_terminal(c, second)  # completion frees its slot
        third = submit(c, mock_request("c3", ms=20_000))
        assert third.status_code == 202, third.text
        assert_error_body(submit(c, mock_request("c4")), 429)
        assert c.delete(f"/v1/async/images/generations/{first}").status_code == 200  # cancel
        fourth = submit(c, mock_request("c4"))
        assert fourth.status_code == 202, fourth.text
        c.delete(f"/v1/async/images/generations/{third.json()['id']}")


def test_a_model_the_key_may_not_use_is_403(keyed: Stack) -> None:
    with client(keyed, KEYS["alpha"]) as c:
        r = submit(c, mock_request(model="openai/gpt-image-2.6-flare"))
        err = assert_error_body(r, 403)
        assert err["error"]["code"] == "model_not_allowed" and err["error"]["param"] == "model"
        r = submit(c, mock_request() | {"fallbacks": ["openai/gpt-image-2.5-sunburst"]})
        assert assert_error_body(r, 403)["error"]["param"] == "fallbacks"
        assert submit(c, mock_request(model="mock/anything")).status_code == 202


def test_ttl_above_the_keys_maximum_is_capped(keyed: Stack) -> None:
    with client(keyed, KEYS["alpha"]) as c:
        r = submit(c, mock_request(), **{"x-bf-async-job-result-ttl": "3600"})
        assert r.status_code == 202
        job = wait_terminal(c, r.json()["id"]).json()
    from datetime import datetime

    def t(s: str) -> float:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

    assert t(job["expires_at"]) - t(job["completed_at"]) == pytest.approx(120, abs=0.01)


# --- secrets -------------------------------------------------------------------------------


def test_no_secret_in_any_log_or_job(keyed: Stack, fake: FakeOpenAI) -> None:
    """After a run that used every virtual key and the provider key (and an upstream
    error that echoes the provider key), no log line or job body holds a secret."""
    fake.fail_next(
        FakeResponse(
            401,
            {
                "error": {
                    "message": f"Incorrect API key provided: {PROVIDER_KEY}.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                    "param": None,
                }
            },
        )
    )
    bodies = []
    with client(keyed, KEYS["alpha"]) as c:
        failed = submit(c, {"model": "openai/gpt-image-2.6-sunburst", "prompt": "x"}).json()["id"]
        bodies.append(wait_terminal(c, failed).text)
        ok = submit(c, {"model": "openai/gpt-image-2.6-sunburst", "prompt": "y"}).json()["id"]
        bodies.append(wait_terminal(c, ok).text)
        bodies.append(c.get("/v1/async/images/jobs").text)
    for key in KEYS.values():
        with client(keyed, key) as c:
            r = submit(c, mock_request("secret check"))
            if r.status_code == 202:
                bodies.append(wait_terminal(c, r.json()["id"]).text)
    assert json.loads(bodies[0])["status"] == "failed", bodies[0]
    assert "redacted" in json.loads(bodies[0])["error"]["error"]["message"], bodies[0]
    wait_until(lambda: all(n in keyed.procs for n in ("gateway", "nats")), 1, "procs")
    logs = {name: keyed.log(name) for name in keyed.procs}
    assert all(logs.values())
    for secret in [PROVIDER_KEY, *KEYS.values()]:
        for name, text in logs.items():
            assert secret not in text, f"{name} log leaks a secret"
        for text in bodies:
            assert secret not in text
        assert sha(secret) not in "".join(logs.values())


def test_keyed_stack_says_keys_are_required(keyed: Stack) -> None:
    api_log = keyed.log(f"api-{keyed.api_ports[0]}")
    assert "4 virtual keys configured: every call needs one" in api_log


def test_open_mode_is_announced_and_accepts_anyone(stack: Stack) -> None:
    assert "running OPEN (development mode)" in stack.log(f"api-{stack.api_ports[0]}")
    with client(stack) as c:
        assert submit(c, mock_request()).status_code == 202
    with client(stack, "sk-bf-anything-goes") as c:
        assert submit(c, mock_request()).status_code == 202
