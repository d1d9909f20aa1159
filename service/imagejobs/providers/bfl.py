"""Black Forest Labs FLUX (`bfl/<endpoint>`, e.g. `bfl/flux-pro-1.1`, `bfl/flux-kontext-pro`,
`bfl/flux-pro-1.0-fill`, `bfl/flux-2-pro`).

`POST {base}/v1/{model}` with header `x-key: <key>` and a JSON body answers
`{"id", "polling_url"}`; the task is then followed by GETting `polling_url` (with
`x-key`) every `config.poll_interval_s`, bounded by `config.timeout_s` overall, until its
status is `Ready`, when `result.sample` (a signed URL that expires in minutes) is
downloaded at once, without the key. One image per task: `n` fans out into `n` tasks
(with a `seed`, task i gets `seed + i`).

Body mapping — generation: `prompt`; `aspect_ratio` for Kontext and `-ultra` models
(given, or the nearest common ratio to the size), `width`/`height` (rounded to multiples
of 32) for the others, only when the client gave a size; `seed`, `output_format`,
`num_inference_steps` -> `steps`; unknown keys (`safety_tolerance`,
`prompt_upsampling`, `guidance`, ...) pass through. Edits: a `-fill` model gets `image`
and `mask` (base64; the mask converted from OpenAI's transparent-means-edit to BFL's
white-means-edit); any other model (Kontext, FLUX.2) gets `input_image` (and
`input_image_2`..`_4` from further input images) and edits by prompt alone — a mask
is ignored there. No variations.

Terminal states: `Request Moderated` / `Content Moderated` -> 400 `content_filtered`;
`Error` -> 500 `task_failed`; `Task not found` -> 500 `task_not_found`, retryable (a new
task may well succeed). Everything else (`Pending`, ...) is polled again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from imagejobs.domain.errors import BadUpstreamResponse, ErrorCode, ErrorType
from imagejobs.domain.kinds import Kind
from imagejobs.providers.base import (
    ACCEPT_JSON,
    ProviderRequest,
    ProviderResult,
    b64,
    fan_out,
    invalid_input,
    no_output,
    seed_for,
)
from imagejobs.providers.normalize import (
    OPENAI_STYLE_PARAMS,
    dimensions,
    nearest_aspect_ratio,
    parse_size,
    transparent_to_white_mask,
    without,
)
from imagejobs.providers.polling import TaskAdapter, TaskDoc, TaskFailure, TaskStates, task_vendor

VENDOR = task_vendor("bfl", key_env="BFL_API_KEY", base_url="https://api.bfl.ai")
_MODERATED = TaskFailure(400, ErrorCode.CONTENT_FILTERED, ErrorType.INVALID_REQUEST)
STATES = TaskStates(
    succeeded=frozenset({"Ready"}),
    failed={
        "Request Moderated": _MODERATED,
        "Content Moderated": _MODERATED,
        "Error": TaskFailure(500, ErrorCode.TASK_FAILED),
        # the task is lost upstream: a new one may well succeed
        "Task not found": TaskFailure(500, ErrorCode.TASK_NOT_FOUND, retryable=True),
    },
)
_FAILED_AS = {"Error": "failed", "Task not found": "not found"}  # in the error message
SIZE_MULTIPLE = 32  # FLUX 1.1 [pro] wants width/height in multiples of 32
SIZE_KEYS = ("size", "width", "height", "aspect_ratio", "resolution")
DROPPED = OPENAI_STYLE_PARAMS | {
    "width",
    "height",
    "negative_prompt",  # FLUX has no negative prompt
    "num_inference_steps",  # sent as `steps`
}


class BflProvider(TaskAdapter):
    """Runs FLUX generations and edits as BFL tasks, one image per task."""

    vendor = VENDOR
    operations = frozenset({Kind.GENERATION, Kind.EDIT})
    states = STATES

    async def execute(self, request: ProviderRequest) -> ProviderResult:
        key = self._config.require_key()
        if not request.model or "/" in request.model:
            raise invalid_input(
                f"bfl model must be an endpoint name such as flux-pro-1.1, got {request.model!r}",
                "model",
                ErrorCode.MODEL_NOT_FOUND,
            )
        body = await task_body(request)
        deadline = self.deadline()

        async def one_task(_count: int, index: int) -> ProviderResult:
            seed = body.get("seed")
            task = {**body, "seed": seed_for(seed, index)} if isinstance(seed, int) else body
            return await self._one(request.model, task, key, deadline)

        return await fan_out(request, 1, one_task)

    def failure_message(self, doc: TaskDoc, status: str) -> str:
        details = doc.get("details")
        suffix = f": {details}" if details else ""
        return f"bfl task {_FAILED_AS.get(status, status.lower())}{suffix}"

    async def _one(self, model: str, body: TaskDoc, key: str, deadline: float) -> ProviderResult:
        headers = {"x-key": key, **ACCEPT_JSON}
        url = f"{self.base_url}/v1/{model}"
        created = await self.create(
            self._http.build_request("POST", url, json=body, headers=headers)
        )
        final = await self.follow(self._polling_url(created), headers=headers, deadline=deadline)
        result = final.get("result")
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str) or not sample:
            raise no_output("bfl task is Ready without result.sample")
        return ProviderResult(images=(await self.download(sample),))

    def _polling_url(self, created: TaskDoc) -> str:
        url = created.get("polling_url")
        if isinstance(url, str) and url:
            return url
        task_id = created.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise BadUpstreamResponse(self.name, "a task without id or polling_url")
        return f"{self.base_url}/v1/get_result?id={task_id}"


def _uses_aspect_ratio(model: str) -> bool:
    return "kontext" in model or model.endswith("-ultra")


async def task_body(request: ProviderRequest) -> dict[str, Any]:
    """The JSON body of one task for `request` (see the module doc)."""
    body: dict[str, Any] = without(request.params, DROPPED)
    if request.prompt:
        body["prompt"] = request.prompt
    steps = request.param_int("num_inference_steps")
    if steps is not None:
        body.setdefault("steps", steps)
    is_fill = "fill" in request.model
    if not is_fill and any(k in request.params for k in SIZE_KEYS):
        if _uses_aspect_ratio(request.model):
            ratio = request.param_str("aspect_ratio")
            size = parse_size(request.param_str("size"))
            if ratio is None:
                ratio = nearest_aspect_ratio(*(size or dimensions(request.params)))
            body["aspect_ratio"] = ratio
        else:
            width, height = dimensions(request.params)
            body["width"] = _round(width)
            body["height"] = _round(height)
    if request.kind is Kind.EDIT and request.images:
        if is_fill:
            body["image"] = b64(request.images[0].data)
            if request.mask is not None:
                mask = await asyncio.to_thread(transparent_to_white_mask, request.mask.data)
                body["mask"] = b64(mask)
        else:
            body["input_image"] = b64(request.images[0].data)
            for index, extra in enumerate(request.images[1:4], start=2):
                body[f"input_image_{index}"] = b64(extra.data)
    return body


def _round(value: int) -> int:
    return max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)


build = BflProvider  # the factory the registry calls: build(config, http)
