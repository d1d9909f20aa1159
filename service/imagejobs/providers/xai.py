"""xAI Grok Imagine image generation.

Wire, checked against xAI's REST reference (`POST /v1/images/generations`):

- `POST {base or https://api.x.ai}/v1/images/generations`, JSON, `Authorization: Bearer`.
- body: `model`, `prompt`, `n` (1-10), `response_format` (`url` by default, or
  `b64_json`), `aspect_ratio`, `resolution` (`1k`/`2k`), `user`; xAI documents `size` and
  `style` as not supported, so `size`, `style`, `quality` and `output_compression` are
  dropped (as the gateway we follow does), and so are the other OpenAI-only parameters
  (`background`, `moderation`, `output_format`, `input_fidelity`) and the diffusion ones.
  Unknown keys pass through.
- `size` without `aspect_ratio` becomes the nearest aspect ratio xAI accepts;
  `resolution` is sent lower-case (`2K` -> `2k`).
- response: OpenAI's shape, plus `data[].mime_type` and `usage.cost_in_usd_ticks`
  (passed through). URL results are downloaded at once.
- edits and variations are not offered here: 400 `unsupported_operation`.
"""

from __future__ import annotations

from typing import Any

from imagejobs.domain.kinds import Kind
from imagejobs.providers import normalize
from imagejobs.providers.adapter import Vendor
from imagejobs.providers.base import ProviderRequest
from imagejobs.providers.openai import OpenAIProvider

VENDOR = Vendor(name="xai", key_env="XAI_API_KEY", base_url="https://api.x.ai")
XAI_PARAMS = frozenset({"n", "response_format", "aspect_ratio", "resolution", "user"})
# xAI's whole-number ratios (it also takes 19.5:9 and 9:19.5, and `auto`).
_XAI_LANDSCAPE = ("1:1", "4:3", "3:2", "16:9", "20:9", "2:1")
XAI_ASPECT_RATIOS = (*_XAI_LANDSCAPE, "3:4", "2:3", "9:16", "9:20", "1:2")


class XAIProvider(OpenAIProvider):
    """The openai adapter with xAI's parameter set; generation only."""

    vendor = VENDOR
    operations = frozenset({Kind.GENERATION})
    generation_params = XAI_PARAMS

    def generation_body(self, request: ProviderRequest) -> dict[str, Any]:
        body = super().generation_body(request)
        body.pop("size", None)  # the base maps aspect_ratio onto a size; xAI wants the ratio
        size = request.params.get("size")
        parsed = normalize.parse_size(size if isinstance(size, str) else None)
        if "aspect_ratio" not in body and parsed is not None:
            body["aspect_ratio"] = normalize.nearest_aspect_ratio(*parsed, XAI_ASPECT_RATIOS)
        resolution = body.get("resolution")
        if isinstance(resolution, str):
            body["resolution"] = resolution.lower()
        return body


build = XAIProvider  # the factory the registry calls: build(config, http)
