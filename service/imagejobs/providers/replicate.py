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
from typing import Any

from imagejobs.domain.errors import BadUpstreamResponse, ErrorCode
from imagejobs.domain.kinds import Kind
from imagejobs.providers.base import (
    ACCEPT_JSON,
    ImageOut,
    ProviderRequest,
    ProviderResult,
    invalid_input,
    no_output,
)
from imagejobs.providers.normalize import (
    OPENAI_STYLE_PARAMS,
    nearest_aspect_ratio,
    parse_size,
    transparent_to_white_mask,
    without,
)
from imagejobs.providers.polling import (
    TaskAdapter,
    TaskDoc,
    TaskFailure,
    TaskStates,
    data_url,
    decode_data_url,
    task_vendor,
)

VENDOR = task_vendor(
    "replicate", key_env="REPLICATE_API_TOKEN", base_url="https://api.replicate.com"
)
STATES = TaskStates(
    succeeded=frozenset({"succeeded"}),
    failed={
        "failed": TaskFailure(500, ErrorCode.PREDICTION_FAILED),
        "canceled": TaskFailure(500, ErrorCode.PREDICTION_CANCELED),
        # stopped by Replicate before it ran: a new prediction may well run
        "aborted": TaskFailure(503, ErrorCode.PREDICTION_ABORTED, retryable=True),
    },
)
VERSION_ID = re.compile(r"[0-9a-f]{64}")
# Request fields that mean something only to OpenAI-style APIs, or that are mapped below.
DROPPED = OPENAI_STYLE_PARAMS


class ReplicateProvider(TaskAdapter):
    """Runs generations and edits as Replicate predictions."""

    vendor = VENDOR
    operations = frozenset({Kind.GENERATION, Kind.EDIT})
    states = STATES

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        deadline = self.deadline()
        auth = {"Authorization": f"Bearer {self._config.require_key()}", **ACCEPT_JSON}
        url, body = create_call(self.base_url, request.model, await prediction_input(request))
        created = await self.create(self._http.build_request("POST", url, json=body, headers=auth))
        final = await self.follow(
            self._status_url(created), headers=auth, deadline=deadline, first=created
        )
        urls = output_urls(final)
        if not urls:
            raise no_output("replicate prediction succeeded without output")
        images = await asyncio.gather(*(self._fetch(u) for u in urls))
        return ProviderResult(images=tuple(images))

    def failure_message(self, doc: TaskDoc, status: str) -> str:
        detail = doc.get("error")
        return f"replicate prediction {status}: {detail or 'no error message'}"

    def _status_url(self, created: TaskDoc) -> str:
        urls = created.get("urls")
        if isinstance(urls, dict) and isinstance(urls.get("get"), str):
            return str(urls["get"])
        prediction_id = created.get("id")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise BadUpstreamResponse(self.name, "a prediction without id or urls.get")
        return f"{self.base_url}/v1/predictions/{prediction_id}"

    async def _fetch(self, url: str) -> ImageOut:
        if url.startswith("data:"):
            return decode_data_url(url, self.name)
        return await self.download(url)


def create_call(base: str, model: str, model_input: dict[str, Any]) -> tuple[str, TaskDoc]:
    """The create-prediction URL and body for a model string (see the module doc)."""
    if ":" in model:
        _, _, version = model.rpartition(":")
        return f"{base}/v1/predictions", {"version": version, "input": model_input}
    if VERSION_ID.fullmatch(model):
        return f"{base}/v1/predictions", {"version": model, "input": model_input}
    owner, sep, name = model.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise invalid_input(
            f"replicate model must be <owner>/<name>[:<version>], got {model!r}",
            "model",
            ErrorCode.MODEL_NOT_FOUND,
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


build = ReplicateProvider  # the factory the registry calls: build(config, http)
