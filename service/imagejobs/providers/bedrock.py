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
import dataclasses
import io
import json
from typing import Any

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode
from PIL import Image, ImageOps

from imagejobs.domain.errors import BadUpstreamResponse, ErrorCode, ErrorType, ProviderError
from imagejobs.domain.images import sniff_type
from imagejobs.domain.kinds import Kind
from imagejobs.providers import upstream
from imagejobs.providers.adapter import Adapter, Vendor
from imagejobs.providers.base import (
    ImageOut,
    JSONValue,
    ProviderRequest,
    ProviderResult,
    b64,
    edit_mode,
    fan_out,
    invalid_input,
    no_output,
    seed_for,
)
from imagejobs.providers.normalize import dimensions, transparent_to_white_mask

SERVICE = "bedrock"
DEFAULT_REGION = "us-east-1"
# The key is the access key id; the secret and session token, when not configured, come
# from the standard AWS variables.
VENDOR = Vendor(
    name="bedrock",
    key_env="AWS_ACCESS_KEY_ID",
    options={"region": DEFAULT_REGION, "aws_secret_access_key": "", "aws_session_token": ""},
    options_env={
        "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "aws_session_token": "AWS_SESSION_TOKEN",
    },
)
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
# AWS error names (the `x-amzn-ErrorType` header, or a JSON body's `__type`) -> the
# contract's error types; the name itself becomes `code`. Names not listed keep the
# status-based default type.
AWS_ERROR_TYPES = {
    "ValidationException": ErrorType.INVALID_REQUEST,
    "SerializationException": ErrorType.INVALID_REQUEST,
    "AccessDeniedException": ErrorType.PERMISSION,
    "UnrecognizedClientException": ErrorType.AUTHENTICATION,
    "InvalidSignatureException": ErrorType.AUTHENTICATION,
    "IncompleteSignatureException": ErrorType.AUTHENTICATION,
    "MissingAuthenticationTokenException": ErrorType.AUTHENTICATION,
    "ExpiredTokenException": ErrorType.AUTHENTICATION,
    "ResourceNotFoundException": ErrorType.NOT_FOUND,
    "ThrottlingException": ErrorType.RATE_LIMIT,
    "ServiceQuotaExceededException": ErrorType.RATE_LIMIT,
    "TooManyRequestsException": ErrorType.RATE_LIMIT,
    "ModelTimeoutException": ErrorType.TIMEOUT,
    "ModelNotReadyException": ErrorType.API,
    "ModelErrorException": ErrorType.API,
    "InternalServerException": ErrorType.API,
    "ServiceUnavailableException": ErrorType.API,
}

JSONObject = dict[str, Any]


def aws_error_name(response: httpx.Response, body: JSONValue) -> str | None:
    """The AWS error code of an error response, as botocore reads it: the
    `x-amzn-ErrorType` header (`ThrottlingException:http://…`), else the body's
    `__type` (`com.amazon.coral.service#ThrottlingException`); None when neither is set."""
    raw = response.headers.get("x-amzn-errortype")
    if not raw and isinstance(body, dict):
        value = body.get("__type")
        raw = value if isinstance(value, str) else None
    if not raw:
        return None
    name = raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return name or None


def parse_error(response: httpx.Response, body: JSONValue) -> upstream.UpstreamError:
    """An AWS error: its name becomes `code` and picks the type (when the body names
    none), and a capitalised `Message` is the message."""
    said = upstream.parse_error(response, body)
    name = aws_error_name(response, body)
    if not name:
        return said
    message = said.message
    if not message and isinstance(body, dict) and body.get("Message"):
        message = str(body["Message"])
    etype = said.type or AWS_ERROR_TYPES.get(name)
    return dataclasses.replace(said, code=name, type=etype, message=message)


class BedrockProvider(Adapter):
    """Invokes Titan Image Generator / Nova Canvas models on Bedrock Runtime."""

    vendor = VENDOR

    @property
    def base_url(self) -> str:
        default = f"https://bedrock-runtime.{self._config.region}.amazonaws.com"
        return (self._config.base_url or default).rstrip("/")

    def configured(self) -> bool:
        return bool(self._config.keys) and bool(self._config.aws_secret_access_key)

    def parse_error(self, response: httpx.Response, body: JSONValue) -> upstream.UpstreamError:
        return parse_error(response, body)

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        key_id = self._config.require_key()  # one access key id for every call of the job
        if request.model.startswith("stability."):
            raise invalid_input(
                "the bedrock adapter speaks the Titan / Nova Canvas schema only",
                "model",
                ErrorCode.UNSUPPORTED_MODEL,
            )
        body = await invoke_body(request)
        url = f"{self.base_url}/model/{percent_encode(request.model)}/invoke"
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
        request = self._http.build_request("POST", url, content=payload, headers=headers)
        return parse_response(await self.send(request))

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
        SigV4Auth(credentials, SERVICE, self._config.region).add_auth(aws_request)
        return {str(k): str(v) for k, v in aws_request.headers.items()}


def parse_response(response: httpx.Response) -> ProviderResult:
    """`{"images": [b64...], "error"?}` -> image bytes; a set `error` is a 400."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise BadUpstreamResponse(VENDOR.name, "the body is not a JSON object")
    if body.get("error"):
        raise ProviderError(
            str(body["error"]),
            status_code=400,
            type=ErrorType.INVALID_REQUEST,
            code=ErrorCode.CONTENT_FILTERED,
        )
    images = body.get("images")
    if not isinstance(images, list) or not images:
        raise no_output("bedrock returned no images")
    out = []
    for item in images:
        try:
            data = base64.b64decode(str(item), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise BadUpstreamResponse(VENDOR.name, "an image is not valid base64") from exc
        out.append(ImageOut(data=data, content_type=sniff_type(data)))
    return ProviderResult(images=tuple(out))


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
        raise invalid_input("at least one image is required", "image", ErrorCode.MISSING_IMAGE)
    if request.kind is Kind.VARIATION:
        params: JSONObject = {
            "images": [b64(i.data) for i in request.images[:MAX_VARIATION_INPUTS]],
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
    edit_type, task = edit_mode(request, EDIT_TASKS, VENDOR.name)
    image = b64(request.images[0].data)
    if task == "BACKGROUND_REMOVAL":
        return {"taskType": task, "backgroundRemovalParams": {"image": image}}
    params: JSONObject = {"image": image, **_texts(request)}
    mask_prompt = request.param_str("mask_prompt")
    if request.mask is not None:
        params["maskImage"] = b64(await asyncio.to_thread(bedrock_mask, request.mask.data))
    elif mask_prompt:
        params["maskPrompt"] = mask_prompt
    else:
        raise invalid_input(
            f"bedrock {edit_type} needs a mask image or a mask_prompt",
            "mask",
            ErrorCode.MISSING_MASK,
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


build = BedrockProvider  # the factory the registry calls: build(config, http)
