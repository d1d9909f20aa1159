"""The one adapter base every vendor builds on, the vendor's own defaults, and the one
scrubber of secrets.

`Adapter.run` is the preamble every vendor shares, in this order: the operation check
(`UnsupportedOperation`, nothing sent), the configuration check (`ProviderNotConfigured`:
no key, no required base URL), then `execute` (the vendor's own work), and on the way out
every configured secret is scrubbed from any `ProviderError` message, since upstreams
echo the keys they were sent. `send` and `download` are the vendor's HTTP calls with its
timeout and error parser filled in.

`Vendor` is what a vendor module states about itself for the settings (read through the
registry): the variable its key is read from, its public base URL, and the vendor-only
settings it takes with their defaults (azure `deployments`, bedrock `region`, ...).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from imagejobs.domain.errors import ProviderError, ProviderNotConfigured, UnsupportedOperation
from imagejobs.domain.kinds import Kind
from imagejobs.providers.base import (
    SYSTEM_CLOCK,
    Clock,
    ImageOut,
    JSONValue,
    Provider,
    ProviderConfig,
    ProviderRequest,
    ProviderResult,
)
from imagejobs.providers.upstream import UpstreamError, download, parse_error, send

REDACTED = "<redacted>"
MIN_SECRET_CHARS = 4  # shorter "secrets" protect nothing, and replacing them shreds text


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by REDACTED; a key configured as `Bearer <token>`
    (Azure's Entra tokens) is also found without its prefix."""
    for secret in secrets:
        for value in (secret, secret.removeprefix("Bearer ")):
            if len(value) >= MIN_SECRET_CHARS:
                text = text.replace(value, REDACTED)
    return text


def scrub_error(exc: ProviderError, secrets: Iterable[str]) -> None:
    """Scrub `exc`'s message in place (its args too, so `str(exc)` agrees)."""
    exc.message = scrub(exc.message, secrets)
    exc.args = (exc.message,)


# The settings a vendor may take beyond the common ones (keys, base_url, timeout_s,
# max_retries, concurrency); each vendor names the ones it takes in its `Vendor`.
VENDOR_OPTIONS = frozenset(
    {
        "region",
        "project",
        "api_version",
        "deployments",
        "credentials_file",
        "aws_secret_access_key",
        "aws_session_token",
        "poll_interval_s",
        "model_map",
        "hub_url",
        "hub_cache_ttl_s",
    }
)


@dataclass(frozen=True)
class Vendor:
    """What one vendor module states about itself (see the module doc).

    `options` maps each vendor-only setting it takes to its default; `options_env` names
    the standard variable a vendor-only setting is read from when not configured (AWS's
    `AWS_SECRET_ACCESS_KEY`)."""

    name: str
    key_env: str = ""  # read when the section lists no `keys`; '' = no default variable
    base_url: str = ""  # '' = required (openai-compatible, azure) or derived (bedrock, vertex)
    options: Mapping[str, object] = field(default_factory=dict)
    options_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A misspelt option would make a documented setting of this vendor a ConfigError.
        if not set(self.options_env) <= set(self.options) <= VENDOR_OPTIONS:
            raise ValueError(f"vendor {self.name}: options must be among {sorted(VENDOR_OPTIONS)}")

    def with_defaults(self, config: ProviderConfig) -> ProviderConfig:
        """`config` with this vendor's base URL and option defaults where it has none."""
        changes: dict[str, Any] = {
            name: default for name, default in self.options.items() if not getattr(config, name)
        }
        if self.base_url and not config.base_url:
            changes["base_url"] = self.base_url
        return dataclasses.replace(config, **changes) if changes else config


class Adapter(abc.ABC):
    """A vendor adapter: subclasses set `vendor` (and `operations`, `requires_key`,
    `requires_base_url` when they differ) and implement `execute`."""

    vendor: ClassVar[Vendor]
    operations: frozenset[Kind] = frozenset(Kind)
    requires_key: ClassVar[bool] = True
    requires_base_url: ClassVar[bool] = False

    def __init__(
        self, config: ProviderConfig, http: httpx.AsyncClient, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.name = self.vendor.name
        self._config = self.vendor.with_defaults(config)
        self._http = http
        self._clock = clock  # task polling's waits and deadlines

    @property
    def base_url(self) -> str:
        """Where calls go, without a trailing slash."""
        return self._config.base_url.rstrip("/")

    async def run(self, request: ProviderRequest) -> ProviderResult:
        """Perform `request`; raises UnsupportedOperation, ProviderNotConfigured or a
        ProviderError whose message never contains a configured secret."""
        if request.kind not in self.operations:
            raise UnsupportedOperation(self.name, request.kind)
        if not self.configured():
            raise ProviderNotConfigured(self.name)
        try:
            return await self.execute(request)
        except ProviderError as exc:
            scrub_error(exc, self.secrets())
            raise

    @abc.abstractmethod
    async def execute(self, request: ProviderRequest) -> ProviderResult:
        """The vendor's work for `request`, whose kind is supported and whose config is
        complete; may raise any ProviderError (scrubbed by `run`)."""

    # --- hooks ----------------------------------------------------------------------------

    def configured(self) -> bool:
        """Whether calls can be made at all (a key, a base URL, as the vendor needs)."""
        has_key = bool(self._config.keys) or not self.requires_key
        return has_key and (bool(self._config.base_url) or not self.requires_base_url)

    def secrets(self) -> tuple[str, ...]:
        """Strings never to show in an error message."""
        return self._config.secrets()

    def parse_error(self, response: httpx.Response, body: JSONValue) -> UpstreamError:
        """What an error response of this vendor says (the common shapes by default)."""
        return parse_error(response, body)

    # --- calls ----------------------------------------------------------------------------

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send one call within the configured timeout; errors become ProviderErrors."""
        return await send(
            self._http,
            request,
            provider=self.name,
            timeout_s=self._config.timeout_s,
            parse=self.parse_error,
        )

    async def download(self, url: str) -> ImageOut:
        """Fetch a result URL, without credentials, within its own timeout (the result is
        paid for) and the configured size limit."""
        return await download(
            self._http,
            url,
            provider=self.name,
            timeout_s=self._config.timeout_s,
            max_bytes=self._config.max_download_bytes,
        )


if TYPE_CHECKING:

    def _is_a_provider(adapter: Adapter) -> Provider:
        return adapter  # mypy checks here that every adapter meets the Protocol
