"""OpenAI Images API, and the base every OpenAI-shaped adapter builds on (openai-compatible,
azure, xai, nebius override a hook or two).

Wire, checked against the OpenAI API reference and the official Python SDK:

- generation: `POST {base}/v1/images/generations`, JSON body.
- edit: `POST {base}/v1/images/edits`, multipart/form-data: the input image as an `image`
  part, or — several inputs — one `image[]` part per image (as the SDK sends a list), an
  optional `mask` part (edit where it is transparent; applied to the first image), and
  every scalar as a form field. Bytes, filenames and content types go out as uploaded.
- variation: `POST {base}/v1/images/variations`, multipart: `image` (the first input only),
  `model`, `n`, `response_format`, `size`, `user`.
- auth: `Authorization: Bearer <key>` (a key picked by weight per call).
- response: `{"created", "data": [{"b64_json" | "url", "revised_prompt"?}], "background"?,
  "output_format"?, "quality"?, "size"?, "usage"?}`; `url` results (dall-e, 60 min TTL)
  are downloaded at once, without our credentials.

Parameters: per operation, the known parameters the API accepts are sent (see
`GENERATION_PARAMS`, `EDIT_PARAMS`, `VARIATION_PARAMS`); the other known ones (`seed`,
`num_inference_steps`, `negative_prompt`, `input_images`, `aspect_ratio`, `resolution`,
`type`, `partial_images` — jobs never stream — and generation-only or edit-only ones on the
other operation) are dropped; keys we do not know pass through unchanged; `mock_*` never
leaves us. GPT image models answer base64 only and reject `response_format` (400
`unknown_parameter`), so it is dropped for them. A request with `aspect_ratio` or
`resolution` but no `size` gets a `size`: the nearest standard size for gpt-image and
dall-e-3 models, nothing for dall-e-2 (squares only), and `normalize.size_for()` for any
other model (an openai-compatible server).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from imagejobs.domain.errors import BadUpstreamResponse, ErrorCode
from imagejobs.domain.images import sniff_type
from imagejobs.domain.kinds import Kind
from imagejobs.providers import normalize
from imagejobs.providers.adapter import Adapter, Vendor
from imagejobs.providers.base import (
    ACCEPT_JSON,
    KNOWN_PARAMS,
    ImageInput,
    ImageOut,
    ProviderRequest,
    ProviderResult,
    invalid_input,
)

VENDOR = Vendor(name="openai", key_env="OPENAI_API_KEY", base_url="https://api.openai.com")

# What each operation accepts, of the parameters the contract knows (see ProviderRequest).
_COMMON = frozenset({"n", "size", "quality", "response_format", "background", "user"})
_GPT_IMAGE_OUTPUT = frozenset({"output_format", "output_compression"})
GENERATION_PARAMS = _COMMON | _GPT_IMAGE_OUTPUT | {"style", "moderation"}
EDIT_PARAMS = _COMMON | _GPT_IMAGE_OUTPUT | {"input_fidelity"}
VARIATION_PARAMS = frozenset({"n", "response_format", "size", "user"})
ECHOED_FIELDS = ("background", "output_format", "quality", "size")

# The sizes a model family accepts, for mapping an aspect ratio onto one (by prefix).
STANDARD_SIZES: Mapping[str, tuple[str, ...]] = {
    "gpt-image": ("1024x1024", "1536x1024", "1024x1536"),
    "chatgpt-image": ("1024x1024", "1536x1024", "1024x1536"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
}
# Model families that always answer base64 and reject `response_format`.
BASE64_ONLY_MODELS = ("gpt-image", "chatgpt-image")
FORMAT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


def select_params(params: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    """The known parameters in `allowed`, plus every unknown key (passed through); never
    `mock_*` keys, never null values."""
    allow = frozenset(allowed)
    return {
        key: value
        for key, value in params.items()
        if value is not None
        and not key.startswith("mock_")
        and (key in allow or key not in KNOWN_PARAMS)
    }


def allowed_for(model: str, allowed: frozenset[str]) -> frozenset[str]:
    """`allowed` minus what `model` rejects."""
    if model.startswith(BASE64_ONLY_MODELS):
        return allowed - {"response_format"}
    return allowed


def size_for_shape(model: str, params: Mapping[str, Any]) -> str | None:
    """A `size` for a request that gave `aspect_ratio`/`resolution` but no `size`, or None."""
    if params.get("size") is not None:
        return None
    ratio_value, resolution = params.get("aspect_ratio"), params.get("resolution")
    ratio = ratio_value if isinstance(ratio_value, str) else None
    res = resolution if isinstance(resolution, str) else None
    if (ratio is None and res is None) or model.startswith("dall-e-2"):
        return None
    for prefix, sizes in STANDARD_SIZES.items():
        if model.startswith(prefix):
            wanted = normalize.parse_aspect_ratio(ratio)
            if wanted is None:  # a resolution alone does not pick among fixed sizes
                return None
            choices = [s.replace("x", ":") for s in sizes]
            best = normalize.nearest_aspect_ratio(wanted.numerator, wanted.denominator, choices)
            return best.replace(":", "x")
    width, height = normalize.size_for(ratio, res)
    return f"{width}x{height}"


def form_value(value: Any) -> str:
    """A parameter as a multipart form field: strings as-is, JSON for everything else."""
    return value if isinstance(value, str) else json.dumps(value)


class OpenAIProvider(Adapter):
    """The OpenAI Images API. Subclasses change the class attributes and the hooks
    `endpoint`, `query`, `auth_headers`, `generation_body` and `execute`."""

    vendor = VENDOR
    generation_params: frozenset[str] = GENERATION_PARAMS

    # --- hooks -------------------------------------------------------------------------

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        """One upstream call for `request` (its kind is supported), parsed."""
        if request.kind is Kind.GENERATION:
            http_request = self.json_request(request, self.generation_body(request))
        elif request.kind is Kind.EDIT:
            http_request = self.edit_request(request)
        else:
            http_request = self.variation_request(request)
        return await self.parse_response(await self.send(http_request))

    def endpoint(self, kind: Kind, model: str) -> str:
        """The URL for `kind`; a base URL that already ends in `/v1` is not doubled."""
        base = self.base_url
        if not base.endswith("/v1"):
            base += "/v1"
        return f"{base}/images/{kind.value}"

    def query(self) -> dict[str, str]:
        """Query parameters every call carries."""
        return {}

    def auth_headers(self) -> dict[str, str]:
        """Credentials for one call (none when no key is configured)."""
        key = self._config.pick_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def generation_body(self, request: ProviderRequest) -> dict[str, Any]:
        """The JSON body of a generation."""
        body: dict[str, Any] = {"model": request.model}
        if request.prompt is not None:
            body["prompt"] = request.prompt
        body.update(
            select_params(request.params, allowed_for(request.model, self.generation_params))
        )
        size = size_for_shape(request.model, request.params)
        if size is not None:
            body["size"] = size
        return body

    # --- requests ------------------------------------------------------------------------

    def json_request(self, request: ProviderRequest, body: Mapping[str, Any]) -> httpx.Request:
        return self._http.build_request(
            "POST",
            self.endpoint(request.kind, request.model),
            params=self.query(),
            headers={**self.auth_headers(), **ACCEPT_JSON},
            json=dict(body),
        )

    def multipart_request(
        self,
        request: ProviderRequest,
        fields: Mapping[str, Any],
        files: list[tuple[str, ImageInput]],
    ) -> httpx.Request:
        return self._http.build_request(
            "POST",
            self.endpoint(request.kind, request.model),
            params=self.query(),
            headers={**self.auth_headers(), **ACCEPT_JSON},
            data={key: form_value(value) for key, value in fields.items()},
            files=[(part, (img.filename, img.data, img.content_type)) for part, img in files],
        )

    def edit_request(self, request: ProviderRequest) -> httpx.Request:
        self._require_images(request)
        fields: dict[str, Any] = {"model": request.model}
        if request.prompt is not None:
            fields["prompt"] = request.prompt
        fields.update(select_params(request.params, allowed_for(request.model, EDIT_PARAMS)))
        size = size_for_shape(request.model, request.params)
        if size is not None:
            fields["size"] = size
        part = "image" if len(request.images) == 1 else "image[]"
        files = [(part, img) for img in request.images]
        if request.mask is not None:
            files.append(("mask", request.mask))
        return self.multipart_request(request, fields, files)

    def variation_request(self, request: ProviderRequest) -> httpx.Request:
        self._require_images(request)
        fields: dict[str, Any] = {"model": request.model}
        fields.update(select_params(request.params, allowed_for(request.model, VARIATION_PARAMS)))
        return self.multipart_request(request, fields, [("image", request.images[0])])

    def _require_images(self, request: ProviderRequest) -> None:
        if not request.images:
            raise invalid_input(
                f"{request.kind.request_type} needs an input image",
                "image",
                ErrorCode.MISSING_IMAGE,
            )

    # --- responses -----------------------------------------------------------------------

    async def parse_response(self, response: httpx.Response) -> ProviderResult:
        """Images (base64 decoded, URLs downloaded concurrently), usage and echoed fields."""
        try:
            body = response.json()
        except ValueError:
            raise BadUpstreamResponse(self.name, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadUpstreamResponse(self.name, "the body is not a JSON object")
        items = body.get("data")
        if not isinstance(items, list) or not items:
            raise BadUpstreamResponse(self.name, "no images in `data`")
        declared = FORMAT_TYPES.get(str(body.get("output_format")))
        images = await asyncio.gather(*(self._image(item, declared) for item in items))
        usage = body.get("usage")
        fields = {key: body[key] for key in ECHOED_FIELDS if body.get(key) is not None}
        return ProviderResult(
            images=tuple(images),
            usage=usage if isinstance(usage, dict) else None,
            fields=fields,
        )

    async def _image(self, item: Any, declared: str | None) -> ImageOut:
        if not isinstance(item, dict):
            raise BadUpstreamResponse(self.name, "an entry of `data` is not an object")
        revised = item.get("revised_prompt")
        revised_prompt = revised if isinstance(revised, str) and revised else None
        mime = item.get("mime_type")
        declared = mime if isinstance(mime, str) and mime.startswith("image/") else declared
        b64, url = item.get("b64_json"), item.get("url")
        if isinstance(b64, str) and b64:
            return self._decoded(b64, declared, revised_prompt)
        if isinstance(url, str) and url.startswith("data:"):
            return self._decoded(url.partition(",")[2], declared, revised_prompt)
        if isinstance(url, str) and url:
            out = await self.download(url)
            ctype = out.content_type
            if not ctype.startswith("image/"):
                ctype = _content_type(out.data, declared)
            return dataclasses.replace(out, content_type=ctype, revised_prompt=revised_prompt)
        raise BadUpstreamResponse(self.name, "an image has neither `b64_json` nor `url`")

    def _decoded(self, b64: str, declared: str | None, revised_prompt: str | None) -> ImageOut:
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadUpstreamResponse(self.name, "`b64_json` is not valid base64") from None
        return ImageOut(
            data=data, content_type=_content_type(data, declared), revised_prompt=revised_prompt
        )


def _content_type(data: bytes, declared: str | None) -> str:
    sniffed = sniff_type(data)
    if sniffed == "application/octet-stream" and declared:
        return declared
    return sniffed


build = OpenAIProvider  # the factory the registry calls: build(config, http)
