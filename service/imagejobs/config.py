"""Settings: one frozen object, read once from an optional TOML file and the environment.

Precedence (highest first): `IMAGEJOBS_*` environment variables (nested with `__`, e.g.
`IMAGEJOBS_PROVIDERS__OPENAI__BASE_URL`), then the TOML file (`--config` or
`IMAGEJOBS_CONFIG`), then the defaults below, which run the whole stack offline with
the mock provider. Secrets are never written in the file: a key is named by the
environment variable that holds it (`keys = [{env = "OPENAI_API_KEY"}]`), or given
directly in the environment. Nothing else in the code base reads `os.environ`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from imagejobs.domain import constants
from imagejobs.domain.budget import Period
from imagejobs.domain.errors import ConfigError
from imagejobs.domain.keys import KeyPolicy, owner_of
from imagejobs.providers import registry
from imagejobs.providers.adapter import VENDOR_OPTIONS
from imagejobs.providers.base import ProviderConfig, WeightedKey
from imagejobs.providers.catalogue import Catalogue, Family
from imagejobs.providers.pricing import PriceRule, PriceTable
from imagejobs.providers.registry import KNOWN_PROVIDERS
from imagejobs.safefetch import FetchPolicy
from imagejobs.webhooks.endpoints import Endpoint, WebhookSettings
from imagejobs.webhooks.signing import parse_secret

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class KeySetting(BaseModel):
    """One provider key: its value directly (environment only), or the variable holding it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    value: str = Field(default="", repr=False)
    env: str = ""
    weight: float = Field(default=1.0, gt=0)


class ProviderSettings(BaseModel):
    """One provider's section, `[providers.<name>]`. The settings after
    `requests_per_minute` are vendor-only: which vendor takes which, and their defaults,
    are stated in the vendor's module (its `Vendor`, read through the registry); empty
    here means "not given"."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    keys: tuple[KeySetting, ...] = ()
    base_url: str = ""
    timeout_s: float = Field(default=constants.PROVIDER_TIMEOUT_S, gt=0)
    max_retries: int = Field(default=constants.PROVIDER_MAX_RETRIES, ge=0, le=10)
    # calls in flight to this provider across the whole cluster (and from each worker)
    concurrency: int = Field(default=constants.PROVIDER_CONCURRENCY, ge=1)
    # requests (retries included) per minute across the cluster; 0 = no limit
    requests_per_minute: int = Field(default=0, ge=0)
    region: str = ""
    project: str = ""
    api_version: str = ""
    deployments: dict[str, str] = Field(default_factory=dict)
    credentials_file: str = ""
    aws_secret_access_key: str = Field(default="", repr=False)
    aws_session_token: str = Field(default="", repr=False)
    poll_interval_s: float | None = Field(default=None, gt=0)
    model_map: dict[str, str] = Field(default_factory=dict)
    hub_url: str = ""
    hub_cache_ttl_s: float | None = Field(default=None, gt=0)

    def vendor_options(self) -> dict[str, Any]:
        """The vendor-only settings this section gives (a value that is not empty)."""
        given = {name: getattr(self, name) for name in VENDOR_OPTIONS}
        return {name: value for name, value in given.items() if value not in (None, "", {})}


class VirtualKeySettings(BaseModel):
    """`[virtual_keys.<id>]`: one client key. Only its SHA-256 is configured
    (`imagejobs new-key` makes a key and prints both). Zero means no limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    allowed_models: tuple[str, ...] = ()  # "provider/model" patterns, e.g. "openai/*"
    allowed_providers: tuple[str, ...] = ()
    max_concurrent_jobs: int = Field(default=0, ge=0, le=1000)  # pending + processing
    requests_per_minute: int = Field(default=0, ge=0)  # submits
    max_ttl_s: int = Field(default=0, ge=0)  # longer requested result TTLs are capped
    # governance (docs/governance.md): spend limit per period (USD; 0 = none), the key's
    # share of the workers against other keys with queued jobs, its waiting jobs at most
    budget_usd: float = Field(default=0.0, ge=0)
    budget_period: Period = Period.MONTH
    weight: int = Field(default=1, ge=1, le=1000)
    max_queued_jobs: int = Field(default=0, ge=0)


class FetchSettings(BaseModel):
    """`[fetch]`: how URLs that callers give as `input_images` are fetched (the SSRF
    guard, `safefetch.py`). Loopback, private, link-local, metadata and other non-public
    addresses are refused unless inside one of `allow_networks` (CIDRs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    allow_networks: tuple[str, ...] = ()
    max_bytes: int = Field(default=constants.FETCH_MAX_BYTES, ge=1)
    timeout_s: float = Field(default=constants.FETCH_TIMEOUT_S, gt=0)  # redirects included
    max_redirects: int = Field(default=constants.FETCH_MAX_REDIRECTS, ge=0, le=10)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        FetchPolicy.build(value)  # ValueError names the bad entry
        return value

    def policy(self) -> FetchPolicy:
        return FetchPolicy.build(
            self.allow_networks,
            max_bytes=self.max_bytes,
            timeout_s=self.timeout_s,
            max_redirects=self.max_redirects,
        )


class Settings(BaseSettings):
    """Every setting of every component. Ports and hosts are loopback by default."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEJOBS_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    # where things listen
    host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    gateway_admin_port: int = Field(default=9901, ge=1, le=65535)
    api_port: int = Field(default=50051, ge=1, le=65535)
    api_ports: tuple[int, ...] = ()  # several API processes; empty = (api_port,)
    api_host: str = "127.0.0.1"  # where the gateway finds the API
    nats_port: int = Field(default=4222, ge=1, le=65535)
    # comma-separated server list; '' = the nodes `imagejobs up` starts (nats_nodes) on
    # loopback: nats://127.0.0.1:<nats_port + i>
    nats_url: str = ""
    # the local cluster `imagejobs up` starts (runtime/natsd.py): nodes, and the first
    # cluster (route) and monitoring ports; 0 = nats_port + 2000 / + 4000 (6222, 8222)
    nats_nodes: int = Field(default=1, ge=1, le=5)
    nats_cluster_port: int = Field(default=0, ge=0, le=65535)
    nats_http_port: int = Field(default=0, ge=0, le=65535)
    # /metrics: API i on metrics_port + i, workers after them (metrics.py); 0 = none
    metrics_port: int = Field(default=0, ge=0, le=65535)
    public_url: str = ""  # base of result URLs; '' = the caller's Host header
    data_dir: str = "./data"

    # jobs
    default_ttl_s: int = Field(default=constants.DEFAULT_RESULT_TTL_S, ge=1)
    max_ttl_s: int = Field(default=constants.MAX_RESULT_TTL_S, ge=1)
    job_timeout_s: float = Field(default=constants.JOB_TIMEOUT_S, gt=0)
    max_attempts: int = Field(default=constants.MAX_DELIVERIES, ge=1)
    ack_wait_s: float = Field(default=constants.ACK_WAIT_S, gt=0)
    queue_max_jobs: int = Field(default=constants.QUEUE_MAX_JOBS, ge=1)
    # jobs the workers may hold unacknowledged at once, across the cluster (the consumer's
    # max_ack_pending); 0 = 4 x worker_concurrency x worker_processes, at least 1,024. Give
    # it when workers run one per container: then no process knows them all
    queue_max_in_flight: int = Field(default=0, ge=0)
    max_job_age_s: float = Field(default=constants.MAX_JOB_AGE_S, gt=0)
    idempotency_ttl_s: int = Field(default=constants.IDEMPOTENCY_TTL_S, ge=1)
    max_wait_s: float = Field(default=constants.MAX_WAIT_S, ge=0)
    # replicas of every stream; 0 = min(nats_nodes, 3). Give 3 when connecting to a
    # cluster someone else runs (nats_url), as docker-compose.yml does
    stream_replicas: int = Field(default=0, ge=0, le=5)
    # how long one JetStream request (a write, a read) may take before the call fails
    # with 503: an election or a lost quorum answers fast instead of hanging
    store_timeout_s: float = Field(default=constants.STORE_TIMEOUT_S, gt=0)
    # how long a whole submit may take (its several requests, after an election each may
    # be slow) before it answers 503 with Retry-After, plus submit_upload_s_per_mib for
    # each MiB it uploads; what it made is taken back
    submit_timeout_s: float = Field(default=constants.SUBMIT_TIMEOUT_S, gt=0)
    submit_upload_s_per_mib: float = Field(default=constants.SUBMIT_UPLOAD_S_PER_MIB, ge=0)

    # workers
    worker_processes: int = Field(default=1, ge=1)
    worker_concurrency: int = Field(default=constants.WORKER_CONCURRENCY, ge=1)
    worker_drain_s: float = Field(default=constants.WORKER_DRAIN_S, ge=0)

    # webhook dispatchers (`[[webhooks]]` below): processes `imagejobs up` starts when any
    # endpoint is configured, and deliveries in flight per process (10 per endpoint at most)
    dispatcher_processes: int = Field(default=1, ge=1)
    dispatcher_concurrency: int = Field(default=64, ge=1)

    # request limits
    max_body_bytes: int = Field(default=constants.MAX_BODY_BYTES, ge=1024)
    max_file_bytes: int = Field(default=constants.MAX_FILE_BYTES, ge=1024)

    providers: dict[str, ProviderSettings] = Field(
        default_factory=lambda: {"mock": ProviderSettings()}
    )
    # `[[catalogue.<provider>]]`: model families matched before the shipped catalogue's
    # (providers/catalogue.toml); one with a shipped family's pattern replaces it
    catalogue: dict[str, tuple[Family, ...]] = Field(default_factory=dict)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    webhooks: tuple[WebhookSettings, ...] = ()
    log_level: str = "INFO"
    # "json": one JSON object per log line, with job_id, request_id, key_id and provider
    # on every line about a job (runtime/logs.py); "text": plain lines
    log_format: Literal["text", "json"] = "text"
    # OTLP/gRPC collector (e.g. "http://127.0.0.1:4317") every process and Envoy send
    # their trace spans to; '' = tracing off (runtime/tracing.py)
    otlp_endpoint: str = ""
    virtual_keys: dict[str, VirtualKeySettings] = Field(default_factory=dict)
    # with keys configured, refuse calls without one (401); else they are anonymous
    require_virtual_key: bool = False
    # `[[pricing]]`: prices matched before the shipped table's (providers/pricing.toml)
    pricing: tuple[PriceRule, ...] = ()
    # workers take jobs round-robin across keys with queued work (by `weight`); false:
    # one queue in submit order for everyone (FIFO)
    fair_share: bool = True
    failpoint: str = ""  # fault tests only: e.g. "submit.before_publish" makes the API die there

    @model_validator(mode="after")
    def _valid_keys(self) -> Settings:
        for key_id in self.virtual_keys:
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"virtual key id {key_id!r}: use 1-64 of A-Z a-z 0-9 _ -")
        if self.require_virtual_key and not self.virtual_keys:
            raise ValueError("require_virtual_key needs at least one [virtual_keys.<id>]")
        hashes = [k.key_sha256 for k in self.virtual_keys.values()]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two virtual keys have the same key_sha256")
        return self

    def checked_failpoint(self) -> str:
        """`failpoint` (fault tests only; '' = none); ConfigError when no process knows it."""
        if self.failpoint not in constants.FAILPOINTS:
            known = ", ".join(sorted(constants.FAILPOINTS - {""}))
            raise ConfigError(f"unknown failpoint {self.failpoint!r}; known: {known}")
        return self.failpoint

    def key_policies(self) -> dict[str, KeyPolicy]:
        """Each configured virtual key's policy, by the key's hash."""
        return {
            vk.key_sha256: KeyPolicy(
                id=key_id,
                allowed_models=vk.allowed_models,
                allowed_providers=vk.allowed_providers,
                max_concurrent_jobs=vk.max_concurrent_jobs,
                requests_per_minute=vk.requests_per_minute,
                max_ttl_s=vk.max_ttl_s,
                budget_usd=vk.budget_usd,
                budget_period=vk.budget_period,
                weight=vk.weight,
                max_queued_jobs=vk.max_queued_jobs,
            )
            for key_id, vk in self.virtual_keys.items()
        }

    @model_validator(mode="after")
    def _governance(self) -> Settings:
        if not self.fair_share and any(k.max_queued_jobs for k in self.virtual_keys.values()):
            # the per-key bound counts a key's own queue, which only fair share keeps
            raise ValueError("max_queued_jobs needs fair_share = true")
        if any(k.budget_usd for k in self.virtual_keys.values()):
            for rule in self.pricing:
                if rule.token_priced and rule.per_image_usd is None:
                    raise ValueError(
                        f"pricing for {rule.model}: a budget reserves per_image_usd per image"
                        " at submit; give it (the estimate) for this token-priced model"
                    )
        return self

    def price_table(self) -> PriceTable:
        """This deployment's `[[pricing]]` matched before the shipped table's."""
        return PriceTable.builtin().with_overrides(self.pricing)

    def lane_weights(self) -> dict[str, int]:
        """Each configured key's fair-share weight, by its jobs' owner (default 1)."""
        return {owner_of(key_id): vk.weight for key_id, vk in self.virtual_keys.items()}

    @model_validator(mode="after")
    def _unique_webhooks(self) -> Settings:
        names = [w.name for w in self.webhooks]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two [[webhooks]] are named {name}")
        return self

    @model_validator(mode="after")
    def _known_providers(self) -> Settings:
        unknown = sorted((set(self.providers) | set(self.catalogue)) - KNOWN_PROVIDERS)
        if unknown:
            raise ValueError(f"unknown provider(s) {unknown}; known: {sorted(KNOWN_PROVIDERS)}")
        for name, section in self.providers.items():
            taken = registry.vendor(name).options
            stray = sorted(set(section.vendor_options()) - set(taken))
            if stray:
                raise ValueError(
                    f"providers.{name}.{stray[0]}: provider {name} takes no {stray[0]}"
                    f" (its own settings: {', '.join(sorted(taken)) or 'none'})"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the file's values arrive as init kwargs; the environment overrides them
        return (env_settings, init_settings)

    # --- derived values ------------------------------------------------------------------

    @property
    def nats_servers(self) -> list[str]:
        """The NATS server URLs to connect to."""
        if not self.nats_url:
            return [f"nats://127.0.0.1:{self.nats_port + i}" for i in range(self.nats_nodes)]
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @property
    def replicas(self) -> int:
        """Replicas of every stream: `stream_replicas`, else one per node up to 3."""
        return self.stream_replicas or min(self.nats_nodes, 3)

    @property
    def cluster_port_base(self) -> int:
        return self.nats_cluster_port or self.nats_port + 2000

    @property
    def http_port_base(self) -> int:
        return self.nats_http_port or self.nats_port + 4000

    @property
    def all_api_ports(self) -> tuple[int, ...]:
        return self.api_ports or (self.api_port,)

    def provider_config(self, name: str) -> ProviderConfig | None:
        """The adapter config for provider `name`, or None when it is not configured."""
        section = self.providers.get(name)
        if section is None:
            return None
        vendor = registry.vendor(name)
        options = section.vendor_options()  # the vendor's defaults apply to the rest
        for option, variable in vendor.options_env.items():
            options.setdefault(option, os.environ.get(variable, ""))
        return ProviderConfig(
            name=name,
            keys=_resolve_keys(section, vendor.key_env),
            base_url=section.base_url.rstrip("/"),
            timeout_s=section.timeout_s,
            max_retries=section.max_retries,
            concurrency=section.concurrency,
            fetch=self.fetch.policy(),
            **options,
        )

    def webhook(self, name: str) -> WebhookSettings | None:
        """The `[[webhooks]]` endpoint called `name`, or None."""
        return next((w for w in self.webhooks if w.name == name), None)

    def webhook_endpoints(self) -> dict[str, Endpoint]:
        """Every enabled endpoint with its signing keys, read from the environment
        variables it names (`secret_env`, then `previous_secret_env` during a rotation).
        ConfigError naming the endpoint and the variable when one is unset or not a
        `whsec_` secret (the secret itself is never quoted)."""
        endpoints: dict[str, Endpoint] = {}
        for hook in self.webhooks:
            if hook.disabled:
                continue
            keys = [_webhook_secret(hook.name, hook.secret_env)]
            if hook.previous_secret_env:
                keys.append(_webhook_secret(hook.name, hook.previous_secret_env))
            endpoints[hook.name] = Endpoint(settings=hook, secrets=tuple(keys))
        return endpoints

    def model_catalogue(self) -> Catalogue:
        """The shipped model catalogue with this deployment's `[[catalogue.<provider>]]`."""
        return Catalogue.builtin().with_overrides(self.catalogue)

    def all_secrets(self) -> tuple[str, ...]:
        """Every configured provider secret, for scrubbing text before it leaves us."""
        found: list[str] = []
        for name in self.providers:
            config = self.provider_config(name)
            if config is not None:
                found.extend(config.secrets())
        return tuple(s for s in found if len(s) >= 4)


def _resolve_keys(section: ProviderSettings, default_env: str) -> tuple[WeightedKey, ...]:
    """The section's keys, or the vendor's default variable's when it lists none."""
    keys = section.keys
    if not keys and default_env:
        keys = (KeySetting(env=default_env),)
    resolved = []
    for key in keys:
        value = key.value or (os.environ.get(key.env, "") if key.env else "")
        if value:
            resolved.append(WeightedKey(value=value, weight=key.weight))
    return tuple(resolved)


def _webhook_secret(name: str, variable: str) -> bytes:
    value = os.environ.get(variable, "")
    if not value:
        raise ConfigError(f"webhooks.{name}: environment variable {variable} is not set")
    try:
        return parse_secret(value)
    except ValueError as exc:
        raise ConfigError(f"webhooks.{name}: {variable} is not a webhook secret: {exc}") from None


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the settings once: TOML file (if any), environment, then `overrides` (from
    the command line, highest). Raises ConfigError with a readable message."""
    file_path = path or os.environ.get("IMAGEJOBS_CONFIG") or None
    values: dict[str, Any] = {}
    if file_path:
        try:
            values = tomllib.loads(Path(file_path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {file_path}") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {file_path}: {exc}") from exc
    try:
        settings = Settings(**values)
        if overrides:
            merged = settings.model_dump()
            merged.update({k: v for k, v in overrides.items() if v is not None})
            settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    return settings
