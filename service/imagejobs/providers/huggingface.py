"""Hugging Face Inference Providers, through the router (`https://router.huggingface.co`).

The model is `<inference-provider>/<Hub repo id>`, e.g. `hf-inference/black-forest-labs/
FLUX.1-schnell` or `together/black-forest-labs/FLUX.1-schnell`. As the official clients
do, the model id sent to a provider is the one the Hub maps the repo to
(`inferenceProviderMapping`, looked up and cached by hf_mapping.py, or the deployment's
`model_map`); `hf-inference` takes the repo id itself. Auth: `Authorization: Bearer <HF
token>`, on the Hub lookup too. Every call makes one image, so `n` fans out (a `seed`
goes up by one per call).

- `hf-inference`: `POST {base}/hf-inference/models/{repo}`.
  Generation: `{"inputs": prompt, "parameters": {width, height, num_inference_steps,
  negative_prompt, seed, ...}}`. Edit (image-to-image): `{"inputs": <base64 image>,
  "parameters": {prompt, negative_prompt, num_inference_steps, target_size}}`; there is
  no mask input, so a mask is ignored. Both answer raw image bytes.
- `together`: `POST {base}/together/v1/images/generations`, `{model, prompt, width,
  height, steps, seed, negative_prompt, response_format: "base64"}` → `data[].b64_json`.
- `nebius`: `POST {base}/nebius/v1/images/generations`, `{model, prompt, width, height,
  num_inference_steps, seed, negative_prompt, response_format: "b64_json"}`. Hugging Face
  removed nebius from its routing layer in 2026 (the catalogue refuses it at submit);
  the route stays for a deployment whose catalogue says otherwise.
  together and nebius have no edits here.

Other inference providers (fal-ai, replicate, ...) need queue/polling protocols of their
own and are rejected with a 400. Variations: not offered.
`width`/`height` are sent only when the request gives a shape (`size`, `aspect_ratio`/
`resolution`, or `width`/`height`); unknown request keys pass through (into
`parameters` for hf-inference, the top level otherwise). The JSON routes send `Accept:
application/json` (hf-inference answers image bytes and gets the client default).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping

import httpx

from imagejobs.domain.errors import BadUpstreamResponse, ErrorCode, UnsupportedOperation
from imagejobs.domain.images import sniff_type
from imagejobs.domain.kinds import Kind
from imagejobs.providers import normalize
from imagejobs.providers.adapter import Adapter, Vendor
from imagejobs.providers.base import (
    ACCEPT_JSON,
    KNOWN_PARAMS,
    SYSTEM_CLOCK,
    Clock,
    ImageOut,
    JSONValue,
    ProviderConfig,
    ProviderRequest,
    ProviderResult,
    b64,
    fan_out,
    invalid_input,
    seed_for,
)
from imagejobs.providers.hf_mapping import HubMapper

HUB_URL = "https://huggingface.co"
HUB_CACHE_TTL_S = 3600.0  # a Hub mapping is reused this long (seconds)
VENDOR = Vendor(
    name="huggingface",
    key_env="HF_TOKEN",
    base_url="https://router.huggingface.co",
    options={"model_map": {}, "hub_url": HUB_URL, "hub_cache_ttl_s": HUB_CACHE_TTL_S},
)
INFERENCE_PROVIDERS = ("hf-inference", "together", "nebius")
_REPO_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_SHAPE_PARAMS = ("size", "aspect_ratio", "resolution")
# Request fields the contract knows, and the explicit shape; the rest pass through.
_KNOWN = KNOWN_PARAMS | {"width", "height"}

Body = dict[str, JSONValue]


def _passthrough(params: Mapping[str, JSONValue]) -> Body:
    return {k: v for k, v in params.items() if k not in _KNOWN}


def _shape(request: ProviderRequest) -> tuple[int, int] | None:
    """(width, height) when the request asked for a shape, else None (model default)."""
    explicit = request.param_int("width") is not None and request.param_int("height") is not None
    if explicit or any(request.params.get(name) is not None for name in _SHAPE_PARAMS):
        return normalize.dimensions(request.params)
    return None


def _set(body: Body, key: str, value: JSONValue) -> None:
    if value is not None:
        body[key] = value


def _hf_inference_body(request: ProviderRequest, seed: int | None) -> Body:
    """Text-to-image or image-to-image, as hf-inference's task specs have them."""
    parameters: Body = {}
    shape = _shape(request)
    _set(parameters, "negative_prompt", request.param_str("negative_prompt"))
    _set(parameters, "num_inference_steps", request.param_int("num_inference_steps"))
    if request.kind is Kind.EDIT:
        _set(parameters, "prompt", request.prompt)
        if shape:
            parameters["target_size"] = {"width": shape[0], "height": shape[1]}
        parameters.update(_passthrough(request.params))
        return {"inputs": b64(request.images[0].data), "parameters": parameters}
    if shape:
        parameters["width"], parameters["height"] = shape
    _set(parameters, "seed", seed)
    parameters.update(_passthrough(request.params))
    return {"inputs": request.prompt or "", "parameters": parameters}


def _openai_style_body(
    request: ProviderRequest, repo: str, seed: int | None, *, steps: str, response_format: str
) -> Body:
    """Together's and Nebius's `/v1/images/generations` bodies."""
    body: Body = {"model": repo, "prompt": request.prompt or ""}
    shape = _shape(request)
    if shape:
        body["width"], body["height"] = shape
    _set(body, steps, request.param_int("num_inference_steps"))
    _set(body, "seed", seed)
    _set(body, "negative_prompt", request.param_str("negative_prompt"))
    body.update(_passthrough(request.params))
    if steps == "num_inference_steps":
        body.pop("guidance_scale", None)  # Nebius rejects it (HF's own client drops it too)
    body["response_format"] = response_format
    return body


class HuggingFaceProvider(Adapter):
    """Text-to-image (and hf-inference image-to-image) through the HF router."""

    vendor = VENDOR
    operations: frozenset[Kind] = frozenset({Kind.GENERATION, Kind.EDIT})

    def __init__(
        self, config: ProviderConfig, http: httpx.AsyncClient, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        super().__init__(config, http, clock=clock)
        self._mapper = HubMapper(
            http,
            self.send,
            hub_url=self._config.hub_url,
            ttl_s=self._config.hub_cache_ttl_s,
            clock=clock,
            model_map=self._config.model_map,
        )

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        inference_provider, repo = self._split(request.model)
        if request.kind is Kind.EDIT:
            if inference_provider != "hf-inference":
                raise UnsupportedOperation(self.name, request.kind)
            if not request.images:
                raise invalid_input(
                    "an edit needs an input image", "image", ErrorCode.IMAGE_REQUIRED
                )
        key = self._config.require_key()
        model_id = await self._mapper.provider_id(inference_provider, repo, request.kind, key)
        seed = request.param_int("seed")
        call: Callable[[int | None], tuple[str, Body]]
        if inference_provider == "hf-inference":
            url = f"{self.base_url}/hf-inference/models/{model_id}"

            def call(s: int | None) -> tuple[str, Body]:
                return url, _hf_inference_body(request, s)
        else:
            url = f"{self.base_url}/{inference_provider}/v1/images/generations"
            together = inference_provider == "together"
            steps = "steps" if together else "num_inference_steps"
            fmt = "base64" if together else "b64_json"

            def call(s: int | None) -> tuple[str, Body]:
                body = _openai_style_body(request, model_id, s, steps=steps, response_format=fmt)
                return url, body

        async def one(count: int, index: int) -> ProviderResult:
            target, body = call(seed_for(seed, index))
            return ProviderResult(images=(await self._post(target, body, key),))

        return await fan_out(request, 1, one)

    def _split(self, model: str) -> tuple[str, str]:
        inference_provider, _, repo = model.partition("/")
        if inference_provider not in INFERENCE_PROVIDERS or not _REPO_RE.fullmatch(repo):
            raise invalid_input(
                f"huggingface models are <inference-provider>/<org>/<model> with the "
                f"inference provider one of {', '.join(INFERENCE_PROVIDERS)}; got {model!r}",
                "model",
                ErrorCode.UNSUPPORTED_MODEL,
            )
        return inference_provider, repo

    async def _post(self, url: str, body: Body, key: str) -> ImageOut:
        headers = {"Authorization": f"Bearer {key}"}
        if "/hf-inference/" not in url:  # hf-inference answers image bytes, the others JSON
            headers.update(ACCEPT_JSON)
        http_request = self._http.build_request("POST", url, json=body, headers=headers)
        response = await self.send(http_request)
        ctype = response.headers.get("content-type", "").split(";")[0].strip()
        if ctype.startswith("image/"):
            return ImageOut(data=response.content, content_type=ctype)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if payload is None:
            sniffed = sniff_type(response.content)
            if sniffed.startswith("image/"):
                return ImageOut(data=response.content, content_type=sniffed)
            raise BadUpstreamResponse(self.name, "neither an image nor JSON")
        return await self._from_json(payload)

    async def _from_json(self, payload: JSONValue) -> ImageOut:
        data = payload.get("data") if isinstance(payload, dict) else None
        first = data[0] if isinstance(data, list) and data else None
        if not isinstance(first, dict):
            raise BadUpstreamResponse(self.name, "no data[0]")
        if isinstance(first.get("b64_json"), str):
            try:
                image = base64.b64decode(first["b64_json"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadUpstreamResponse(self.name, "b64_json is not valid base64") from exc
            return ImageOut(data=image, content_type=sniff_type(image))
        if isinstance(first.get("url"), str):
            return await self.download(first["url"])
        raise BadUpstreamResponse(self.name, "data[0] has neither b64_json nor url")


build = HuggingFaceProvider  # the factory the registry calls: build(config, http)
