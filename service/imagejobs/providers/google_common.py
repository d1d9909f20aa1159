"""Request and response bodies both Google image APIs share: the Gemini API and Vertex AI
serve Gemini image models through `:generateContent` and Imagen through `:predict` with
the same JSON. Only the URL, the auth and a few Imagen parameters differ (`gemini.py`
holds the adapter; `vertex.py` subclasses it for its host and OAuth).

- Gemini models: the prompt and every input image (`inlineData`) in one user turn;
  `generationConfig{responseModalities, imageConfig{aspectRatio, imageSize}, seed}`.
- Imagen: `instances[{prompt}]`, `parameters{sampleCount, aspectRatio, sampleImageSize,
  outputOptions, ...}`.
- `size` maps to the nearest allowed aspect ratio (plus an image size above 1K);
  explicit `aspect_ratio`/`resolution` win. Unknown request keys pass through into
  `parameters` (Imagen) or `generationConfig` (Gemini; top-level fields stay top-level).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Mapping, Sequence

import httpx

from imagejobs import safefetch
from imagejobs.domain.errors import (
    BadUpstreamResponse,
    ErrorCode,
    ErrorType,
    FetchError,
    ProviderError,
)
from imagejobs.domain.images import UnacceptableImage, check_image, sniff_type
from imagejobs.providers import normalize, upstream
from imagejobs.providers.base import (
    KNOWN_PARAMS,
    ImageInput,
    ImageOut,
    JSONValue,
    ProviderConfig,
    ProviderRequest,
    ProviderResult,
    b64,
    invalid_input,
)

IMAGEN_PER_CALL = 4  # Imagen's sampleCount is 1..4
IMAGEN_ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
GEMINI_ASPECT_RATIOS = normalize.COMMON_ASPECT_RATIOS

_GENERATE_CONTENT_TOP_LEVEL = frozenset(
    {"safetySettings", "systemInstruction", "tools", "toolConfig", "labels", "cachedContent"}
)
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_SAFETY_REASONS = frozenset(
    {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION"}
)

# google.rpc.Code names -> the contract's error types; the name itself becomes `code`.
ERROR_TYPES = {
    "INVALID_ARGUMENT": ErrorType.INVALID_REQUEST,
    "FAILED_PRECONDITION": ErrorType.INVALID_REQUEST,
    "OUT_OF_RANGE": ErrorType.INVALID_REQUEST,
    "UNAUTHENTICATED": ErrorType.AUTHENTICATION,
    "PERMISSION_DENIED": ErrorType.PERMISSION,
    "NOT_FOUND": ErrorType.NOT_FOUND,
    "RESOURCE_EXHAUSTED": ErrorType.RATE_LIMIT,
    "ABORTED": ErrorType.API,
    "INTERNAL": ErrorType.API,
    "UNAVAILABLE": ErrorType.API,
    "DEADLINE_EXCEEDED": ErrorType.API,
}
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)s\s*")


def is_imagen(model: str) -> bool:
    """Imagen models (`imagen-4.0-generate-001`, Vertex's `imagegeneration@006`)."""
    return model.lower().startswith(("imagen", "imagegeneration"))


def model_id(model: str, provider: str) -> str:
    """The model name for the URL path; rejects anything that could escape the path."""
    name = model.removeprefix("models/")
    if not _MODEL_RE.fullmatch(name):
        raise invalid_input(
            f"invalid {provider} model name: {model!r}", "model", ErrorCode.INVALID_MODEL
        )
    return name


def passthrough(params: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    """The request keys the contract does not know, unchanged."""
    return {k: v for k, v in params.items() if k not in KNOWN_PARAMS}


def shape(
    request: ProviderRequest, choices: Sequence[str], *, max_size: str = "4K"
) -> tuple[str | None, str | None]:
    """(aspect ratio, image size) for the request, either None when not asked for.

    An explicit `aspect_ratio`/`resolution` is sent as given; a `size` maps to the nearest
    allowed ratio, and to an image size only above the vendors' 1K default (models that
    cannot go larger reject `imageSize`, so a 1K request must not send one)."""
    ratio = request.param_str("aspect_ratio")
    image_size = request.param_str("resolution")
    parsed = normalize.parse_size(request.param_str("size"))
    if parsed:
        if ratio is None:
            ratio = normalize.nearest_aspect_ratio(*parsed, choices=choices)
        if image_size is None:
            derived = normalize.resolution_for(*parsed)
            if derived != "1K":
                image_size = min(derived, max_size)  # "2K" < "4K" as strings too
    return ratio, image_size.upper() if image_size else None


# --- images in -------------------------------------------------------------------------


def decode_image_string(value: str) -> ImageInput:
    """An `input_images` entry given inline: a data URL or bare base64."""
    content_type = ""
    payload = value
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        content_type = header[5:].split(";")[0]
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_input(
            "input_images entries must be URLs, data URLs or base64 image data",
            "input_images",
            ErrorCode.INVALID_INPUT_IMAGE,
        ) from exc
    return ImageInput(data=data, content_type=content_type or sniff_type(data))


async def input_images(
    request: ProviderRequest, http: httpx.AsyncClient, config: ProviderConfig
) -> list[ImageInput]:
    """The uploaded images, then any `input_images` (URLs are fetched at once)."""
    images = list(request.images)
    raw = request.params.get("input_images")
    entries = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    for index, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry:
            raise invalid_input(
                "input_images must be a list of strings",
                "input_images",
                ErrorCode.INVALID_INPUT_IMAGE,
            )
        if entry[:8].lower().startswith(("http://", "https://")):
            try:  # the SSRF guard: checked addresses only, bounded size and time
                got = await safefetch.fetch(http, entry, config.fetch)
            except FetchError as exc:
                raise invalid_input(exc.message, "input_images", exc.code) from exc
            ctype = got.content_type if got.content_type.startswith("image/") else ""
            image = ImageInput(data=got.data, content_type=ctype or sniff_type(got.data))
        else:
            image = decode_image_string(entry)
        # the same image checks as every other way an image enters (domain/images.py)
        try:
            check_image(image.data, f"input_images[{index}]", config.fetch.max_bytes)
        except UnacceptableImage as exc:
            raise invalid_input(exc.message, "input_images", ErrorCode.INVALID_INPUT_IMAGE) from exc
        images.append(image)
    return images


# --- request bodies -------------------------------------------------------------------


def imagen_parameters(
    request: ProviderRequest, count: int, *, vertex: bool, seed: int | None
) -> dict[str, JSONValue]:
    """Imagen's `parameters` object. The Gemini API rejects `negativePrompt` and `seed`
    (Vertex only), so they are dropped there."""
    params: dict[str, JSONValue] = {"sampleCount": count}
    ratio, image_size = shape(request, IMAGEN_ASPECT_RATIOS, max_size="2K")
    if ratio:
        params["aspectRatio"] = ratio
    if image_size:
        params["sampleImageSize"] = image_size
    fmt = request.param_str("output_format")
    if fmt in ("png", "jpeg"):
        options: dict[str, JSONValue] = {"mimeType": f"image/{fmt}"}
        quality = request.param_int("output_compression")
        if fmt == "jpeg" and quality is not None:
            options["compressionQuality"] = quality
        params["outputOptions"] = options
    if vertex:
        negative = request.param_str("negative_prompt")
        if negative:
            params["negativePrompt"] = negative
        if seed is not None:
            # Vertex only honours a seed with the watermark off.
            params["seed"] = seed
            params["addWatermark"] = False
    params.update(passthrough(request.params))
    return params


def imagen_body(
    request: ProviderRequest, count: int, *, vertex: bool, seed: int | None
) -> dict[str, JSONValue]:
    """A text-to-image `:predict` body."""
    return {
        "instances": [{"prompt": request.prompt or ""}],
        "parameters": imagen_parameters(request, count, vertex=vertex, seed=seed),
    }


def gemini_body(
    request: ProviderRequest, model: str, images: Sequence[ImageInput], seed: int | None
) -> dict[str, JSONValue]:
    """A `:generateContent` body asking for one image."""
    parts: list[JSONValue] = []
    if request.prompt:
        parts.append({"text": request.prompt})
    parts += [{"inlineData": {"mimeType": i.content_type, "data": b64(i.data)}} for i in images]
    # Gemini 2.0's preview image model cannot answer with an image alone.
    modalities = ["TEXT", "IMAGE"] if "2.0-flash" in model else ["IMAGE"]
    config: dict[str, JSONValue] = {"responseModalities": modalities}
    ratio, image_size = shape(request, GEMINI_ASPECT_RATIOS)
    image_config: dict[str, JSONValue] = {}
    if ratio:
        image_config["aspectRatio"] = ratio
    if image_size:
        image_config["imageSize"] = image_size
    if image_config:
        config["imageConfig"] = image_config
    if seed is not None:
        config["seed"] = seed
    body: dict[str, JSONValue] = {"contents": [{"role": "user", "parts": parts}]}
    for key, value in passthrough(request.params).items():
        if key in _GENERATE_CONTENT_TOP_LEVEL:
            body[key] = value
        else:
            config[key] = value
    body["generationConfig"] = config
    return body


# --- responses --------------------------------------------------------------------------


def _content_filtered(provider: str, reason: str) -> ProviderError:
    return ProviderError(
        f"{provider} returned no image: {reason}",
        status_code=400,
        type=ErrorType.INVALID_REQUEST,
        code=ErrorCode.CONTENT_FILTER,
    )


def _decode(value: JSONValue, provider: str) -> bytes:
    if not isinstance(value, str):
        raise BadUpstreamResponse(provider, "image data is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadUpstreamResponse(provider, "image data is not valid base64") from exc


def parse_imagen(body: JSONValue, provider: str) -> ProviderResult:
    """`predictions[].bytesBase64Encoded`; filtered predictions carry no bytes."""
    predictions = body.get("predictions") if isinstance(body, dict) else None
    images: list[ImageOut] = []
    reasons: list[str] = []
    for pred in predictions if isinstance(predictions, list) else []:
        if not isinstance(pred, dict):
            continue
        if "bytesBase64Encoded" not in pred:
            if pred.get("raiFilteredReason"):
                reasons.append(str(pred["raiFilteredReason"]))
            continue
        data = _decode(pred["bytesBase64Encoded"], provider)
        mime = pred.get("mimeType")
        revised = pred.get("prompt")  # set when Imagen rewrote the prompt
        images.append(
            ImageOut(
                data=data,
                content_type=mime if isinstance(mime, str) and mime else sniff_type(data),
                revised_prompt=revised if isinstance(revised, str) else None,
            )
        )
    if not images:
        raise _content_filtered(provider, "; ".join(reasons) or "the request was filtered")
    return ProviderResult(images=tuple(images))


def gemini_usage(body: Mapping[str, JSONValue]) -> dict[str, JSONValue] | None:
    """`usageMetadata` in the contract's usage shape."""
    meta = body.get("usageMetadata")
    if not isinstance(meta, dict):
        return None
    usage: dict[str, JSONValue] = {}
    for src, dst in (
        ("promptTokenCount", "input_tokens"),
        ("candidatesTokenCount", "output_tokens"),
        ("totalTokenCount", "total_tokens"),
    ):
        if isinstance(meta.get(src), int):
            usage[dst] = meta[src]
    details: dict[str, JSONValue] = {}
    for item in meta.get("promptTokensDetails") or []:
        if isinstance(item, dict) and item.get("modality") in ("TEXT", "IMAGE"):
            details[f"{str(item['modality']).lower()}_tokens"] = item.get("tokenCount", 0)
    if details:
        usage["input_tokens_details"] = details
    return usage or None


def parse_gemini(body: JSONValue, provider: str) -> ProviderResult:
    """Images from `candidates[].content.parts[].inlineData`, skipping thought images."""
    if not isinstance(body, dict):
        raise BadUpstreamResponse(provider, "not a JSON object")
    images: list[ImageOut] = []
    texts: list[str] = []
    finish: list[str] = []
    candidates = body.get("candidates")
    for cand in candidates if isinstance(candidates, list) else []:
        if not isinstance(cand, dict):
            continue
        if isinstance(cand.get("finishReason"), str):
            finish.append(cand["finishReason"])
        content = cand.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict) or part.get("thought"):
                continue
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict):
                data = _decode(inline.get("data"), provider)
                mime = inline.get("mimeType") or inline.get("mime_type")
                ctype = mime if isinstance(mime, str) and mime else sniff_type(data)
                images.append(ImageOut(data=data, content_type=ctype))
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    if images:
        return ProviderResult(images=tuple(images), usage=gemini_usage(body))
    feedback = body.get("promptFeedback")
    blocked = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if blocked or any(r in _SAFETY_REASONS for r in finish):
        raise _content_filtered(provider, str(blocked or ", ".join(finish)))
    said = " ".join(texts).strip()[:300]
    raise ProviderError(
        f"{provider} returned no image"
        + (f" (finishReason {', '.join(finish)})" if finish else "")
        + (f": {said}" if said else ""),
        type=ErrorType.UPSTREAM,
        code=ErrorCode.NO_IMAGE,
    )


# --- errors ------------------------------------------------------------------------------


def retry_delay(body: JSONValue) -> float | None:
    """The `retryDelay` of a Google error's `google.rpc.RetryInfo` detail, in seconds
    (`{"error": {"details": [{"@type": "…RetryInfo", "retryDelay": "2s"}]}}`)."""
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict) or detail.get("@type") != RETRY_INFO_TYPE:
            continue
        delay = detail.get("retryDelay")
        match = _DURATION_RE.fullmatch(delay) if isinstance(delay, str) else None
        if match:
            return float(match.group(1))
    return None


def parse_error(response: httpx.Response, body: JSONValue) -> upstream.UpstreamError:
    """A Google error (`{"error": {"code", "message", "status", "details"}}`): the status
    name (`RESOURCE_EXHAUSTED`) becomes `code` and picks the contract's type, and a
    `RetryInfo` delay is the retry delay when there is no `Retry-After` header."""
    said = upstream.parse_error(response, body)
    if said.retry_after is None:
        said = dataclasses.replace(said, retry_after=retry_delay(body))
    if said.type in ERROR_TYPES:  # the generic reading takes a named status as the type
        said = dataclasses.replace(said, type=ERROR_TYPES[said.type], code=said.type)
    return said
