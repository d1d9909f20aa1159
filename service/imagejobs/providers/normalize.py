"""Mapping between the three ways vendors express image shape — `size` ("WxH"),
`aspect_ratio` ("16:9") + `resolution` ("1K"/"2K"/"4K"), and `width`/`height` — and the
mask conventions (transparent-means-edit vs white-means-edit). Pure functions."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from PIL import Image

COMMON_ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
RESOLUTION_LONG_EDGE = {"1K": 1024, "2K": 2048, "4K": 4096}

# Request fields that only OpenAI-style image APIs understand, or that describe shape and
# inputs which non-OpenAI adapters map into their own fields: not passed through as-is.
OPENAI_STYLE_PARAMS = frozenset(
    {
        "n",
        "size",
        "quality",
        "style",
        "response_format",
        "background",
        "moderation",
        "output_compression",
        "partial_images",
        "user",
        "input_images",
        "resolution",
        "type",
        "input_fidelity",
        "aspect_ratio",
    }
)


def parse_size(size: str | None) -> tuple[int, int] | None:
    """`"1024x768"` -> (1024, 768); None for absent, `auto` or malformed values."""
    if not size or "x" not in size.lower():
        return None
    w, _, h = size.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def parse_aspect_ratio(ratio: str | None) -> Fraction | None:
    """`"16:9"` -> Fraction(16, 9); None when absent or malformed."""
    if not ratio or ":" not in ratio:
        return None
    a, _, b = ratio.partition(":")
    try:
        x, y = int(a), int(b)
    except ValueError:
        return None
    return Fraction(x, y) if x > 0 and y > 0 else None


def nearest_aspect_ratio(
    width: int, height: int, choices: Iterable[str] = COMMON_ASPECT_RATIOS
) -> str:
    """The choice closest to width:height (compared in log space, so 2:1 and 1:2 are
    equally far from 1:1)."""
    target = math.log(width / height)
    best = min(choices, key=lambda c: abs(math.log(_ratio_float(c)) - target))
    return best


def _ratio_float(ratio: str) -> float:
    value = parse_aspect_ratio(ratio)
    return float(value) if value else 1.0


def resolution_for(width: int, height: int) -> str:
    """The smallest named resolution ("1K", "2K", "4K") whose long edge covers the size."""
    edge = max(width, height)
    for name, long_edge in RESOLUTION_LONG_EDGE.items():
        if edge <= long_edge:
            return name
    return "4K"


def size_for(
    aspect_ratio: str | None, resolution: str | None, multiple: int = 64
) -> tuple[int, int]:
    """Width and height for an aspect ratio and a named resolution (default 1:1, 1K),
    rounded to `multiple` pixels as most diffusion models require."""
    ratio = parse_aspect_ratio(aspect_ratio) or Fraction(1, 1)
    edge = RESOLUTION_LONG_EDGE.get((resolution or "1K").upper(), 1024)
    width: float = edge
    height: float = edge
    if ratio >= 1:
        height = edge / float(ratio)
    else:
        width = edge * float(ratio)
    return _round_to(width, multiple), _round_to(height, multiple)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def dimensions(
    params: Mapping[str, Any], default: tuple[int, int] = (1024, 1024)
) -> tuple[int, int]:
    """Width and height from whichever of `width`/`height`, `size`, or
    `aspect_ratio`+`resolution` the request gave, in that order of precedence."""
    width, height = params.get("width"), params.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    parsed = parse_size(params.get("size") if isinstance(params.get("size"), str) else None)
    if parsed:
        return parsed
    ar, res = params.get("aspect_ratio"), params.get("resolution")
    if isinstance(ar, str) or isinstance(res, str):
        return size_for(ar if isinstance(ar, str) else None, res if isinstance(res, str) else None)
    return default


def without(params: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """`params` minus the named keys (for parameters a vendor rejects)."""
    drop = set(names)
    return {k: v for k, v in params.items() if k not in drop}


def transparent_to_white_mask(mask_png: bytes) -> bytes:
    """Convert an OpenAI-style mask (edit where alpha == 0) into a white-means-edit
    greyscale PNG (white = edit, black = keep), as Stability and BFL expect (Bedrock's
    Titan/Nova masks are the opposite: black = edit; bedrock.py inverts this)."""
    with Image.open(io.BytesIO(mask_png)) as img:
        alpha = img.convert("RGBA").getchannel("A")
    out = alpha.point(lambda a: 255 if a == 0 else 0).convert("L")
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def white_to_transparent_mask(mask_png: bytes) -> bytes:
    """The inverse: a white-means-edit mask into an RGBA PNG transparent where white."""
    with Image.open(io.BytesIO(mask_png)) as img:
        grey = img.convert("L")
    alpha = grey.point(lambda v: 0 if v >= 128 else 255)
    rgba = Image.new("RGBA", grey.size, (0, 0, 0, 255))
    rgba.putalpha(alpha)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    return buf.getvalue()
