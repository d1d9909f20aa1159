"""What an input image must be, whichever way it enters (multipart upload, JSON base64 or
`data:` URL, gRPC bytes, an `input_images` entry, a URL a worker fetched): png, jpeg or
webp, a readable file, at most `MAX_IMAGE_PIXELS` pixels. Checked from the file header
only: pixels are never decoded here, and only Pillow's png/jpeg/webp decoders ever see
the bytes, so a decompression bomb (a 100-byte PNG declaring 20000 x 20000) costs nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from imagejobs.domain import constants
from imagejobs.domain.errors import ImageJobsError

ALLOWED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
MAX_PIXELS = constants.MAX_IMAGE_PIXELS  # beyond this a "valid" image is a decompression bomb


@dataclass(frozen=True)
class ImageInfo:
    format: str  # png | jpeg | webp
    size: tuple[int, int]  # width, height in pixels


class UnacceptableImage(ImageJobsError):
    """The bytes are not an image we accept; `message` names the input (`name`) and why.
    `too_large` marks a file over the byte limit (a 413, where the others are 400s)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


def sniff_type(data: bytes) -> str:
    """The image MIME type from magic bytes (png, jpeg, webp, gif), else octet-stream."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


def check_image(data: bytes, name: str, max_bytes: int) -> ImageInfo:
    """The image's format and size; UnacceptableImage (naming `name`) unless it is a
    png, jpeg or webp file of at most `max_bytes` bytes and `MAX_PIXELS` pixels."""
    if len(data) > max_bytes:
        raise UnacceptableImage(f"{name} is larger than {max_bytes} bytes", too_large=True)
    if sniff_type(data) == "image/gif":
        raise UnacceptableImage(f"{name}: image format must be png, jpeg or webp")
    try:
        # Pillow refuses a header declaring more than 2 x its own pixel limit with
        # DecompressionBombError; smaller ones are verified only when within ours.
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as img:
            fmt = ALLOWED_FORMATS.get(img.format or "")
            size = img.size
            if size[0] * size[1] <= MAX_PIXELS:
                img.verify()
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(name) from exc
    except Exception as exc:  # a damaged file makes Pillow raise nearly anything
        raise UnacceptableImage(f"{name} is not a valid image") from exc
    if fmt is None:
        raise UnacceptableImage(f"{name}: image format must be png, jpeg or webp")
    if size[0] * size[1] > MAX_PIXELS:
        raise _too_many_pixels(name, size)
    return ImageInfo(format=fmt, size=size)


def _too_many_pixels(name: str, size: tuple[int, int] | None = None) -> UnacceptableImage:
    shown = f" ({size[0]}x{size[1]})" if size else ""
    return UnacceptableImage(
        f"{name}: image dimensions{shown} are too large; at most {MAX_PIXELS} pixels"
    )
