"""Pure units: the state machine, the TTL rules, settings errors, request validation."""

from __future__ import annotations

import time

import pytest
from imagejobs.config import load_settings
from imagejobs.errors import ConfigError, InvalidRequest
from imagejobs.jobs import InvalidTransition, Job, Status, StoredError, StoredRequest, resolve_ttl
from imagejobs.kinds import Kind
from imagejobs.requests import Limits, from_json_object


def job() -> Job:
    return Job(
        id="j",
        kind=Kind.GENERATION,
        request_id="r",
        created_at=time.time(),
        ttl_s=60,
        request=StoredRequest(model="mock/m", prompt="p"),
    )


def test_transitions_follow_the_table() -> None:
    claimed = job().claim("w", 1.0)
    assert claimed.status is Status.PROCESSING and claimed.deliveries == 1
    again = claimed.claim("w2", 2.0)  # redelivery after a crash
    assert again.deliveries == 2
    failed = again.fail(StoredError(status_code=503, type="x", message="m"), 10.0)
    assert failed.status_code == 503 and failed.expires_at == 70.0
    for move in (lambda j: j.claim("w", 1.0), lambda j: j.cancel(1.0)):
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


def test_bad_config_fails_with_the_setting_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "c.toml"
    bad.write_text("gateway_port = 'eighty'\n")
    with pytest.raises(ConfigError, match="gateway_port"):
        load_settings(bad)
    bad.write_text("[providers.nosuch]\n")
    with pytest.raises(ConfigError, match="unknown provider"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_provider_keys_come_from_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
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
