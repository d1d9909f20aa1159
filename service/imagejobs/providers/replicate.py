"""Replicate (`replicate/<owner>/<name>` or `replicate/<owner>/<name>:<version>`).

A model string without a version runs an official model:
`POST {base}/v1/models/{owner}/{name}/predictions {"input": {...}}`; with `:<version>`
(or as a bare 64-hex version id) it runs that version: `POST {base}/v1/predictions
{"version": "<version id>", "input": {...}}`. Both with `Authorization: Bearer <token>`.

We do not send `Prefer: wait`: the prediction is followed by polling its `urls.get`
every `config.poll_interval_s`, bounded by `config.timeout_s` overall, so a slow model
behaves the same as a fast one and no connection is held open for a minute. When the
prediction `succeeded`, every `output` URL (a string or a list) is downloaded at once,
without the token (delivery URLs are public and expire within the hour).

Input mapping: `prompt`; `aspect_ratio` (given, or the nearest common ratio to `size`);
`num_outputs` from `n` when the client sent `n` (a model without that input returns
one image); `seed`, `output_format`, `negative_prompt`, `num_inference_steps` as is;
`output_compression` -> `output_quality`; edits add `image` (a data URL of the first
input image) and `mask` (a data URL, converted to white-means-edit, the convention of
Replicate's inpainting models). OpenAI-only fields are dropped; unknown keys pass through
into `input` (that is how model-specific inputs such as `go_fast` reach the model).

A prediction that ends `failed` is a model failure: ProviderError 500 carrying the
prediction's `error` text, not retryable (it is usually deterministic: bad input, NSFW
filter). `canceled` is 500 too; `aborted` (stopped by Replicate before it ran) is 503 and
retryable. Variations are unsupported.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx

from imagejobs.domain.kinds import Kind
from imagejobs.providers.base import (
    ImageOut,
    ProviderConfig,
    ProviderError,
    ProviderRequest,
    ProviderResult,
    UnsupportedOperation,
    download,
    send,
)
from imagejobs.providers.normalize import (
    OPENAI_STYLE_PARAMS,
    nearest_aspect_ratio,
    parse_size,
    transparent_to_white_mask,
    without,
)
from imagejobs.providers.polling import (
    TaskDoc,
    TaskStates,
    data_url,
    decode_data_url,
    follow_task,
    json_object,
)

NAME = "replicate"
DEFAULT_BASE_URL = "https://api.replicate.com"
STATES = TaskStates(
    succeeded=frozenset({"succeeded"}),
    failed=frozenset({"failed", "canceled", "aborted"}),
)
VERSION_ID = re.compile(r"[0-9a-f]{64}")
# Request fields that mean something only to OpenAI-style APIs, or that are mapped below.
DROPPED = OPENAI_STYLE_PARAMS


class ReplicateProvider:
    """Runs generations and edits as Replicate predictions."""

    name = NAME
    operations = frozenset({Kind.GENERATION, Kind.EDIT})

    def __init__(self, config: ProviderConfig, http: httpx.AsyncClient) -> None:
        self._config = config
        self._http = http
        self._base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")

    async def run(self, request: ProviderRequest) -> ProviderResult:
        if request.kind not in self.operations:
            raise UnsupportedOperation(self.name, request.kind)
        return await self._run(request, self._config.require_key())

    async def _run(self, request: ProviderRequest, token: str) -> ProviderResult:
        deadline = time.monotonic() + self._config.timeout_s
        auth = {"Authorization": f"Bearer {token}"}
        url, body = create_call(self._base, request.model, await prediction_input(request))
        response = await send(
            self._http,
            self._http.build_request("POST", url, json=body, headers=auth),
            provider=self.name,
            timeout_s=self._config.timeout_s,
        )
        created = json_object(response, self.name)
        final = await follow_task(
            self._http,
            self._status_url(created),
            provider=self.name,
            headers=auth,
            states=STATES,
            on_failure=prediction_error,
            interval_s=self._config.poll_interval_s,
            deadline=deadline,
            timeout_s=self._config.timeout_s,
            first=created,
        )
        urls = output_urls(final)
        if not urls:
            raise ProviderError(
                "replicate prediction succeeded without output",
                status_code=502,
                type="upstream_error",
                code="no_output",
            )
        images = await asyncio.gather(*(self._fetch(u) for u in urls))
        return ProviderResult(images=tuple(images))

    def _status_url(self, created: TaskDoc) -> str:
        urls = created.get("urls")
        if isinstance(urls, dict) and isinstance(urls.get("get"), str):
            return str(urls["get"])
        prediction_id = created.get("id")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise ProviderError(
                "replicate returned a prediction without id or urls.get",
                status_code=502,
                type="upstream_error",
                code="invalid_response",
            )
        return f"{self._base}/v1/predictions/{prediction_id}"

    async def _fetch(self, url: str) -> ImageOut:
        if url.startswith("data:"):
            return decode_data_url(url, self.name)
        return await download(
            self._http,
            url,
            provider=self.name,
            timeout_s=self._config.timeout_s,  # its own budget: the result is paid for
            max_bytes=self._config.max_download_bytes,
        )


def create_call(base: str, model: str, model_input: dict[str, Any]) -> tuple[str, TaskDoc]:
    """The create-prediction URL and body for a model string (see the module doc)."""
    if ":" in model:
        _, _, version = model.rpartition(":")
        return f"{base}/v1/predictions", {"version": version, "input": model_input}
    if VERSION_ID.fullmatch(model):
        return f"{base}/v1/predictions", {"version": model, "input": model_input}
    owner, sep, name = model.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ProviderError(
            f"replicate model must be <owner>/<name>[:<version>], got {model!r}",
            status_code=400,
            type="invalid_request_error",
            code="model_not_found",
            param="model",
        )
    return f"{base}/v1/models/{owner}/{name}/predictions", {"input": model_input}


async def prediction_input(request: ProviderRequest) -> dict[str, Any]:
    """The prediction's `input` object for `request` (see the module doc)."""
    params = request.params
    model_input: dict[str, Any] = without(params, DROPPED)
    if request.prompt:
        model_input["prompt"] = request.prompt
    ratio = request.param_str("aspect_ratio")
    size = parse_size(request.param_str("size"))
    if ratio:
        model_input["aspect_ratio"] = ratio
    elif size:
        model_input["aspect_ratio"] = nearest_aspect_ratio(*size)
    if "n" in params:
        model_input["num_outputs"] = request.n
    compression = request.param_int("output_compression")
    if compression is not None and "output_quality" not in model_input:
        model_input["output_quality"] = compression
    if request.kind is Kind.EDIT and request.images:
        first = request.images[0]
        model_input["image"] = data_url(first.data, first.content_type)
        if request.mask is not None:
            mask = await asyncio.to_thread(transparent_to_white_mask, request.mask.data)
            model_input["mask"] = data_url(mask, "image/png")
    return model_input


def output_urls(prediction: TaskDoc) -> list[str]:
    """The result URLs of a finished prediction (`output` is a URL or a list of them)."""
    output = prediction.get("output")
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [item for item in output if isinstance(item, str) and item]
    return []


def prediction_error(prediction: TaskDoc, status: str) -> ProviderError:
    """The ProviderError for a prediction that ended `failed`, `canceled` or `aborted`."""
    detail = prediction.get("error")
    text = str(detail) if detail else "no error message"
    if status == "aborted":
        return ProviderError(
            f"replicate prediction aborted: {text}",
            status_code=503,
            type="upstream_error",
            code="prediction_aborted",
            retryable=True,
        )
    return ProviderError(
        f"replicate prediction {status}: {text}",
        status_code=500,
        type="upstream_error",
        code=f"prediction_{status}",
    )


def build(config: ProviderConfig, http: httpx.AsyncClient) -> ReplicateProvider:
    """The Replicate adapter (see the module doc)."""
    return ReplicateProvider(config, http)
