"""The Gemini API (generativelanguage.googleapis.com): Gemini image models and Imagen.

- Gemini image models (`gemini-3.1-flash-image`, `gemini-3-pro-image`):
  `POST {base}/v1beta/models/{model}:generateContent`. One image per call, so `n` fans
  out. Edits send the input images as `inlineData` beside the prompt; Gemini has no mask
  input, so a mask is ignored (describe the edit in the prompt). A generation's
  `input_images` (data URLs, base64, or URLs fetched at once) are sent the same way.
- Imagen (`imagen-4.0-generate-001`, ...): `POST {base}/v1beta/models/{model}:predict`,
  up to 4 images per call. The Gemini API has no Imagen edit endpoint (Vertex has) and
  rejects `negativePrompt` and `seed` for Imagen, so those are not sent; Imagen ignores
  `input_images`. Google shut Imagen down on the Gemini API in 2026 and the model
  catalogue refuses it at submit; the path stays for Vertex (which subclasses this
  adapter) and for a deployment whose catalogue says otherwise.
- Variations: not offered by either model family.

Auth is the `x-goog-api-key` header. Google errors (`{"error": {"code", "message",
"status"}}`) keep their status (`INVALID_ARGUMENT`, ...) as `code` and map it to a type.
"""

from __future__ import annotations

from typing import ClassVar

import httpx

from imagejobs.domain.errors import BadUpstreamResponse, UnsupportedOperation
from imagejobs.domain.kinds import Kind
from imagejobs.providers import google_common as gc
from imagejobs.providers.adapter import Adapter, Vendor
from imagejobs.providers.base import (
    ACCEPT_JSON,
    JSONValue,
    ProviderRequest,
    ProviderResult,
    fan_out,
    seed_for,
)
from imagejobs.providers.upstream import UpstreamError

VENDOR = Vendor(
    name="gemini",
    key_env="GEMINI_API_KEY",
    base_url="https://generativelanguage.googleapis.com",
)


class GeminiProvider(Adapter):
    """Gemini image models and Imagen on the Gemini API. `VertexProvider` subclasses it,
    overriding `endpoint`, `auth_headers`, `configured`, `secrets` and
    `imagen_edit_body`."""

    vendor = VENDOR
    operations: frozenset[Kind] = frozenset({Kind.GENERATION, Kind.EDIT})
    vertex: ClassVar[bool] = False  # Imagen accepts negativePrompt and seed
    imagen_edits: ClassVar[bool] = False  # imagen_edit_body is implemented

    def endpoint(self, model: str, method: str) -> str:
        """The URL of `model:method` (`predict` or `generateContent`)."""
        return f"{self.base_url}/v1beta/models/{model}:{method}"

    async def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate one call."""
        key = self._config.require_key()
        return {"x-goog-api-key": key}

    def parse_error(self, response: httpx.Response, body: JSONValue) -> UpstreamError:
        return gc.parse_error(response, body)

    def imagen_edit_body(self, request: ProviderRequest) -> dict[str, JSONValue]:
        """An Imagen edit `:predict` body (sampleCount is set per call)."""
        raise UnsupportedOperation(self.name, request.kind)

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        model = gc.model_id(request.model, self.name)
        seed = request.param_int("seed")
        if gc.is_imagen(model):
            return await self._imagen(request, model, seed)
        images = await gc.input_images(request, self._http, self._config)

        async def gemini_call(count: int, index: int) -> ProviderResult:
            body = gc.gemini_body(request, model, images, seed_for(seed, index))
            return gc.parse_gemini(await self._post(model, "generateContent", body), self.name)

        return await fan_out(request, 1, gemini_call)

    async def _imagen(
        self, request: ProviderRequest, model: str, seed: int | None
    ) -> ProviderResult:
        edit = None
        if request.kind is Kind.EDIT:
            if not self.imagen_edits:
                raise UnsupportedOperation(self.name, request.kind)
            edit = self.imagen_edit_body(request)

        async def imagen_call(count: int, index: int) -> ProviderResult:
            if edit is None:
                batch_seed = seed_for(seed, index)
                body = gc.imagen_body(request, count, vertex=self.vertex, seed=batch_seed)
            else:
                parameters = dict(edit["parameters"], sampleCount=count)
                body = {"instances": edit["instances"], "parameters": parameters}
            return gc.parse_imagen(await self._post(model, "predict", body), self.name)

        return await fan_out(request, gc.IMAGEN_PER_CALL, imagen_call)

    async def _post(self, model: str, method: str, body: dict[str, JSONValue]) -> JSONValue:
        headers = {**(await self.auth_headers()), **ACCEPT_JSON}
        http_request = self._http.build_request(
            "POST", self.endpoint(model, method), json=body, headers=headers
        )
        response = await self.send(http_request)
        try:
            return response.json()
        except ValueError as exc:
            raise BadUpstreamResponse(self.name, "the body is not JSON") from exc


build = GeminiProvider  # the factory the registry calls: build(config, http)
