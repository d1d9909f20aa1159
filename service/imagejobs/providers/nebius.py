"""Nebius Token Factory (formerly AI Studio) text-to-image models (FLUX, SDXL).

Wire, checked against Nebius's OpenAPI (`POST /v1/images/generations`):

- `POST {base or https://api.tokenfactory.nebius.com}/v1/images/generations`, JSON,
  `Authorization: Bearer`.
- body: `model`, `prompt`, `width`/`height` (64-2048; from `width`/`height`, `size`, or
  `aspect_ratio`+`resolution` via `normalize.dimensions`, default 1024x1024),
  `num_inference_steps`, `seed`, `negative_prompt`, `response_extension` (from
  `output_format`: `png`, `jpg` — `jpeg` is renamed — or `webp`), `response_format`
  (`b64_json` unless the request says `url`, which saves a download). Unknown keys
  (`guidance_scale`, `loras`, …) pass through; OpenAI-only parameters are dropped.
- the API has no `n`: one image per call, so `n` > 1 fans out (`base.fan_out`), each call
  with `seed + i` when a fixed seed was given, so the images differ.
- response: `{"data": [{"b64_json" | "url"}], "id"}`; errors as `{"detail": …}`.
- generation only: edits and variations fail with 400 `unsupported_operation`.
"""

from __future__ import annotations

from typing import Any

from imagejobs.domain.kinds import Kind
from imagejobs.providers import normalize
from imagejobs.providers.adapter import Vendor
from imagejobs.providers.base import (
    ProviderRequest,
    ProviderResult,
    fan_out,
    seed_for,
)
from imagejobs.providers.openai import OpenAIProvider, select_params

VENDOR = Vendor(
    name="nebius", key_env="NEBIUS_API_KEY", base_url="https://api.tokenfactory.nebius.com"
)
NEBIUS_PARAMS = frozenset({"num_inference_steps", "seed", "negative_prompt"})
IMAGES_PER_CALL = 1
EXTENSIONS = {"jpeg": "jpg"}


class NebiusProvider(OpenAIProvider):
    """Nebius's OpenAI-like endpoint with its own body; one image per call."""

    vendor = VENDOR
    operations = frozenset({Kind.GENERATION})
    generation_params = NEBIUS_PARAMS

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        async def one_call(count: int, index: int) -> ProviderResult:
            body = self.nebius_body(request, index)
            response = await self.send(self.json_request(request, body))
            return await self.parse_response(response)

        return await fan_out(request, IMAGES_PER_CALL, one_call)

    def nebius_body(self, request: ProviderRequest, index: int) -> dict[str, Any]:
        """The body of the `index`-th call for `request`."""
        body: dict[str, Any] = {"model": request.model}
        if request.prompt is not None:
            body["prompt"] = request.prompt
        body.update(select_params(request.params, NEBIUS_PARAMS))
        body["width"], body["height"] = normalize.dimensions(request.params)
        seed = request.param_int("seed")
        if seed is not None and seed >= 0:
            body["seed"] = seed_for(seed, index)
        fmt = request.param_str("output_format")
        if fmt is not None:
            body["response_extension"] = EXTENSIONS.get(fmt.lower(), fmt.lower())
        body["response_format"] = request.param_str("response_format") or "b64_json"
        return body


build = NebiusProvider  # the factory the registry calls: build(config, http)
