"""Uploaded images: multipart/form-data parsing (python-multipart's streaming parser),
base64 / `data:` URL decoding, and checking that each file really is an allowed image.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from imagejobs.domain.errors import ErrorContext, InvalidRequest, PayloadTooLarge
from imagejobs.domain.images import ImageInfo, UnacceptableImage, check_image, sniff_type


@dataclass(frozen=True)
class Upload:
    """One uploaded file."""

    data: bytes
    filename: str = "image"
    content_type: str = ""

    @classmethod
    def from_base64(cls, value: object, name: str) -> Upload:
        """From a base64 string or a `data:image/...;base64,` URL (JSON uploads)."""
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"{name} must be a base64 string or a data: URL", param=name)
        text = value
        if text.startswith("data:"):
            header, sep, text = text.partition(",")
            if not sep or ";base64" not in header:
                raise InvalidRequest(f"{name}: only base64 data: URLs are accepted", param=name)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"{name} is not valid base64", param=name) from exc
        return cls(data=data, filename=name)

    def inspect(self, name: str, max_bytes: int, extra: ErrorContext) -> ImageInfo:
        """Check size, format and dimensions (domain/images.py); InvalidRequest (400) or
        PayloadTooLarge (413) naming `name` if it is not an allowed image."""
        try:
            return check_image(self.data, name, max_bytes)
        except UnacceptableImage as exc:
            error = PayloadTooLarge if exc.too_large else InvalidRequest
            raise error(exc.message, param=name, **extra) from exc

    @property
    def mime(self) -> str:
        """The content type from the bytes themselves (clients' claims vary)."""
        sniffed = sniff_type(self.data)
        if sniffed == "application/octet-stream" and self.content_type:
            return self.content_type
        return sniffed


class _Collector:
    """Callbacks for python-multipart: collects fields (repeatable) and files."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str] | str] = {}
        self.files: dict[str, list[Upload]] = {}
        self._headers: dict[str, str] = {}
        self._hname = b""
        self._hvalue = b""
        self._data: list[bytes] = []

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._add("name", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("value", d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": lambda d, s, e: self._data.append(bytes(d[s:e])),
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers, self._data = {}, []

    def _add(self, what: str, chunk: bytes) -> None:
        if what == "name":
            self._hname += chunk
        else:
            self._hvalue += chunk

    def _header_end(self) -> None:
        self._headers[self._hname.decode("latin-1").lower()] = self._hvalue.decode("utf-8")
        self._hname, self._hvalue = b"", b""

    def _end(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in params:
            raise InvalidRequest("failed to parse multipart form: a part has no field name")
        name = params[b"name"].decode("utf-8")
        data = b"".join(self._data)
        if b"filename" in params:
            upload = Upload(
                data=data,
                filename=params[b"filename"].decode("utf-8", "replace"),
                content_type=self._headers.get("content-type", ""),
            )
            self.files.setdefault(name, []).append(upload)
            return
        value = data.decode("utf-8", "replace")
        previous = self.fields.get(name)
        if previous is None:
            self.fields[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            self.fields[name] = [previous, value]


def parse_multipart(
    content_type: str, body: bytes
) -> tuple[dict[str, list[str] | str], dict[str, list[Upload]]]:
    """(fields, files) of a multipart/form-data body. A field sent several times becomes a
    list (`fallbacks`); files are grouped by field name (`image[]`, `image`, `mask`)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("failed to parse multipart form: no boundary in Content-Type")
    collector = _Collector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except InvalidRequest:
        raise
    except Exception as exc:  # the parser's own errors: MultipartParseError, ValueError
        raise InvalidRequest(f"failed to parse multipart form: {exc}") from exc
    if parser.state != MultipartState.END:
        raise InvalidRequest("failed to parse multipart form: unexpected end of body")
    for name, value in collector.fields.items():
        if name == "fallbacks" and isinstance(value, str):
            collector.fields[name] = [value]
    return collector.fields, collector.files
