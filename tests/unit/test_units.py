"""Pure units: the state machine, the TTL rules, settings errors, request validation."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from imagejobs.api.requests import Limits, from_json_object
from imagejobs.config import load_settings
from imagejobs.domain.errors import ConfigError, InvalidRequest, InvalidTransition
from imagejobs.domain.jobs import (
    Job,
    Status,
    StoredError,
    StoredRequest,
    resolve_ttl,
)
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef


def job() -> Job:
    return Job(
        id="j",
        kind=Kind.GENERATION,
        request_id="r",
        created_at=time.time(),
        ttl_s=60,
        request=StoredRequest(model=ModelRef.parse("mock/m"), prompt="p"),
    )


def test_transitions_follow_the_table() -> None:
    claimed = job().claim("w", 1.0)
    assert claimed.status is Status.PROCESSING and claimed.deliveries == 1
    again = claimed.claim("w2", 2.0)  # redelivery after a crash
    assert again.deliveries == 2
    failed = again.fail(StoredError(status_code=503, type="x", message="m"), 10.0)
    assert failed.status_code == 503 and failed.expires_at == 70.0
    moves: list[Callable[[Job], Job]] = [lambda j: j.claim("w", 1.0), lambda j: j.cancel(1.0)]
    for move in moves:
        with pytest.raises(InvalidTransition):
            move(failed)
    assert Job.loads(failed.dumps()) == failed


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 3600),
        ("", 3600),
        (" ", 3600),
        ("x", 3600),
        ("1.5", 3600),
        ("-1", 3600),
        ("0", 3600),
        ("5", 5),
        ("10**9", 3600),
    ],
)
def test_ttl_rules(header: str | None, expected: int) -> None:
    assert resolve_ttl(header, 3600, 86400) == expected


def test_ttl_is_capped() -> None:
    assert resolve_ttl("999999", 3600, 86400) == 86400


def test_bad_config_fails_with_the_setting_named(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("gateway_port = 'eighty'\n")
    with pytest.raises(ConfigError, match="gateway_port"):
        load_settings(bad)
    bad.write_text("[providers.nosuch]\n")
    with pytest.raises(ConfigError, match="unknown provider"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_provider_keys_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[providers.openai]\nkeys = [{env = "MY_KEY"}]\n')
    monkeypatch.setenv("MY_KEY", "sk-secret-1234")
    config = load_settings(cfg).provider_config("openai")
    assert config is not None and config.pick_key() == "sk-secret-1234"
    assert "sk-secret" not in repr(config)


def test_unknown_keys_pass_through_and_sixteen_images_max() -> None:
    req = from_json_object(
        Kind.GENERATION, {"model": "mock/m", "prompt": "p", "foo": [1]}, Limits()
    )
    assert req.params["foo"] == [1]
    with pytest.raises(InvalidRequest, match="at most 16 images"):
        from_json_object(
            Kind.EDIT, {"model": "mock/m", "prompt": "p", "image": ["iVBORw0KGgo="] * 17}, Limits()
        )


def _done_job(completed_at: float) -> Job:
    from imagejobs.domain.jobs import ObjectRef, ResultImage, StoredResult

    result = StoredResult(
        created=1,
        images=tuple(
            ResultImage(ref=ObjectRef(object_id=f"o{i}", content_type="image/png", size=3))
            for i in range(2)
        ),
        fields={"output_format": "png"},
        usage={"total_tokens": 5},
        provider="mock",
        model="m",
        latency_ms=3,
    )
    job = Job(
        id="00000000-0000-4000-8000-000000000001",
        kind=Kind.GENERATION,
        request_id="r",
        created_at=completed_at - 0.25,
        ttl_s=60,
        request=StoredRequest(model=ModelRef.parse("mock/m"), prompt="p"),
    )
    return job.claim("w", completed_at - 0.1).complete(result, completed_at)


# What Envoy's transcoder printed for these two jobs while it rendered REST answers (the
# Job message with a Struct result), except that times here always carry milliseconds.
_COMPLETED_JSON = (
    '{"id":"00000000-0000-4000-8000-000000000001","request_id":"r","status":"completed",'
    '"created_at":"2025-11-26T22:20:00.750Z","completed_at":"2025-11-26T22:20:01.000Z",'
    '"expires_at":"2025-11-26T22:21:01.000Z","status_code":200,"result":{"created":1,'
    '"data":[{"index":0,"b64_json":"iVBORy1h"},{"index":1,"b64_json":"iVBORy1i"}],'
    '"output_format":"png","usage":{"total_tokens":5},"extra_fields":{"request_type":'
    '"image_generation","provider":"mock","model_requested":"m","model_used":"m",'
    '"latency":3}}}'
)
_FAILED_JSON = (
    '{"id":"00000000-0000-4000-8000-000000000001","request_id":"r","status":"failed",'
    '"created_at":"2025-11-26T22:20:00.750Z","completed_at":"2025-11-26T22:20:01.000Z",'
    '"expires_at":"2025-11-26T22:21:01.000Z","status_code":429,"error":{"event_id":"e",'
    '"type":"rate_limit_error","is_bifrost_error":true,"status_code":429,"error":{"type":'
    '"rate_limit_error","message":"slow","event_id":"e"},"extra_fields":{"provider":"mock",'
    '"model_requested":"m","request_type":"image_generation"}}}'
)


@pytest.mark.parametrize("failed", [False, True])
def test_job_json_prints_what_the_transcoder_printed(failed: bool) -> None:
    """Every REST answer renders its own JSON (the gRPC Job is typed now); it must stay
    byte for byte what Envoy printed for the Job message, fields in the same order, except
    that times always carry milliseconds (a whole second included)."""
    from imagejobs.api.render import job_json

    job = _done_job(1764195601.0)  # completes on a whole second
    if failed:
        job = _done_job(1764195601.0).model_copy(
            update={
                "status": Status.FAILED,
                "result": None,
                "status_code": 429,
                "error": StoredError(
                    status_code=429, type="rate_limit_error", message="slow", event_id="e"
                ),
            }
        )
    images = [b"\x89PNG-a", b"\x89PNG-b"]
    assert job_json(job, images, "http://h").decode() == (
        _FAILED_JSON if failed else _COMPLETED_JSON
    )
