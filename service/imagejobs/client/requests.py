"""Building the typed `ImageRequest` from Python values: named fields go to their proto
fields, every other parameter to `extra` (passed through to the provider unchanged, as
REST's unknown body keys are)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from imagejobs.v1 import jobs_pb2

# bytes, or a path to read them from
ImageInput = bytes | str | os.PathLike[str]

_FIELDS = jobs_pb2.ImageRequest.DESCRIPTOR.fields_by_name
# fields set from their own arguments, never from `params`
_OWN = frozenset({"model", "prompt", "images", "mask", "extra"})


def is_text_field(name: str) -> bool:
    """Whether `name` is a text field of the request (`size`, `quality`, `user`, …),
    whose value a command line must not read as a number."""
    field = _FIELDS.get(name)
    return field is not None and field.type == field.TYPE_STRING


def image_bytes(image: ImageInput) -> bytes:
    """The bytes of an image given as bytes or as a file path."""
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _set(msg: jobs_pb2.ImageRequest, name: str, value: Any) -> None:
    try:
        if _FIELDS[name].is_repeated:
            items = [value] if isinstance(value, str) or not isinstance(value, Iterable) else value
            getattr(msg, name).extend(items)
        else:
            setattr(msg, name, value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameter {name}: {exc}") from None


def image_request(
    model: str,
    prompt: str | None,
    *,
    images: Sequence[ImageInput] = (),
    mask: ImageInput | None = None,
    params: Mapping[str, Any] | None = None,
) -> jobs_pb2.ImageRequest:
    """The request message. `params` are any other request fields (`size`, `n`, `seed`,
    `quality`, …) and provider parameters (`mock_latency_ms`, …); a value of the wrong
    type for a named field is a ValueError naming it. Reads image paths from disk."""
    msg = jobs_pb2.ImageRequest(model=model, prompt=prompt or "")
    extra: dict[str, Any] = {}
    for name, value in (params or {}).items():
        if name in _OWN:
            raise ValueError(f"parameter {name} has its own argument")
        if value is None:
            continue
        if name in _FIELDS:
            _set(msg, name, value)
        else:
            extra[name] = value
    if extra:
        msg.extra.update(extra)
    msg.images.extend(image_bytes(i) for i in images)
    if mask is not None:
        msg.mask = image_bytes(mask)
    return msg
