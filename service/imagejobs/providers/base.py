"""The seam between workers and vendors: what a provider is given, returns and raises.

A provider adapter turns one normalised `ProviderRequest` into one vendor HTTP exchange
(or a few: fan-out for `n`, polling a prediction, downloading result URLs) and returns
image *bytes*. It never retries (the worker's retry policy does, from the error's
`retryable` flag and `retry_after`), never logs secrets, and never lets an httpx error
escape (`upstream.send()` translates them). Every vendor builds on `adapter.Adapter`,
which states the shared preamble once; this module holds only the values and the
`Provider` Protocol that workers see, and the small generic helpers adapters share.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
import pybase64

from imagejobs.domain import constants
from imagejobs.domain.errors import (
    BadUpstreamResponse,
    ErrorCode,
    ErrorType,
    ProviderError,
    ProviderNotConfigured,
    UnsupportedOperation,
)
from imagejobs.domain.kinds import Kind
from imagejobs.safefetch import FetchPolicy

JSONValue = Any  # a value json.loads could return; kept loose at this single seam


# --- what an adapter is configured with ------------------------------------------------


@dataclass(frozen=True)
class WeightedKey:
    """One credential for a provider; keys are picked at random in proportion to weight."""

    value: str
    weight: float = 1.0

    def __repr__(self) -> str:  # never print the secret
        return f"WeightedKey(value=<redacted>, weight={self.weight})"


@dataclass(frozen=True)
class ProviderConfig:
    """Everything one provider needs, read once from settings. Secrets are redacted in repr.

    The vendor-only settings (region ... poll_interval_s) are empty here when not given:
    which vendor takes which, and their defaults, are stated in the vendor's module
    (`adapter.Vendor`), applied when its adapter is built."""

    name: str
    keys: tuple[WeightedKey, ...] = ()
    base_url: str = ""  # '' = the vendor's public default
    timeout_s: float = constants.PROVIDER_TIMEOUT_S
    max_retries: int = constants.PROVIDER_MAX_RETRIES
    concurrency: int = constants.PROVIDER_CONCURRENCY
    region: str = ""  # bedrock, vertex
    project: str = ""  # vertex
    api_version: str = ""  # azure
    deployments: Mapping[str, str] = field(default_factory=dict)  # azure: model -> deployment
    credentials_file: str = ""  # vertex: a service-account JSON file
    aws_secret_access_key: str = field(default="", repr=False)  # bedrock; key id in `keys`
    aws_session_token: str = field(default="", repr=False)
    poll_interval_s: float = 0.0  # replicate/bfl: seconds between task polls; 0 = default
    # huggingface: `<inference-provider>/<repo>` -> the provider's model id (no Hub lookup)
    model_map: Mapping[str, str] = field(default_factory=dict)
    hub_url: str = ""  # huggingface: the Hub asked for inferenceProviderMapping
    hub_cache_ttl_s: float = 0.0  # huggingface: seconds a Hub mapping is reused; 0 = default
    max_download_bytes: int = constants.MAX_DOWNLOAD_BYTES
    fetch: FetchPolicy = field(default_factory=FetchPolicy)  # caller-given input image URLs

    def pick_key(self) -> str:
        """A key chosen by weight; '' when none is configured."""
        if not self.keys:
            return ""
        if len(self.keys) == 1:
            return self.keys[0].value
        weights = [max(k.weight, 0.0) for k in self.keys]
        return random.choices(self.keys, weights=weights or None)[0].value

    def require_key(self) -> str:
        """A key chosen by weight; ProviderNotConfigured when none is configured."""
        key = self.pick_key()
        if not key:
            raise ProviderNotConfigured(self.name)
        return key

    def secrets(self) -> tuple[str, ...]:
        """Every secret in this config, for scrubbing error text."""
        values = [k.value for k in self.keys]
        values += [self.aws_secret_access_key, self.aws_session_token]
        return tuple(v for v in values if v)


# --- what an adapter is given -------------------------------------------------------------


@dataclass(frozen=True)
class ImageInput:
    """An uploaded image (or mask) as bytes."""

    data: bytes
    content_type: str = "image/png"
    filename: str = "image.png"


@dataclass(frozen=True)
class ProviderRequest:
    """One validated job request, as a provider sees it.

    `model` has the provider prefix removed (`openai/gpt-image-1` -> `gpt-image-1`).
    `params` holds every other request field the client sent — the known optional ones
    (`n`, `size`, `quality`, `style`, `response_format`, `background`, `moderation`,
    `output_format`, `output_compression`, `partial_images`, `seed`, `negative_prompt`,
    `num_inference_steps`, `user`, `input_images`, `aspect_ratio`, `resolution`, `type`,
    `input_fidelity`) with their JSON types, plus unknown keys to pass through unchanged.
    It never holds `model`, `prompt`, `fallbacks` or `stream`.
    `attempt` counts provider calls for this job, from 1, across retries and redeliveries.
    """

    kind: Kind
    model: str
    prompt: str | None = None
    params: Mapping[str, JSONValue] = field(default_factory=dict)
    images: tuple[ImageInput, ...] = ()
    mask: ImageInput | None = None
    attempt: int = 1

    @property
    def n(self) -> int:
        """How many images were asked for (default 1)."""
        value = self.params.get("n")
        return int(value) if isinstance(value, int) and value > 0 else 1

    def param_str(self, name: str) -> str | None:
        """A string parameter, or None when absent or empty."""
        value = self.params.get(name)
        return value if isinstance(value, str) and value else None

    def param_int(self, name: str) -> int | None:
        """An integer parameter, or None when absent."""
        value = self.params.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- what an adapter returns -----------------------------------------------------------


@dataclass(frozen=True)
class ImageOut:
    """One result image, always as bytes (URLs are downloaded by the adapter at once)."""

    data: bytes
    content_type: str = "image/png"
    revised_prompt: str | None = None


@dataclass(frozen=True)
class ProviderResult:
    """A provider's answer. `fields` holds the response's top-level extras the contract
    echoes (`background`, `output_format`, `quality`, `size`); `usage` is passed through
    when the vendor reports it."""

    images: tuple[ImageOut, ...]
    usage: Mapping[str, JSONValue] | None = None
    fields: Mapping[str, JSONValue] = field(default_factory=dict)


# --- what an adapter raises: ProviderError and its kin (domain/errors.py) ---------------

__all__ = [
    "BadUpstreamResponse",
    "ProviderError",
    "ProviderNotConfigured",
    "UnsupportedOperation",
]


def invalid_input(message: str, param: str, code: str | None = None) -> ProviderError:
    """A request the vendor cannot take as given (checked before anything is sent): 400
    `invalid_request_error` on `param`, never retried."""
    return ProviderError(
        message, status_code=400, type=ErrorType.INVALID_REQUEST, code=code, param=param
    )


def no_output(message: str) -> ProviderError:
    """A vendor's success answer that holds no image: 502 `no_output`, not retried."""
    return ProviderError(
        message, status_code=502, type=ErrorType.UPSTREAM, code=ErrorCode.NO_OUTPUT
    )


_Mode = TypeVar("_Mode")


def edit_mode(
    request: ProviderRequest, modes: Mapping[str, _Mode], provider: str
) -> tuple[str, _Mode]:
    """The edit `type` the request asks for (default `inpainting`) and what the vendor's
    `modes` map it to; 400 `unsupported_edit_type` on `type` when they have no such type."""
    edit_type = request.param_str("type") or "inpainting"
    if edit_type not in modes:
        raise invalid_input(
            f"{provider} edits support type {', '.join(modes)}; got {edit_type!r}",
            "type",
            ErrorCode.UNSUPPORTED_EDIT_TYPE,
        )
    return edit_type, modes[edit_type]


# --- the protocol --------------------------------------------------------------------------


class Provider(Protocol):
    """One vendor. Instances are built once per worker with `build(config, http)`."""

    name: str
    operations: frozenset[Kind]

    async def run(self, request: ProviderRequest) -> ProviderResult:
        """Perform `request` (its kind is in `operations`) and return image bytes."""
        ...


ProviderFactory = Callable[[ProviderConfig, httpx.AsyncClient], Provider]


class WrappedProvider:
    """A provider that adds something around another's `run` (its timing, its span):
    it answers to the inner provider's name and operations. Subclasses override `run`
    and call `self._inner.run`."""

    def __init__(self, inner: Provider) -> None:
        self._inner = inner
        self.name = inner.name
        self.operations = inner.operations

    async def run(self, request: ProviderRequest) -> ProviderResult:
        return await self._inner.run(request)


class Clock(Protocol):
    """Time as the retry loop and task polling see it. Tests pass a fake whose `sleep`
    records the delay asked for and returns at once."""

    def now(self) -> float:
        """A monotonic instant, in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""
        ...


class SystemClock:
    """`time.monotonic` and `asyncio.sleep`: the clock of production."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


# --- shared helpers for adapters -------------------------------------------------------------


# Every optional request field the contract knows (see ProviderRequest); adapters pass any
# other key through to the vendor unchanged.
KNOWN_PARAMS = frozenset(
    {
        "n", "size", "quality", "style", "response_format", "background", "moderation",
        "output_format", "output_compression", "partial_images", "seed", "negative_prompt",
        "num_inference_steps", "user", "input_images", "aspect_ratio", "resolution",
        "type", "input_fidelity",
    }
)  # fmt: skip


# Sent on every call whose answer is JSON: vendors' SDKs send it, and some servers
# answer `*/*` (httpx's default) with HTML error pages.
ACCEPT_JSON: Mapping[str, str] = {"Accept": "application/json"}


def b64(data: bytes) -> str:
    """Bytes as base64 text (how JSON bodies carry images)."""
    return pybase64.b64encode_as_string(data)  # SIMD; the same text as the stdlib's


async def fan_out(
    request: ProviderRequest,
    per_call: int,
    call: Callable[[int, int], Awaitable[ProviderResult]],
) -> ProviderResult:
    """Serve `request.n` images from a provider that returns at most `per_call` per call:
    run `call(count, index)` concurrently for each batch (index 0, 1, …) and merge the
    results in order. Adapters derive per-batch seeds from the index (`seed_for`)."""
    wanted = request.n
    if wanted <= per_call:
        return await call(wanted, 0)
    counts = [per_call] * (wanted // per_call)
    if wanted % per_call:
        counts.append(wanted % per_call)
    results = await asyncio.gather(*(call(c, i) for i, c in enumerate(counts)))
    images = tuple(img for r in results for img in r.images)
    usage = results[0].usage if len(results) == 1 else merge_usage([r.usage for r in results])
    return ProviderResult(images=images, usage=usage, fields=results[0].fields)


def seed_for(seed: int | None, index: int) -> int | None:
    """The seed of fan-out batch `index`: `seed + index`, so that n images with a fixed
    seed are not n copies of the first; None stays None."""
    return None if seed is None else seed + index


def merge_usage(
    usages: list[Mapping[str, JSONValue] | None],
) -> Mapping[str, JSONValue] | None:
    """Sum the numeric token counts of several usage objects (nested dicts too)."""
    present = [u for u in usages if u]
    if not present:
        return None

    def add(a: dict[str, JSONValue], b: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
        for key, value in b.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                a[key] = a.get(key, 0) + value
            elif isinstance(value, Mapping):
                a[key] = add(dict(a.get(key) or {}), value)
            else:
                a.setdefault(key, value)
        return a

    total: dict[str, JSONValue] = {}
    for usage in present:
        total = add(total, usage)
    return total
