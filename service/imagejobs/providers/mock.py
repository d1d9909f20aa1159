"""The mock provider (`mock/<any-model>`): real images, made offline and deterministically.

It serves all three kinds with no network call, so the whole stack runs without a vendor
account: generations are gradient-and-shapes pictures captioned with the prompt, edits
invert and tint the masked region, variations shift the input's hues. The same request
(prompt, `seed`, model, size, format, image index) always yields byte-identical images.

Request parameters drive failure drills, for testing the worker's retry policy:

- `mock_latency_ms`: sleep this long (cancellably) before answering, on every attempt.
- `mock_fail_status`: answer as an upstream error with this HTTP status ...
- `mock_fail_times`: ... but only while `attempt <= mock_fail_times` (always if absent).

And one to try cost reporting: `mock_cost_usd_ticks` puts that whole number into the
result's `usage.cost_in_usd_ticks` (xAI's unit: 10^10 ticks are one US dollar).

Invalid parameters and undecodable images raise a 400 `ProviderError`, as a vendor would.
Pillow work runs in a thread (`asyncio.to_thread`) so the event loop keeps heartbeating.
Since the same generation always renders the same bytes, the last `RENDER_CACHE_SIZE`
generations are kept and a repeat is answered from them: the mock stands in for a remote
vendor, so its own CPU should not be what a worker's benchmark measures (a fresh 16x16
render was ~36% of a busy worker's samples).
"""

from __future__ import annotations

import asyncio
import io
import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from PIL import Image

from imagejobs.domain.errors import ErrorCode, ErrorType, ProviderError
from imagejobs.domain.kinds import Kind
from imagejobs.providers import mock_images
from imagejobs.providers.adapter import Adapter, Vendor
from imagejobs.providers.base import (
    ImageInput,
    ImageOut,
    JSONValue,
    ProviderRequest,
    ProviderResult,
    invalid_input,
)
from imagejobs.providers.normalize import (
    RESOLUTION_LONG_EDGE,
    dimensions,
    parse_aspect_ratio,
    parse_size,
)
from imagejobs.providers.upstream import RETRYABLE_STATUSES

DEFAULT_SIZE = (1024, 1024)
MAX_SIDE = 4096  # pixels, per side of an output image
MAX_INPUT_PIXELS = 16 * 1024 * 1024  # an input image larger than this is refused undecoded
MAX_N = 10
FORMAT_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
BACKGROUNDS = frozenset({"auto", "opaque", "transparent"})
VENDOR = Vendor(name="mock")  # no key, no endpoint, no settings of its own


@dataclass(frozen=True)
class _Output:
    """What the request asks the output to look like, validated."""

    fmt: str  # "png" | "jpeg" | "webp"
    quality: int | None  # jpeg/webp encoder quality, 0-100
    size: tuple[int, int] | None  # None: the default (generation) or the input's (edits)
    transparent: bool
    background_removal: bool


# --- behaviour controls -----------------------------------------------------------------


def _control(request: ProviderRequest, name: str) -> int | None:
    """A drill parameter as an int. Multipart edit forms pass unknown fields through as
    strings, so digit strings count too; anything else counts as absent."""
    value = request.params.get(name)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return request.param_int(name)


async def _simulate_latency(request: ProviderRequest) -> None:
    delay_ms = _control(request, "mock_latency_ms")
    if delay_ms is not None and delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)


def _simulate_failure(request: ProviderRequest) -> None:
    """Raise the scripted upstream error, if the request scripts one for this attempt."""
    status = _control(request, "mock_fail_status")
    if not status:
        return
    if not 400 <= status <= 599:
        raise invalid_input(
            "mock_fail_status must be an HTTP status 400-599",
            "mock_fail_status",
            ErrorCode.INVALID_VALUE,
        )
    times = _control(request, "mock_fail_times")
    if times is not None and request.attempt > times:
        return
    limit = f"of failing {times}" if times is not None else "failing always"
    if status == 429:
        error_type = ErrorType.RATE_LIMIT
    elif status >= 500:
        error_type = ErrorType.SERVER
    else:
        error_type = ErrorType.INVALID_REQUEST
    raise ProviderError(
        f"mock upstream error: HTTP {status} (attempt {request.attempt} {limit})",
        status_code=status,
        type=error_type,
        code=ErrorCode.MOCK_FAILURE,
        retryable=status in RETRYABLE_STATUSES,
        retry_after=None,
    )


# --- parameter validation -----------------------------------------------------------------


def _output_options(request: ProviderRequest) -> _Output:
    params = request.params
    background_removal = params.get("type") == "background_removal"
    raw_format = params.get("output_format")
    if raw_format is None:
        fmt = "png"
    elif isinstance(raw_format, str) and raw_format.lower() in FORMAT_ALIASES:
        fmt = FORMAT_ALIASES[raw_format.lower()]
    else:
        raise invalid_input(
            f"invalid output_format {raw_format!r}; expected one of png, jpeg, webp",
            "output_format",
            ErrorCode.INVALID_OUTPUT_FORMAT,
        )
    quality = params.get("output_compression")
    if quality is not None and (
        not isinstance(quality, int) or isinstance(quality, bool) or not 0 <= quality <= 100
    ):
        raise invalid_input(
            "output_compression must be an integer 0-100",
            "output_compression",
            ErrorCode.INVALID_VALUE,
        )
    background = params.get("background")
    if background is not None and background not in BACKGROUNDS:
        raise invalid_input(
            f"invalid background {background!r}; expected transparent, opaque or auto",
            "background",
            ErrorCode.INVALID_VALUE,
        )
    transparent = background == "transparent"
    if transparent and fmt == "jpeg":
        raise invalid_input(
            "a transparent background needs png or webp output",
            "background",
            ErrorCode.INVALID_VALUE,
        )
    if background_removal:
        fmt, transparent = "png", True
    return _Output(fmt, quality, _requested_size(params), transparent, background_removal)


def _requested_size(params: Mapping[str, JSONValue]) -> tuple[int, int] | None:
    """The explicitly requested output size, or None when the request names none."""
    get = params.get
    size, ratio, resolution = get("size"), get("aspect_ratio"), get("resolution")
    if size is not None and size != "auto" and not (isinstance(size, str) and parse_size(size)):
        raise invalid_input(
            f"invalid size {size!r}; expected 'WxH' or 'auto'", "size", ErrorCode.INVALID_SIZE
        )
    if ratio is not None and not (isinstance(ratio, str) and parse_aspect_ratio(ratio)):
        raise invalid_input(
            f"invalid aspect_ratio {ratio!r}", "aspect_ratio", ErrorCode.INVALID_VALUE
        )
    if resolution is not None and not (
        isinstance(resolution, str) and resolution.upper() in RESOLUTION_LONG_EDGE
    ):
        raise invalid_input(
            f"invalid resolution {resolution!r}", "resolution", ErrorCode.INVALID_VALUE
        )
    named = [get(k) for k in ("width", "height", "aspect_ratio", "resolution")]
    if size in (None, "auto") and all(v is None for v in named):
        return None
    width, height = dimensions(params)
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise invalid_input(
            f"size {width}x{height} exceeds {MAX_SIDE} pixels per side",
            "size",
            ErrorCode.INVALID_SIZE,
        )
    return width, height


def _check_inputs(request: ProviderRequest, out: _Output) -> None:
    """The prompt and images the request's kind needs are there, and `n` is in range."""
    if request.n > MAX_N:
        raise invalid_input(f"n must be at most {MAX_N}", "n", ErrorCode.INVALID_VALUE)
    needs_prompt = request.kind is Kind.GENERATION or (
        request.kind is Kind.EDIT and not out.background_removal
    )
    if needs_prompt and not (request.prompt or "").strip():
        raise invalid_input("a prompt is required", "prompt", ErrorCode.MISSING_REQUIRED_PARAMETER)
    if request.kind is not Kind.GENERATION and not request.images:
        raise invalid_input(
            "an input image is required", "image", ErrorCode.MISSING_REQUIRED_PARAMETER
        )


# --- rendering (runs in a worker thread) --------------------------------------------------


@dataclass(frozen=True)
class _Rendered:
    images: tuple[bytes, ...]
    size: tuple[int, int]
    image_tokens: int  # what the inputs would cost a vendor, for `usage`


def _decode(image: ImageInput, param: str) -> Image.Image:
    """Pillow's decoded view of an uploaded image; any decoding failure becomes a 400."""
    try:
        img = Image.open(io.BytesIO(image.data))
        width, height = img.size
        if width * height > MAX_INPUT_PIXELS:
            raise invalid_input(
                f"{param} is {width}x{height}, too large", param, ErrorCode.IMAGE_TOO_LARGE
            )
        img.load()
    except ProviderError:
        raise
    except Exception as exc:  # corrupt data raises OSError, ValueError, SyntaxError, ...
        raise invalid_input(
            f"could not decode {param}: {type(exc).__name__}", param, ErrorCode.INVALID_IMAGE
        ) from exc
    return img


RENDER_CACHE_SIZE = 64  # generations kept, rendered (a few KB each at small sizes)
_rendered: OrderedDict[Hashable, _Rendered] = OrderedDict()
_rendering: dict[Hashable, asyncio.Future[_Rendered]] = {}  # renders under way


def _generation_key(request: ProviderRequest, out: _Output) -> Hashable | None:
    """What a generation's images depend on (None for an edit or variation)."""
    if request.kind is not Kind.GENERATION:
        return None
    return (request.model, request.prompt, repr(request.params.get("seed")), request.n, out)


async def _render_once(request: ProviderRequest, out: _Output) -> _Rendered:
    """The request's images: a repeated generation from the cache (or from the render
    of it already under way: 2,000 calls ending at once render it once), else rendered."""
    key = _generation_key(request, out)
    if key is None:
        return await asyncio.to_thread(_render, request, out)
    if key in _rendered:
        _rendered.move_to_end(key)
        return _rendered[key]
    rendering = _rendering.get(key)
    if rendering is None or rendering.get_loop() is not asyncio.get_running_loop():
        rendering = asyncio.ensure_future(asyncio.to_thread(_render, request, out))
        _rendering[key] = rendering
        rendering.add_done_callback(lambda done: _keep(key, done))
    return await asyncio.shield(rendering)


def _keep(key: Hashable, done: asyncio.Future[_Rendered]) -> None:
    """A render ended: keep what it made (a failed one is not kept)."""
    if _rendering.get(key) is done:
        del _rendering[key]
    if done.cancelled() or done.exception() is not None:
        return
    _rendered[key] = done.result()
    if len(_rendered) > RENDER_CACHE_SIZE:
        _rendered.popitem(last=False)


def _render(request: ProviderRequest, out: _Output) -> _Rendered:
    prompt = request.prompt or ""
    seed = request.params.get("seed")
    stem = (request.kind.value, request.model, prompt, seed, out.fmt, out.size)
    if request.kind is Kind.GENERATION:
        size = out.size or DEFAULT_SIZE
        pictures = [
            mock_images.generate(prompt, mock_images.derive_key(*stem, i), size, out.transparent)
            for i in range(request.n)
        ]
        image_tokens = 0
    else:
        inputs = [_decode(image, "image") for image in request.images]
        base = inputs[0]
        image_tokens = sum(_image_tokens(*img.size) for img in inputs)
        digest = mock_images.derive_key(request.images[0].data).hex()
        keys = [mock_images.derive_key(*stem, digest, i) for i in range(request.n)]
        if request.kind is Kind.EDIT:
            pictures = _edit(request, out, base, prompt, keys)
        else:
            pictures = [mock_images.vary(base, key) for key in keys]
        pictures = [mock_images.fit(picture, out.size) for picture in pictures]
    encoded = tuple(
        mock_images.encode(picture, out.fmt, out.quality, out.transparent) for picture in pictures
    )
    width, height = pictures[0].size
    return _Rendered(encoded, (width, height), image_tokens)


def _edit(
    request: ProviderRequest,
    out: _Output,
    base: Image.Image,
    prompt: str,
    keys: list[bytes],
) -> list[Image.Image]:
    if out.background_removal:
        cut = mock_images.remove_background(base)
        return [cut] * len(keys)
    region = None
    if request.mask is not None:
        mask = _decode(request.mask, "mask")
        if mask.size != base.size:
            raise invalid_input(
                f"mask is {mask.size[0]}x{mask.size[1]} but the image is "
                f"{base.size[0]}x{base.size[1]}",
                "mask",
                ErrorCode.INVALID_MASK,
            )
        region = mock_images.edit_region(mask)
    elif mock_images.has_transparency(base):
        # as OpenAI does without a mask: the image's own transparent pixels are the mask
        region = mock_images.edit_region(base)
        region = region if region.getbbox() else None
    return [mock_images.edit(base, region, prompt, key) for key in keys]


def _image_tokens(width: int, height: int) -> int:
    """A vendor-like price for one input image: a base cost plus one per 512px tile."""
    tiles = math.ceil(min(width, 2048) / 512) * math.ceil(min(height, 2048) / 512)
    return 85 + 170 * tiles


def _usage(request: ProviderRequest, rendered: _Rendered) -> dict[str, JSONValue]:
    text_tokens = len((request.prompt or "").split())
    width, height = rendered.size
    output_tokens = math.ceil(width * height / 1024) * len(rendered.images)
    input_tokens = text_tokens + rendered.image_tokens
    usage: dict[str, JSONValue] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens_details": {
            "text_tokens": text_tokens,
            "image_tokens": rendered.image_tokens,
        },
    }
    ticks = _control(request, "mock_cost_usd_ticks")
    if ticks is not None and ticks >= 0:
        usage["cost_in_usd_ticks"] = ticks
    return usage


# --- the provider -------------------------------------------------------------------------


class MockProvider(Adapter):
    """Answers every kind of request offline; see the module docstring."""

    vendor = VENDOR
    requires_key = False

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        """Sleep and fail as the request scripts, then render its images in a thread."""
        await _simulate_latency(request)
        _simulate_failure(request)
        out = _output_options(request)
        _check_inputs(request, out)
        rendered = await _render_once(request, out)
        content_type = mock_images.CONTENT_TYPES[out.fmt]
        width, height = rendered.size
        return ProviderResult(
            images=tuple(ImageOut(data, content_type, None) for data in rendered.images),
            usage=_usage(request, rendered),
            fields={
                "output_format": out.fmt,
                "size": f"{width}x{height}",
                "quality": request.params.get("quality", "auto"),
                "background": "transparent" if out.transparent else "opaque",
            },
        )


build = MockProvider  # the factory the registry calls: build(config, http)
