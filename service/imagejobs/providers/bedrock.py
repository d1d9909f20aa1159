"""Amazon Bedrock, Titan Image Generator and Nova Canvas (`bedrock/<modelId>`, e.g.
`bedrock/amazon.titan-image-generator-v2:0`, `bedrock/amazon.nova-canvas-v1:0`).

`POST {base}/model/{modelId}/invoke` with a JSON body, where base is
`config.base_url` or `https://bedrock-runtime.{region}.amazonaws.com` (region default
`us-east-1`). The modelId is percent-encoded exactly as botocore's serializer does
(`:` -> `%3A`, `/` of an ARN -> `%2F`); the request is SigV4-signed by botocore
(service `bedrock`) over the exact bytes sent, with `config.pick_key()` as the access
key id, `config.aws_secret_access_key` and, if set, `config.aws_session_token`. botocore
builds the canonical URI by encoding the path once more (`%3A` -> `%253A`), as AWS
requires of every service but S3.

Bodies (the Titan/Nova Canvas schema; `stability.*` models on Bedrock take another one
and are refused with a 400):
- generation: `TEXT_IMAGE` with `textToImageParams {text, negativeText?}`;
- edit, by `type`: `inpainting` -> `INPAINTING`, `outpainting` -> `OUTPAINTING`
  (`outPaintingMode` from `outpainting_mode`, default `DEFAULT`), both with `image`,
  `text`, `negativeText?` and either `maskImage` or `maskPrompt` (param `mask_prompt`);
  `background_removal` -> `BACKGROUND_REMOVAL` with `image` only. With no `type` an edit
  is an inpainting, and needs a mask or `mask_prompt` (else a 400 on `mask`): a prompt-
  only edit has no faithful Bedrock equivalent, and silently running IMAGE_VARIATION
  instead would surprise.
- variation: `IMAGE_VARIATION` with `imageVariationParams {images (all inputs, up to 5),
  text?, negativeText?, similarityStrength?}`.
All but background removal carry `imageGenerationConfig {numberOfImages, width, height,
quality?, cfgScale?, seed?}`; at most 5 images per call, so a larger `n` fans out
(batch i with `seed + i`).
`quality` low/medium/standard -> `standard`, high/hd/premium -> `premium`.

Bedrock's mask convention is the reverse of Stability's: black (0,0,0) pixels are inside
the mask (edited), white (255,255,255) are kept. OpenAI masks (transparent = edit) are
converted to that.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from typing import Any

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode
from PIL import Image, ImageOps

from imagejobs.domain.kinds import Kind
from imagejobs.providers.base import (
    ImageOut,
    ProviderConfig,
    ProviderError,
    ProviderNotConfigured,
    ProviderRequest,
    ProviderResult,
    UnsupportedOperation,
    fan_out,
    seed_for,
    send,
    sniff_type,
)
from imagejobs.providers.normalize import dimensions, transparent_to_white_mask

NAME = "bedrock"
SERVICE = "bedrock"
DEFAULT_REGION = "us-east-1"
MAX_IMAGES_PER_CALL = 5
MAX_VARIATION_INPUTS = 5
QUALITY = {
    "low": "standard",
    "medium": "standard",
    "standard": "standard",
    "high": "premium",
    "hd": "premium",
    "premium": "premium",
}
EDIT_TASKS = {
    "inpainting": "INPAINTING",
    "outpainting": "OUTPAINTING",
    "background_removal": "BACKGROUND_REMOVAL",
}

JSONObject = dict[str, Any]


def _invalid(message: str, param: str, code: str = "invalid_value") -> ProviderError:
    return ProviderError(
        message, status_code=400, type="invalid_request_error", code=code, param=param
    )


class BedrockProvider:
    """Invokes Titan Image Generator / Nova Canvas models on Bedrock Runtime."""

    name = NAME
    operations = frozenset({Kind.GENERATION, Kind.EDIT, Kind.VARIATION})

    def __init__(self, config: ProviderConfig, http: httpx.AsyncClient) -> None:
        self._config = config
        self._http = http
        self._region = config.region or DEFAULT_REGION
        default_base = f"https://bedrock-runtime.{self._region}.amazonaws.com"
        self._base = (config.base_url or default_base).rstrip("/")

    async def run(self, request: ProviderRequest) -> ProviderResult:
        if request.kind not in self.operations:
            raise UnsupportedOperation(self.name, request.kind)
        key_id = self._config.pick_key()
        if not key_id or not self._config.aws_secret_access_key:
            raise ProviderNotConfigured(self.name)
        if request.model.startswith("stability."):
            raise _invalid(
                "the bedrock adapter speaks the Titan / Nova Canvas schema only",
                "model",
                "unsupported_model",
            )
        body = await invoke_body(request)
        url = f"{self._base}/model/{percent_encode(request.model)}/invoke"
        if "imageGenerationConfig" not in body:  # background removal: one image, no n
            return await self._invoke(url, body, key_id)

        async def call(count: int, index: int) -> ProviderResult:
            config = {**body["imageGenerationConfig"], "numberOfImages": count}
            if isinstance(config.get("seed"), int):
                config["seed"] = seed_for(config["seed"], index)
            return await self._invoke(url, {**body, "imageGenerationConfig": config}, key_id)

        return await fan_out(request, MAX_IMAGES_PER_CALL, call)

    async def _invoke(self, url: str, body: JSONObject, key_id: str) -> ProviderResult:
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = self._sign(url, payload, key_id)
        response = await send(
            self._http,
            self._http.build_request("POST", url, content=payload, headers=headers),
            provider=self.name,
            timeout_s=self._config.timeout_s,
        )
        return parse_response(response)

    def _sign(self, url: str, payload: bytes, key_id: str) -> dict[str, str]:
        """The headers to send: Content-Type, Accept, X-Amz-Date, X-Amz-Security-Token
        (with a session token) and Authorization, signed over exactly `payload`."""
        credentials = Credentials(
            access_key=key_id,
            secret_key=self._config.aws_secret_access_key,
            token=self._config.aws_session_token or None,
        )
        aws_request = AWSRequest(
            method="POST",
            url=url,
            data=payload,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        SigV4Auth(credentials, SERVICE, self._region).add_auth(aws_request)
        return {str(k): str(v) for k, v in aws_request.headers.items()}


def parse_response(response: httpx.Response) -> ProviderResult:
    """`{"images": [b64...], "error"?}` -> image bytes; a set `error` is a 400."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ProviderError(
            "bedrock returned an unreadable response",
            status_code=502,
            type="upstream_error",
            code="invalid_response",
        )
    if body.get("error"):
        raise ProviderError(
            str(body["error"]),
            status_code=400,
            type="invalid_request_error",
            code="content_filtered",
        )
    images = body.get("images")
    if not isinstance(images, list) or not images:
        raise ProviderError(
            "bedrock returned no images",
            status_code=502,
            type="upstream_error",
            code="no_output",
        )
    out = []
    for item in images:
        try:
            data = base64.b64decode(str(item), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ProviderError(
                "bedrock returned an undecodable image",
                status_code=502,
                type="upstream_error",
                code="invalid_response",
            ) from exc
        out.append(ImageOut(data=data, content_type=sniff_type(data)))
    return ProviderResult(images=tuple(out))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bedrock_mask(mask_png: bytes) -> bytes:
    """An OpenAI mask (transparent = edit) as Bedrock's: an RGB PNG, black where the
    image is to be edited and white where it is kept."""
    white_means_edit = transparent_to_white_mask(mask_png)
    with Image.open(io.BytesIO(white_means_edit)) as img:
        inverted = ImageOps.invert(img.convert("L")).convert("RGB")
    buf = io.BytesIO()
    inverted.save(buf, format="PNG")
    return buf.getvalue()


def generation_config(request: ProviderRequest, *, sized: bool = True) -> JSONObject:
    """`imageGenerationConfig` (numberOfImages is set per call by the fan-out)."""
    config: JSONObject = {"numberOfImages": min(request.n, MAX_IMAGES_PER_CALL)}
    if sized:
        width, height = dimensions(request.params)
        config["width"] = width
        config["height"] = height
    quality = QUALITY.get((request.param_str("quality") or "").lower())
    if quality:
        config["quality"] = quality
    cfg_scale = request.params.get("cfg_scale", request.params.get("cfgScale"))
    if isinstance(cfg_scale, int | float) and not isinstance(cfg_scale, bool):
        config["cfgScale"] = cfg_scale
    seed = request.param_int("seed")
    if seed is not None:
        config["seed"] = seed
    return config


def _texts(request: ProviderRequest) -> JSONObject:
    texts: JSONObject = {}
    if request.prompt:
        texts["text"] = request.prompt
    negative = request.param_str("negative_prompt")
    if negative:
        texts["negativeText"] = negative
    return texts


async def invoke_body(request: ProviderRequest) -> JSONObject:
    """The InvokeModel body for `request` (see the module doc)."""
    if request.kind is Kind.GENERATION:
        return {
            "taskType": "TEXT_IMAGE",
            "textToImageParams": _texts(request),
            "imageGenerationConfig": generation_config(request),
        }
    if not request.images:
        raise _invalid("at least one image is required", "image", "missing_image")
    if request.kind is Kind.VARIATION:
        params: JSONObject = {
            "images": [_b64(i.data) for i in request.images[:MAX_VARIATION_INPUTS]],
            **_texts(request),
        }
        strength = request.params.get("similarity_strength")
        if isinstance(strength, int | float) and not isinstance(strength, bool):
            params["similarityStrength"] = strength
        return {
            "taskType": "IMAGE_VARIATION",
            "imageVariationParams": params,
            "imageGenerationConfig": generation_config(request),
        }
    return await _edit_body(request)


async def _edit_body(request: ProviderRequest) -> JSONObject:
    edit_type = request.param_str("type") or "inpainting"
    task = EDIT_TASKS.get(edit_type)
    if task is None:
        raise _invalid(
            f"bedrock edits support type {', '.join(EDIT_TASKS)}; got {edit_type!r}",
            "type",
            "unsupported_edit_type",
        )
    image = _b64(request.images[0].data)
    if task == "BACKGROUND_REMOVAL":
        return {"taskType": task, "backgroundRemovalParams": {"image": image}}
    params: JSONObject = {"image": image, **_texts(request)}
    mask_prompt = request.param_str("mask_prompt")
    if request.mask is not None:
        params["maskImage"] = _b64(await asyncio.to_thread(bedrock_mask, request.mask.data))
    elif mask_prompt:
        params["maskPrompt"] = mask_prompt
    else:
        raise _invalid(
            f"bedrock {edit_type} needs a mask image or a mask_prompt", "mask", "missing_mask"
        )
    if task == "OUTPAINTING":
        mode = (request.param_str("outpainting_mode") or "DEFAULT").upper()
        params["outPaintingMode"] = mode
        key = "outPaintingParams"
    else:
        key = "inPaintingParams"
    # Edits keep the input's size unless the client asked for another.
    sized = any(k in request.params for k in ("size", "width", "height", "aspect_ratio"))
    return {
        "taskType": task,
        key: params,
        "imageGenerationConfig": generation_config(request, sized=sized),
    }


def build(config: ProviderConfig, http: httpx.AsyncClient) -> BedrockProvider:
    """The Bedrock adapter (see the module doc)."""
    return BedrockProvider(config, http)
