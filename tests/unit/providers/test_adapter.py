"""The adapter base every vendor shares: the preamble (operation check, configuration
check, scrubbing of secrets), the one bad-response error, and each vendor's own defaults
as the registry exposes them to the settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from imagejobs.config import Settings, load_settings
from imagejobs.domain.errors import ConfigError, ProviderError
from imagejobs.domain.kinds import Kind
from imagejobs.providers import registry
from imagejobs.providers.adapter import REDACTED, Adapter, Vendor, scrub
from imagejobs.providers.base import (
    ImageInput,
    ProviderConfig,
    ProviderNotConfigured,
    ProviderRequest,
    ProviderResult,
    UnsupportedOperation,
    WeightedKey,
)
from imagejobs.store.protocols import ObjectStore, ProviderLimits
from imagejobs.worker.runner import JobRunner

from tests.fakes.upstream import FakeRequest, FakeResponse, FakeUpstream

KEY = "sk-adapter-test-7f3a9c"
SECRET = "aws-secret-adapter-test-5b2e"  # bedrock's secret access key

# provider -> a model its adapter accepts
MODELS = {
    "openai": "gpt-image-2.6-sunburst",
    "openai-compatible": "my-model",
    "azure": "gpt-image-2.6-sunburst",
    "xai": "grok-imagine-image-2.0",
    "nebius": "black-forest-labs/flux-schnell",
    "gemini": "gemini-3.1-flash-image",
    "huggingface": "hf-inference/black-forest-labs/FLUX.1-schnell",
    "bedrock": "amazon.nova-canvas-v1:0",
    "replicate": "owner/model",
    "stability": "core",
    "bfl": "flux-dev",
}
UPSTREAM_VENDORS = sorted(MODELS)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


def answer_everything(up: FakeUpstream, response: FakeResponse) -> None:
    def handler(_request: FakeRequest) -> FakeResponse:
        return response

    for method in ("GET", "POST"):
        up.route(method, r".*", handler)


def vendor_config(name: str, url: str) -> ProviderConfig:
    return ProviderConfig(
        name=name,
        keys=(WeightedKey(KEY),),
        base_url=url,
        timeout_s=5.0,
        aws_secret_access_key=SECRET if name == "bedrock" else "",
    )


def generation(name: str) -> ProviderRequest:
    return ProviderRequest(kind=Kind.GENERATION, model=MODELS[name], prompt="a red fox")


# --- the scrubber ------------------------------------------------------------------------


def test_scrub_replaces_every_secret_with_one_marker() -> None:
    text = f"bad key {KEY}; token {SECRET}; again {KEY}"
    assert scrub(text, [KEY, SECRET]) == f"bad key {REDACTED}; token {REDACTED}; again {REDACTED}"
    assert REDACTED == "<redacted>"


def test_scrub_finds_a_bearer_key_without_its_prefix() -> None:
    assert scrub("token eyJ.entra.token was refused", ["Bearer eyJ.entra.token"]) == (
        "token <redacted> was refused"
    )


def test_scrub_leaves_text_alone_for_secrets_too_short_to_mean_anything() -> None:
    assert scrub("a bad request", ["", "a", "bad"]) == "a bad request"


def test_runner_scrubs_with_the_providers_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker scrubs job errors with the same scrubber (and marker) as the adapters."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    settings = Settings.model_validate({"providers": {"openai": {}}})
    runner = JobRunner(
        settings,
        cast(ObjectStore, None),
        cast(httpx.AsyncClient, None),
        cast(ProviderLimits, None),
    )
    assert runner._scrub(f"Incorrect API key provided: {KEY}.") == (
        "Incorrect API key provided: <redacted>."
    )


# --- the preamble ------------------------------------------------------------------------


class Recording(Adapter):
    """An adapter whose `execute` records its calls and raises what it is told to."""

    vendor = Vendor(name="recording")
    operations = frozenset({Kind.GENERATION})
    requires_base_url = True

    def __init__(self, config: ProviderConfig, raises: ProviderError | None = None) -> None:
        super().__init__(config, cast(httpx.AsyncClient, None))
        self.calls: list[ProviderRequest] = []
        self._raises = raises

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        self.calls.append(request)
        if self._raises is not None:
            raise self._raises
        return ProviderResult(images=())


CONFIGURED = ProviderConfig(name="recording", keys=(WeightedKey(KEY),), base_url="http://x")


async def test_an_unsupported_operation_never_reaches_execute() -> None:
    adapter = Recording(CONFIGURED)
    edit = ProviderRequest(kind=Kind.EDIT, model="m", prompt="p", images=(ImageInput(b"x"),))
    with pytest.raises(UnsupportedOperation) as info:
        await adapter.run(edit)
    assert (info.value.status_code, info.value.code) == (400, "unsupported_operation")
    assert adapter.calls == []


@pytest.mark.parametrize(
    "config",
    [
        ProviderConfig(name="recording", base_url="http://x"),  # no key
        ProviderConfig(name="recording", keys=(WeightedKey(KEY),)),  # no required base URL
    ],
)
async def test_an_unconfigured_adapter_never_reaches_execute(config: ProviderConfig) -> None:
    adapter = Recording(config)
    with pytest.raises(ProviderNotConfigured) as info:
        await adapter.run(ProviderRequest(kind=Kind.GENERATION, model="m", prompt="p"))
    assert (info.value.status_code, info.value.code) == (400, "provider_not_configured")
    assert adapter.calls == []


async def test_every_error_of_execute_is_scrubbed_of_every_secret() -> None:
    config = ProviderConfig(
        name="recording",
        keys=(WeightedKey(KEY), WeightedKey("sk-second-key-0000")),
        base_url="http://x",
        aws_session_token=SECRET,
    )
    failure = ProviderError(f"echo {KEY} sk-second-key-0000 {SECRET}", status_code=401)
    with pytest.raises(ProviderError) as info:
        await Recording(config, failure).run(ProviderRequest(Kind.GENERATION, "m", "p"))
    assert info.value.message == "echo <redacted> <redacted> <redacted>"
    assert str(info.value) == info.value.message


# --- every vendor, on one fake upstream ------------------------------------------------------


@pytest.mark.parametrize("name", UPSTREAM_VENDORS)
async def test_every_vendor_scrubs_echoed_secrets(
    name: str, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    """An upstream that echoes the credentials it was sent never gets them into the job's
    error: bedrock, stability, replicate and bfl passed them on before the adapter base."""
    config = vendor_config(name, upstream.url)
    secrets = " / ".join(config.secrets())  # the key, and bedrock's secret access key
    answer_everything(upstream, FakeResponse(401, {"error": {"message": f"bad: {secrets}"}}))
    with pytest.raises(ProviderError) as info:
        await registry.build_provider(config, http).run(generation(name))
    assert info.value.status_code == 401
    assert KEY not in str(info.value)
    assert SECRET not in str(info.value)
    assert info.value.message == "bad: " + " / ".join([REDACTED] * len(config.secrets()))


# vendors whose answers are JSON (stability and hf-inference answer image bytes)
JSON_VENDORS = [name for name in UPSTREAM_VENDORS if name not in ("stability", "huggingface")]


@pytest.mark.parametrize("name", JSON_VENDORS)
async def test_every_json_call_asks_for_json(
    name: str, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    """`Accept: application/json`, as the vendors' SDKs send it (httpx alone sends
    `*/*`)."""
    answer_everything(upstream, FakeResponse(400, {"error": {"message": "no"}}))
    with pytest.raises(ProviderError):
        await registry.build_provider(vendor_config(name, upstream.url), http).run(generation(name))
    assert upstream.requests, "nothing was sent"
    assert upstream.requests[0].headers["accept"] == "application/json"


@pytest.mark.parametrize("name", UPSTREAM_VENDORS)
async def test_every_vendor_answers_an_unusable_success_with_one_error(
    name: str, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    """A 2xx answer that is neither JSON nor an image is BadUpstreamResponse everywhere:
    502 upstream_error invalid_upstream_response (gemini and huggingface said
    `bad_response` without a status, bedrock/replicate/bfl/stability `invalid_response`)."""
    html = FakeResponse(200, "<html>maintenance</html>", headers={"Content-Type": "text/html"})
    answer_everything(upstream, html)
    provider = registry.build_provider(vendor_config(name, upstream.url), http)
    with pytest.raises(ProviderError) as info:
        await provider.run(generation(name))
    err = info.value
    assert (err.status_code, err.type, err.code) == (
        502,
        "upstream_error",
        "invalid_upstream_response",
    )
    assert err.message.startswith(f"{name} returned an unusable response: ")
    assert not err.retryable


@pytest.mark.parametrize(
    ("name", "model", "extra"),
    [
        ("bedrock", "amazon.nova-canvas-v1:0", {"aws_secret_access_key": SECRET}),
        ("stability", "core", {}),
        ("vertex", "imagen-3.0-capability-001", {"credentials_file": "/none", "project": "p"}),
    ],
)
async def test_an_unsupported_edit_type_is_refused_before_anything_is_sent(
    name: str, model: str, extra: dict[str, Any], upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = ProviderConfig(
        name=name, keys=(WeightedKey(KEY),), base_url=upstream.url, timeout_s=5.0, **extra
    )
    request = ProviderRequest(
        kind=Kind.EDIT,
        model=model,
        prompt="p",
        params={"type": "colorize"},
        images=(ImageInput(b"\x89PNG\r\n\x1a\n"),),
        mask=ImageInput(b"\x89PNG\r\n\x1a\n"),
    )
    with pytest.raises(ProviderError) as info:
        await registry.build_provider(config, http).run(request)
    err = info.value
    assert (err.status_code, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "unsupported_edit_type",
        "type",
    )
    assert err.message.startswith(f"{name} edits support type inpainting, outpainting")
    assert err.message.endswith("; got 'colorize'")
    assert upstream.requests == []


# --- the vendors' own defaults, as the settings read them ---------------------------------


def test_every_registered_module_states_its_vendor() -> None:
    for name in registry.KNOWN_PROVIDERS:
        vendor = registry.vendor(name)
        assert vendor.name == name
        provider = registry.build_provider(ProviderConfig(name=name), cast(httpx.AsyncClient, None))
        assert provider.name == name


def test_default_key_variables_are_the_documented_ones() -> None:
    """The README's provider table: the variable a key is read from without `keys`."""
    assert {name: registry.vendor(name).key_env for name in registry.KNOWN_PROVIDERS} == {
        "mock": "",
        "openai": "OPENAI_API_KEY",
        "openai-compatible": "",
        "azure": "AZURE_API_KEY",
        "gemini": "GEMINI_API_KEY",
        "vertex": "",
        "xai": "XAI_API_KEY",
        "huggingface": "HF_TOKEN",
        "nebius": "NEBIUS_API_KEY",
        "replicate": "REPLICATE_API_TOKEN",
        "stability": "STABILITY_API_KEY",
        "bfl": "BFL_API_KEY",
        "bedrock": "AWS_ACCESS_KEY_ID",
    }


def test_settings_read_the_key_from_the_vendors_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STABILITY_API_KEY", KEY)
    config = Settings.model_validate({"providers": {"stability": {}}}).provider_config("stability")
    assert config is not None and config.pick_key() == KEY


def test_bedrock_credentials_come_from_the_aws_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-1")
    settings = Settings.model_validate({"providers": {"bedrock": {}, "openai": {}}})
    bedrock = settings.provider_config("bedrock")
    assert bedrock is not None
    assert (bedrock.pick_key(), bedrock.aws_secret_access_key) == ("AKIDEXAMPLE", SECRET)
    assert bedrock.aws_session_token == "session-token-1"
    openai = settings.provider_config("openai")  # the AWS variables are bedrock's only
    assert openai is not None and openai.aws_secret_access_key == ""
    configured = Settings.model_validate(
        {"providers": {"bedrock": {"aws_secret_access_key": "from-the-settings"}}}
    ).provider_config("bedrock")
    assert configured is not None and configured.aws_secret_access_key == "from-the-settings"


def test_every_documented_vendor_setting_is_still_taken(tmp_path: Any) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        """
[providers.azure]
base_url = "https://res.openai.azure.com"
deployments = {"gpt-image-2.6-sunburst" = "images"}
api_version = "2024-10-21"
[providers.vertex]
credentials_file = "/etc/sa.json"
project = "proj"
region = "global"
[providers.bedrock]
region = "eu-west-1"
[providers.replicate]
poll_interval_s = 0.25
[providers.bfl]
poll_interval_s = 2
"""
    )
    settings = load_settings(cfg)
    azure, vertex = settings.provider_config("azure"), settings.provider_config("vertex")
    bedrock, replicate = settings.provider_config("bedrock"), settings.provider_config("replicate")
    bfl = settings.provider_config("bfl")
    assert azure is not None and vertex is not None and bedrock is not None
    assert replicate is not None and bfl is not None
    assert (azure.deployments, azure.api_version) == (
        {"gpt-image-2.6-sunburst": "images"},
        "2024-10-21",
    )
    assert (vertex.credentials_file, vertex.project, vertex.region) == (
        "/etc/sa.json",
        "proj",
        "global",
    )
    assert bedrock.region == "eu-west-1"
    assert (replicate.poll_interval_s, bfl.poll_interval_s) == (0.25, 2.0)


@pytest.mark.parametrize(
    ("name", "setting", "value"),
    [
        ("openai", "region", "us-east-1"),
        ("gemini", "project", "p"),
        ("stability", "poll_interval_s", 2),
        ("bedrock", "deployments", {"a": "b"}),
        ("vertex", "aws_session_token", "t"),
    ],
)
def test_a_setting_the_vendor_does_not_take_is_refused(name: str, setting: str, value: Any) -> None:
    with pytest.raises(
        ConfigError, match=rf"providers\.{name}\.{setting}: provider {name} takes no"
    ):
        load_settings(None, providers={name: {setting: value}})


@pytest.mark.parametrize(
    ("name", "attribute", "default"),
    [
        ("bedrock", "region", "us-east-1"),
        ("vertex", "region", "us-central1"),
        ("azure", "api_version", "2025-04-01-preview"),
        ("replicate", "poll_interval_s", 1.0),
        ("bfl", "poll_interval_s", 1.0),
        ("openai", "base_url", "https://api.openai.com"),
        ("stability", "base_url", "https://api.stability.ai"),
    ],
)
def test_an_adapter_applies_its_vendors_defaults(name: str, attribute: str, default: Any) -> None:
    config = Settings.model_validate({"providers": {name: {}}}).provider_config(name)
    assert config is not None
    assert getattr(config, attribute) in ("", 0.0)  # the settings leave it to the vendor
    provider = registry.build_provider(config, cast(httpx.AsyncClient, None))
    assert getattr(cast(Adapter, provider)._config, attribute) == default
