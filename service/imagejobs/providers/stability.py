"""Stability AI, REST v2beta (`stability/<model>`).

Every call is `multipart/form-data` with `Authorization: Bearer <key>` and
`Accept: image/*`, and answers the raw image bytes (200), with a `finish-reason` header
(`SUCCESS` or `CONTENT_FILTERED`) and a `seed` header. One image per call: `n` fans out
(with a `seed`, call i sends `seed + i`).

Generation — the model picks the endpoint `POST {base}/v2beta/stable-image/generate/…`:
`ultra` / `stable-image-ultra` -> `ultra`; `core` / `stable-image-core` -> `core`;
`sd3…` (e.g. `sd3.5-large`, `sd3.5-large-turbo`, `sd3.5-medium`) -> `sd3` with the
`model` field (`sd3` alone sends none: the endpoint's default). Fields: `prompt`,
`negative_prompt`, `aspect_ratio` (given, or the nearest supported ratio to `size`),
`seed`, `output_format`, plus unknown scalar keys (`style_preset`, `cfg_scale`, ...).

Edits — `type` picks the endpoint under `/v2beta/stable-image/edit/`: `inpainting`
(the default) -> `inpaint` with `image`, `mask` (converted from OpenAI's
transparent-means-edit to Stability's white-means-edit; without a mask Stability reads
the image's own alpha channel, the same convention as OpenAI), `prompt`;
`outpainting` -> `outpaint` with `left`/`right`/`up`/`down` (pixels) from the params;
`background_removal` -> `remove-background` with `image` only. No variations.

Errors are JSON `{"id", "name", "errors": [...]}`: the messages are joined and `name`
becomes the type. A 200 whose `finish-reason` is `CONTENT_FILTERED` (the image is a
blurred placeholder) is a 400 `content_filtered`, never returned as a result.
"""

from __future__ import annotations

import asyncio
import json

from imagejobs.domain.errors import BadUpstreamResponse, ErrorCode, ErrorType, ProviderError
from imagejobs.domain.images import sniff_type
from imagejobs.domain.kinds import Kind
from imagejobs.providers.adapter import Adapter, Vendor
from imagejobs.providers.base import (
    ImageOut,
    JSONValue,
    ProviderRequest,
    ProviderResult,
    edit_mode,
    fan_out,
    invalid_input,
    seed_for,
)
from imagejobs.providers.normalize import (
    OPENAI_STYLE_PARAMS,
    nearest_aspect_ratio,
    parse_size,
    transparent_to_white_mask,
)

VENDOR = Vendor(name="stability", key_env="STABILITY_API_KEY", base_url="https://api.stability.ai")
ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
EDIT_ENDPOINTS = {
    "inpainting": "inpaint",
    "outpainting": "outpaint",
    "background_removal": "remove-background",
}
OUTPAINT_SIDES = ("left", "right", "up", "down")
# Fields the adapter maps itself, or that only OpenAI-style APIs understand.
HANDLED = OPENAI_STYLE_PARAMS | {"num_inference_steps", *OUTPAINT_SIDES}

Part = tuple[str, tuple[str | None, str | bytes] | tuple[str, bytes, str]]


class StabilityProvider(Adapter):
    """Runs Stable Image generations and edits, one image per call."""

    vendor = VENDOR
    operations = frozenset({Kind.GENERATION, Kind.EDIT})

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        key = self._config.require_key()
        if request.kind is Kind.GENERATION:
            path, parts = generation_call(request)
        else:
            path, parts = await edit_call(request)
        url = f"{self.base_url}/v2beta/stable-image/{path}"
        seed = request.param_int("seed")

        async def one_call(_count: int, index: int) -> ProviderResult:
            if seed is None or not index:
                return await self._one(url, parts, key)
            reseeded = [
                _field("seed", seed_for(seed, index)) if n == "seed" else (n, v) for n, v in parts
            ]
            return await self._one(url, reseeded, key)

        return await fan_out(request, 1, one_call)

    async def _one(self, url: str, parts: list[Part], key: str) -> ProviderResult:
        headers = {"Authorization": f"Bearer {key}", "Accept": "image/*"}
        response = await self.send(
            self._http.build_request("POST", url, files=parts, headers=headers)
        )
        if response.headers.get("finish-reason", "SUCCESS").upper() == "CONTENT_FILTERED":
            raise ProviderError(
                "stability filtered the result (finish-reason CONTENT_FILTERED)",
                status_code=400,
                type=ErrorType.INVALID_REQUEST,
                code=ErrorCode.CONTENT_FILTERED,
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if not content_type.startswith("image/"):
            answered = content_type or "no content type"
            raise BadUpstreamResponse(self.name, f"{answered} instead of an image")
        data = response.content
        return ProviderResult(images=(ImageOut(data=data, content_type=sniff_type(data)),))


def _field(name: str, value: JSONValue) -> Part:
    """A plain form field (a part without a filename, so the body stays multipart even
    when no file is sent — Stability rejects urlencoded bodies)."""
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    return (name, (None, text))


def _common_fields(request: ProviderRequest) -> list[Part]:
    """prompt, then every scalar param the adapter does not map itself, in order."""
    parts: list[Part] = []
    if request.prompt:
        parts.append(_field("prompt", request.prompt))
    for name, value in request.params.items():
        if name in HANDLED or value is None or isinstance(value, dict | list):
            continue
        parts.append(_field(name, value))
    return parts


def generation_call(request: ProviderRequest) -> tuple[str, list[Part]]:
    """The endpoint path (under /v2beta/stable-image/) and the form parts."""
    model = request.model.lower()
    model_field: str | None = None
    if model in ("ultra", "stable-image-ultra"):
        endpoint = "ultra"
    elif model in ("core", "stable-image-core"):
        endpoint = "core"
    elif model.startswith("sd3"):
        endpoint = "sd3"
        model_field = None if model == "sd3" else request.model
    else:
        raise invalid_input(
            f"unknown stability model {request.model!r} (use core, ultra or sd3.5-…)",
            "model",
            ErrorCode.MODEL_NOT_FOUND,
        )
    parts = _common_fields(request)
    if model_field:
        parts.append(_field("model", model_field))
    ratio = request.param_str("aspect_ratio")
    size = parse_size(request.param_str("size"))
    if ratio is None and size is not None:
        ratio = nearest_aspect_ratio(*size, choices=ASPECT_RATIOS)
    if ratio:
        parts.append(_field("aspect_ratio", ratio))
    return f"generate/{endpoint}", parts


async def edit_call(request: ProviderRequest) -> tuple[str, list[Part]]:
    """The edit endpoint path and form parts, by `type` (default `inpainting`)."""
    _, endpoint = edit_mode(request, EDIT_ENDPOINTS, VENDOR.name)
    if not request.images:
        raise invalid_input("at least one image is required", "image")
    image = request.images[0]
    parts: list[Part] = [("image", (image.filename, image.data, image.content_type))]
    if endpoint == "remove-background":
        output_format = request.param_str("output_format")
        if output_format:
            parts.append(_field("output_format", output_format))
        return f"edit/{endpoint}", parts
    parts += _common_fields(request)
    if endpoint == "inpaint" and request.mask is not None:
        mask = await asyncio.to_thread(transparent_to_white_mask, request.mask.data)
        parts.append(("mask", ("mask.png", mask, "image/png")))
    if endpoint == "outpaint":
        for side in OUTPAINT_SIDES:
            pixels = request.param_int(side)
            if pixels is not None:
                parts.append(_field(side, pixels))
    return f"edit/{endpoint}", parts


build = StabilityProvider  # the factory the registry calls: build(config, http)
