"""Turning a submitted body (JSON, multipart, or a typed gRPC message) into one validated
`ImageRequest`, with the contract's 400 messages. Pure apart from the multipart parser.

Every path ends in `validate()`, so REST and gRPC clients get the same rules, the model
catalogue's among them (api/lifecycle.py: a retired model or fallback is a 400).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from google.protobuf import json_format

from imagejobs.api.lifecycle import lifecycle_warnings, utc_today
from imagejobs.api.uploads import Upload, parse_multipart
from imagejobs.domain import constants
from imagejobs.domain.errors import ErrorContext, InvalidRequest, PayloadTooLarge
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.providers.catalogue import Catalogue
from imagejobs.providers.registry import KNOWN_PROVIDERS
from imagejobs.v1 import jobs_pb2

INT_FIELDS = frozenset(
    {"n", "output_compression", "partial_images", "seed", "num_inference_steps"}
    | {"mock_latency_ms", "mock_fail_status", "mock_fail_times"}
)
RESPONSE_FORMATS = frozenset({"url", "b64_json"})
OUTPUT_FORMATS = frozenset({"png", "jpeg", "jpg", "webp"})
EDIT_TYPES = frozenset({"inpainting", "outpainting", "background_removal"})
# keys that are ours, not the provider's
_RESERVED = frozenset({"model", "prompt", "fallbacks", "stream", "image", "image[]", "mask"})
# text fields held to the prompt's length limit
_PROMPT_FIELDS = ("prompt", "negative_prompt")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SHOWN_VALUE_CHARS = 64  # an invalid value is echoed in the error message up to this long


@dataclass(frozen=True)
class ImageRequest:
    """A validated request. `params` holds every other field (known and pass-through)."""

    kind: Kind
    model: ModelRef
    prompt: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    images: tuple[Upload, ...] = ()
    mask: Upload | None = None
    fallbacks: tuple[ModelRef, ...] = ()
    warnings: tuple[str, ...] = ()  # the catalogue's word on deprecated models named


def parse_body(kind: Kind, content_type: str, body: bytes, limits: Limits) -> ImageRequest:
    """A REST body: JSON for every kind, or multipart/form-data for edits and variations."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "multipart/form-data":
        if kind is Kind.GENERATION:
            raise InvalidRequest("invalid request format: generations take a JSON body")
        fields, files = parse_multipart(content_type, body)
        masks = files.get("mask", [])
        images = files.get("image[]", []) + files.get("image", [])
        return validate(kind, fields, images, masks[0] if masks else None, limits)
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"invalid request format: {exc}") from exc
    except RecursionError:
        raise InvalidRequest("invalid request format: the JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest("invalid request format: the body must be a JSON object")
    return from_json_object(kind, data, limits)


def _check_json(value: Any, max_depth: int) -> None:
    """400 unless `value` nests at most `max_depth` deep and every string in it (keys too)
    is valid Unicode: JSON's `\\ud800` escapes decode to lone surrogates, which no later
    step (UTF-8, protobuf) could encode."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > max_depth:
            raise InvalidRequest(
                f"invalid request format: the JSON is nested more than {max_depth} deep"
            )
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append((child, depth + 1))
        else:
            stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            "invalid request format: a string holds an unpaired UTF-16 surrogate"
        ) from None


def from_json_object(kind: Kind, data: dict[str, Any], limits: Limits) -> ImageRequest:
    """A JSON object; edits and variations carry images as base64 or `data:` URLs."""
    fields = dict(data)
    images: list[Upload] = []
    for name in ("image[]", "image", "images"):
        raw = fields.pop(name, None)
        for i, item in enumerate(raw if isinstance(raw, list) else [] if raw is None else [raw]):
            images.append(Upload.from_base64(item, f"{name}[{i}]"))
    mask_raw = fields.pop("mask", None)
    mask = Upload.from_base64(mask_raw, "mask") if mask_raw is not None else None
    return validate(kind, fields, images, mask, limits)


def from_proto(kind: Kind, msg: jobs_pb2.ImageRequest, limits: Limits) -> ImageRequest:
    """A typed gRPC request (image bytes fields, no multipart)."""
    data: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    for name in ("images", "mask", "extra"):
        data.pop(name, None)
    if msg.HasField("extra"):
        for key, value in json_format.MessageToDict(msg.extra).items():
            data.setdefault(key, value)
    if "seed" in data:  # int64 -> JSON string in MessageToDict
        data["seed"] = int(data["seed"])
    images = [Upload(data=b, filename=f"image-{i}") for i, b in enumerate(msg.images)]
    mask = Upload(data=msg.mask, filename="mask") if msg.mask else None
    return validate(kind, data, images, mask, limits)


@dataclass(frozen=True)
class Limits:
    """What a request is held to: input limits (defaults suit the upstream APIs), and the
    model catalogue its models are looked up in on `today()`."""

    max_prompt_chars: int = constants.DEFAULT_MAX_PROMPT_CHARS
    max_n: int = constants.MAX_N
    max_images: int = constants.MAX_IMAGES
    max_file_bytes: int = constants.MAX_FILE_BYTES
    max_total_bytes: int = constants.MAX_BODY_BYTES
    max_json_depth: int = constants.MAX_JSON_DEPTH
    max_fallbacks: int = constants.MAX_FALLBACKS
    catalogue: Catalogue = field(default_factory=Catalogue.builtin)
    today: Callable[[], date] = utc_today


def validate(
    kind: Kind,
    fields: Mapping[str, Any],
    images: list[Upload],
    mask: Upload | None,
    limits: Limits,
) -> ImageRequest:
    """The shared rules, in the order the contract's error table lists them."""
    _check_json(dict(fields), limits.max_json_depth)
    model = _model_ref(fields.get("model"))
    if model is None:
        raise InvalidRequest("model should be in provider/model format", param="model")
    extra = ErrorContext(provider=model.provider, model=model.name, request_type=kind.request_type)
    if _truthy(fields.get("stream")):
        raise InvalidRequest(
            "stream is not supported for async image generations", param="stream", **extra
        )
    prompt = fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string", param="prompt", **extra)
    prompt_required = kind is Kind.GENERATION or (
        kind is Kind.EDIT and fields.get("type") != "background_removal"
    )
    if prompt_required and not (prompt or "").strip():
        raise InvalidRequest("prompt cannot be empty", param="prompt", **extra)
    for name in _PROMPT_FIELDS:
        text = fields.get(name)
        if isinstance(text, str) and len(text) > limits.max_prompt_chars:
            raise InvalidRequest(
                f"{name} is longer than {limits.max_prompt_chars} characters", param=name, **extra
            )
    params = _params(fields, extra, limits)
    _check_input_images(params.get("input_images"), limits, extra)
    fallbacks = _fallbacks(fields.get("fallbacks"), limits, extra)
    warnings = lifecycle_warnings(limits.catalogue, limits.today(), kind, [model, *fallbacks])
    if kind is not Kind.GENERATION:
        _check_images(images, mask, limits, extra)
    return ImageRequest(
        kind=kind,
        model=model,
        prompt=prompt if kind is not Kind.VARIATION else None,
        params=params,
        images=tuple(images[:1] if kind is Kind.VARIATION else images),
        mask=mask if kind is Kind.EDIT else None,
        fallbacks=fallbacks,
        warnings=warnings,
    )


def _show(value: Any) -> str:
    """A caller's value for an error message, cut short (it may be megabytes)."""
    text = str(value)
    if len(text) > SHOWN_VALUE_CHARS:
        return text[:SHOWN_VALUE_CHARS] + "…"
    return text


def _check_input_images(value: Any, limits: Limits, extra: ErrorContext) -> None:
    """`input_images` (a string or a list of strings: URLs, `data:` URLs or base64) count
    against the same image limit as uploads, and each inline one is held to the same
    image checks (domain/images.py); URLs are checked by the worker that fetches them."""
    if value is None:
        return
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise InvalidRequest(
            "input_images must be a list of strings", param="input_images", **extra
        )
    if len(entries) > limits.max_images:
        raise InvalidRequest(
            f"at most {limits.max_images} input_images are allowed", param="input_images", **extra
        )
    for i, entry in enumerate(entries):
        if entry[:8].lower().startswith(("http://", "https://")):
            continue
        name = f"input_images[{i}]"
        Upload.from_base64(entry, name).inspect(name, limits.max_file_bytes, extra)


def _model_ref(value: Any) -> ModelRef | None:
    """The `provider/model` of a known provider, or None."""
    if not isinstance(value, str):
        return None
    try:
        ref = ModelRef.parse(value)
    except ValueError:
        return None
    return ref if ref.provider in KNOWN_PROVIDERS else None


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _params(fields: Mapping[str, Any], extra: ErrorContext, limits: Limits) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in fields.items():
        if key in _RESERVED or value is None:
            continue
        if key in INT_FIELDS:
            value = _as_int(key, value, extra)
        params[key] = value
    n = params.get("n")
    if n is not None and not 1 <= n <= limits.max_n:
        raise InvalidRequest(f"n must be between 1 and {limits.max_n}", param="n", **extra)
    for name, choices in (("response_format", RESPONSE_FORMATS), ("output_format", OUTPUT_FORMATS)):
        _check_choice(params, name, choices, extra)
    comp = params.get("output_compression")
    if comp is not None and not 0 <= comp <= 100:
        raise InvalidRequest(
            "output_compression must be between 0 and 100", param="output_compression", **extra
        )
    _check_choice(params, "type", EDIT_TYPES, extra)
    return params


def _check_choice(
    params: dict[str, Any], name: str, choices: frozenset[str], extra: ErrorContext
) -> None:
    """400 unless the parameter is absent or one of `choices` (a list or an object is not:
    checked before the membership test, which such values cannot take)."""
    value = params.get(name)
    if value is not None and not (isinstance(value, str) and value in choices):
        raise InvalidRequest(f"invalid {name} value: {_show(value)}", param=name, **extra)


def _as_int(key: str, value: Any, extra: ErrorContext) -> int:
    """An integer field (a JSON number or a numeric string) within int64, else 400."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:  # not a number, or more digits than int() parses
            number = None
    if number is None or not INT64_MIN <= number <= INT64_MAX:
        raise InvalidRequest(f"invalid {key} value: {_show(value)}", param=key, **extra)
    return number


def _fallbacks(value: Any, limits: Limits, extra: ErrorContext) -> tuple[ModelRef, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if len(items) > limits.max_fallbacks:
        raise InvalidRequest(
            f"at most {limits.max_fallbacks} fallbacks are allowed", param="fallbacks", **extra
        )
    refs = [_model_ref(item) for item in items]
    if any(ref is None for ref in refs):
        raise InvalidRequest(
            "fallbacks should be in provider/model format", param="fallbacks", **extra
        )
    return tuple(ref for ref in refs if ref is not None)


def _check_images(
    images: list[Upload], mask: Upload | None, limits: Limits, extra: ErrorContext
) -> None:
    if not images:
        raise InvalidRequest("at least one image is required", param="image", **extra)
    if len(images) > limits.max_images:
        raise InvalidRequest(
            f"at most {limits.max_images} images are allowed", param="image", **extra
        )
    total = sum(len(i.data) for i in images) + (len(mask.data) if mask else 0)
    if total > limits.max_total_bytes:
        raise PayloadTooLarge(
            f"images total more than {limits.max_total_bytes} bytes", param="image", **extra
        )
    first = None
    for i, image in enumerate(images):
        info = image.inspect(f"image[{i}]", limits.max_file_bytes, extra)
        first = first or info
    if mask is not None and first is not None:
        info = mask.inspect("mask", limits.max_file_bytes, extra)
        if info.format != "png":
            raise InvalidRequest("mask must be a PNG image", param="mask", **extra)
        if info.size != first.size:
            raise InvalidRequest(
                f"mask must have the same dimensions as the image "
                f"({first.size[0]}x{first.size[1]}), got {info.size[0]}x{info.size[1]}",
                param="mask",
                **extra,
            )


MAX_IDEMPOTENCY_KEY_CHARS = 255


def fingerprint(request: ImageRequest, webhook: str = "") -> str:
    """A stable hash of everything that makes the job what it is (the webhook endpoint it
    names included; a request without one hashes as it always did)."""

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    doc: dict[str, Any] = {
        "kind": request.kind.value,
        "model": str(request.model),
        "prompt": request.prompt,
        "params": dict(request.params),
        "fallbacks": [str(f) for f in request.fallbacks],
        "images": [digest(u.data) for u in request.images],
        "mask": digest(request.mask.data) if request.mask is not None else None,
    }
    if webhook:
        doc["webhook"] = webhook
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return digest(text.encode())


def check_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
            param="idempotency_key",
        )
    return key
