"""The mock provider's picture-making: deterministic Pillow renderings derived from a key.

Every function is pure and CPU-bound (call them from a worker thread): the same `key`
(a sha256 digest of the request's prompt, seed, model, size, format and image index) and
the same inputs always give the same pixels, and every value is made with whole-image
Pillow operations (gradients, fills, lookup tables) rather than per-pixel Python loops, so
a 1024x1024 image takes a few milliseconds before encoding.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import json
import random
from collections.abc import Sequence

from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageOps, features

RGB = tuple[int, int, int]

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

MAX_CAPTION_CHARS = 400  # longer prompts are cut; the caption only shows what was asked
MAX_CAPTION_LINES = 6
BACKGROUND_TOLERANCE = 40  # per-channel distance from the corner colour that counts as background
NOISE_TILE = 64  # side of the noise tile a variation is perturbed with (scaled up to fit)
NOISE_AMPLITUDE = 8  # a variation's pixels move by at most this much per channel
PNG_COMPRESS_LEVEL = 3  # zlib level: 6 (the default) costs ~40% more time for ~40% less size
WEBP_METHOD = 2  # libwebp effort 0-6: 4 (the default) takes twice as long for ~5% less size

_FREETYPE = features.check_module("freetype2")


def derive_key(*parts: object) -> bytes:
    """A 32-byte digest of `parts` (JSON-encoded, so `1` and `"1"` differ)."""
    blob = json.dumps(parts, default=str, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).digest()


def _rng(key: bytes, purpose: str) -> random.Random:
    return random.Random(key + purpose.encode())


def _vivid(rng: random.Random) -> RGB:
    """A saturated colour; dark enough that white caption text stays legible on it."""
    r, g, b = colorsys.hsv_to_rgb(
        rng.random(), 0.45 + 0.45 * rng.random(), 0.5 + 0.45 * rng.random()
    )
    return round(r * 255), round(g * 255), round(b * 255)


# --- generation ---------------------------------------------------------------------------


def generate(prompt: str, key: bytes, size: tuple[int, int], transparent: bool) -> Image.Image:
    """A picture for `prompt`: a two-colour gradient background (or a transparent one),
    a few translucent shapes, and the prompt itself as a caption. RGB, or RGBA when
    `transparent`."""
    rng = _rng(key, "generate")
    if transparent:
        img = Image.new("RGBA", size, (0, 0, 0, 0))
    else:
        grey = _gradient(rng)
        dark, light = _vivid(rng), _vivid(rng)
        # colour and scale the 256x256 ramp (NEAREST: adjacent steps differ by one level,
        # so it looks as smooth as BILINEAR at a fifth of the cost). Colouring is a
        # per-pixel lookup, so it commutes with NEAREST: do it on the smaller of the two.
        if size[0] * size[1] < 256 * 256:
            img = ImageOps.colorize(grey.resize(size, Image.Resampling.NEAREST), dark, light)
        else:
            img = ImageOps.colorize(grey, dark, light).resize(size, Image.Resampling.NEAREST)
    draw_shapes(img, rng, count=3 + rng.randrange(3), opaque=transparent)
    draw_caption(img, prompt)
    return img


_TURNS = [
    None,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
]


def _gradient(rng: random.Random) -> Image.Image:
    """A 256x256 greyscale linear or radial gradient in one of four orientations."""
    radial = rng.random() < 0.25
    return _base_gradient(radial, _TURNS.index(rng.choice(_TURNS)))


@functools.cache
def _base_gradient(radial: bool, turn: int) -> Image.Image:
    """The eight possible gradients, made once (callers only read them)."""
    base = Image.radial_gradient("L") if radial else Image.linear_gradient("L")
    transpose = _TURNS[turn]
    return base if transpose is None else base.transpose(transpose)


def draw_shapes(img: Image.Image, rng: random.Random, count: int, opaque: bool = False) -> None:
    """Draw `count` ellipses and rectangles at places and in colours taken from `rng`."""
    width, height = img.size
    draw = ImageDraw.Draw(img, "RGBA")
    for _ in range(count):
        x0, y0 = int(rng.random() * width * 0.8), int(rng.random() * height * 0.8)
        x1 = x0 + max(1, int((0.1 + 0.35 * rng.random()) * width))
        y1 = y0 + max(1, int((0.1 + 0.35 * rng.random()) * height))
        fill = (*_vivid(rng), 255 if opaque else 170 + rng.randrange(60))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)


def draw_caption(img: Image.Image, text: str) -> None:
    """Write `text` (wrapped, at most a few lines) on a dark band along the bottom edge."""
    width, height = img.size
    text = " ".join(text.split())
    if len(text) > MAX_CAPTION_CHARS:
        text = text[:MAX_CAPTION_CHARS] + "..."
    if not text or width < 32 or height < 32:
        return
    font_size = max(10, min(width, height) // 24)
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    if _FREETYPE:
        font = ImageFont.load_default(size=font_size)
    else:  # the bitmap fallback font only knows Latin-1
        font = ImageFont.load_default()
        text = text.encode("latin-1", "replace").decode("latin-1")
    margin = max(4, font_size // 2)
    lines = _wrap(text, font, width - 2 * margin)
    spacing = max(2, font_size // 4)
    band = len(lines) * (font_size + spacing) + 2 * margin
    draw = ImageDraw.Draw(img, "RGBA")
    draw.rectangle((0, max(0, height - band), width, height), fill=(0, 0, 0, 150))
    draw.multiline_text(
        (margin, max(0, height - band) + margin),
        "\n".join(lines),
        font=font,
        fill=(255, 255, 255, 255),
        spacing=spacing,
    )


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels, cut to MAX_CAPTION_LINES with an ellipsis."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
        if len(lines) == MAX_CAPTION_LINES:
            lines[-1] += "..."
            return lines
    lines.append(current)
    return lines


# --- edits and variations -------------------------------------------------------------------


def edit_region(mask: Image.Image) -> Image.Image:
    """The area to edit, as an L image (255 = edit): where the mask's alpha is 0."""
    return mask.convert("RGBA").getchannel("A").point(lambda a: 255 if a == 0 else 0)


def edit(base: Image.Image, region: Image.Image | None, prompt: str, key: bytes) -> Image.Image:
    """`base` with the pixels in `region` (everything when None) inverted, tinted with a
    key-derived colour, overdrawn with shapes and captioned with the prompt. RGBA."""
    rng = _rng(key, "edit")
    original = base.convert("RGBA")
    tint = Image.new("RGB", original.size, _vivid(rng))
    # drawn in RGB so translucent shapes blend rather than punch holes; opaque at the end
    changed = Image.blend(ImageOps.invert(original.convert("RGB")), tint, 0.35)
    draw_shapes(changed, rng, count=2 + rng.randrange(2))
    box = region.getbbox() if region is not None else None
    if box is None:
        draw_caption(changed, prompt)
    else:  # caption the edited area itself, where it shows
        area = changed.crop(box)
        draw_caption(area, prompt)
        changed.paste(area, box[:2])
    if region is None:
        return changed.convert("RGBA")
    return Image.composite(changed.convert("RGBA"), original, region)


def remove_background(base: Image.Image) -> Image.Image:
    """`base` as RGBA with every pixel close to the top-left corner's colour made
    transparent (a stand-in for a segmentation model on flat-background product shots)."""
    rgba = base.convert("RGBA")
    rgb = rgba.convert("RGB")
    corner = tuple(rgb.crop((0, 0, 1, 1)).tobytes())
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, corner))
    red, green, blue = diff.split()
    distance = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    keep = distance.point(lambda d: 255 if d > BACKGROUND_TOLERANCE else 0)
    rgba.putalpha(ImageChops.darker(rgba.getchannel("A"), keep))
    return rgba


def vary(base: Image.Image, key: bytes) -> Image.Image:
    """A perturbed copy of `base`: hue rotated, lightly noised and shifted a few pixels,
    all by amounts taken from `key`. RGBA, same size."""
    rng = _rng(key, "vary")
    rgba = base.convert("RGBA")
    alpha = rgba.getchannel("A")
    hue, sat, val = rgba.convert("RGB").convert("HSV").split()
    shift = 24 + rng.randrange(160)  # of 256: a clearly different but related palette
    hue = hue.point(lambda h: (h + shift) % 256)
    rgb = Image.merge("HSV", (hue, sat, val)).convert("RGB")
    tile = Image.frombytes(
        "L", (NOISE_TILE, NOISE_TILE), rng.randbytes(NOISE_TILE * NOISE_TILE)
    ).point(lambda v: v * (2 * NOISE_AMPLITUDE) // 255)
    noise = tile.resize(rgb.size, Image.Resampling.NEAREST).convert("RGB")
    rgb = ImageChops.add(rgb, noise, scale=1.0, offset=-NOISE_AMPLITUDE)
    width, height = rgb.size
    dx = rng.randrange(-max(1, width // 50), max(1, width // 50) + 1)
    dy = rng.randrange(-max(1, height // 50), max(1, height // 50) + 1)
    out = ImageChops.offset(rgb, dx, dy).convert("RGBA")
    out.putalpha(ImageChops.offset(alpha, dx, dy))
    return out


# --- encoding -------------------------------------------------------------------------------


def has_transparency(img: Image.Image) -> bool:
    """Whether any pixel of `img` is not fully opaque."""
    if img.mode not in ("RGBA", "LA", "PA"):
        return False
    low, _high = img.getchannel("A").getextrema()
    return isinstance(low, int | float) and low < 255


def encode(img: Image.Image, fmt: str, quality: int | None, keep_alpha: bool) -> bytes:
    """`img` as `fmt` ("png", "jpeg" or "webp") bytes. JPEG is flattened onto white;
    the alpha channel is kept for png/webp when `keep_alpha` or when it is in use.
    `quality` (0-100) applies to jpeg/webp only."""
    if fmt == "jpeg" or not (keep_alpha or has_transparency(img)):
        img = _flatten(img)
    elif img.mode != "RGBA":
        img = img.convert("RGBA")
    options: dict[str, int] = {
        "png": {"compress_level": PNG_COMPRESS_LEVEL},
        "webp": {"method": WEBP_METHOD},
    }.get(fmt, {})
    if fmt in ("jpeg", "webp") and quality is not None:
        options["quality"] = quality
    buf = io.BytesIO()
    img.save(buf, format=FORMATS[fmt], **options)
    return buf.getvalue()


def _flatten(img: Image.Image) -> Image.Image:
    if not has_transparency(img):
        return img.convert("RGB")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")


def fit(img: Image.Image, size: Sequence[int] | None) -> Image.Image:
    """`img` resized to `size` (width, height), or unchanged when None or already so."""
    if size is None or tuple(img.size) == tuple(size):
        return img
    return img.resize((size[0], size[1]), Image.Resampling.LANCZOS)
