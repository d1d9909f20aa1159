"""The gRPC servicer: a thin adapter (read metadata, validate, call the engine, convert).

REST requests arrive through Envoy's transcoder with their headers as metadata and their
raw body in `http_body`; the servicer tells Envoy which HTTP status to use through the
`x-http-status` initial metadata (202 for an accepted or still-running job).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from imagejobs.config import Settings
from imagejobs.convert import job_message
from imagejobs.engine import Caller, Engine
from imagejobs.errors import InvalidRequest, JobNotFound, PayloadTooLarge
from imagejobs.jobs import Job, resolve_ttl
from imagejobs.kinds import Kind
from imagejobs.requests import ImageRequest, Limits, from_proto, parse_body
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

TTL_HEADER = "x-bf-async-job-result-ttl"
VK_PREFIX = "sk-bf-"


def metadata_of(context: Context) -> dict[str, str]:
    """Request metadata as a dict of lower-case names (text values only)."""
    pairs = context.invocation_metadata() or ()
    return {str(k).lower(): v for k, v in pairs if isinstance(v, str)}


def virtual_key(md: dict[str, str]) -> str | None:
    """The contract's identity headers, in order of precedence."""
    if md.get("x-bf-vk"):
        return md["x-bf-vk"].strip()
    auth = md.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip().startswith(VK_PREFIX):
        return auth[7:].strip()
    for name in ("x-api-key", "x-goog-api-key"):
        value = md.get(name, "").strip()
        if value.startswith(VK_PREFIX):
            return value
    return None


def parse_kind(value: str) -> Kind:
    try:
        return Kind.parse(value)
    except ValueError:
        raise InvalidRequest(
            "kind must be generations, edits or variations", param="kind"
        ) from None


class ImageJobServicer(jobs_pb2_grpc.ImageJobServiceServicer):
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._limits = Limits(
            max_total_bytes=settings.max_body_bytes, max_file_bytes=settings.max_file_bytes
        )

    def _base_url(self, md: dict[str, str]) -> str:
        if self._settings.public_url:
            return self._settings.public_url.rstrip("/")
        host = md.get("x-imagejobs-host") or f"{self._settings.host}:{self._settings.gateway_port}"
        scheme = md.get("x-forwarded-proto", "http")
        return f"{scheme}://{host}"

    async def SubmitImageJob(
        self, request: jobs_pb2.SubmitImageJobRequest, context: Context
    ) -> jobs_pb2.Job:
        md = metadata_of(context)
        kind = parse_kind(request.kind)
        image_request = await self._parse(kind, request)
        header_ttl = md.get(TTL_HEADER)
        if header_ttl is None and request.result_ttl_seconds:
            header_ttl = str(request.result_ttl_seconds)
        ttl = resolve_ttl(header_ttl, self._settings.default_ttl_s, self._settings.max_ttl_s)
        job = await self._engine.submit(
            image_request,
            ttl_s=ttl,
            request_id=md.get("x-request-id") or request.request_id,
            caller=Caller.from_key(virtual_key(md)),
        )
        await context.send_initial_metadata((("x-http-status", "202"),))
        return await self._render(job, md)

    async def _parse(self, kind: Kind, request: jobs_pb2.SubmitImageJobRequest) -> ImageRequest:
        if request.HasField("http_body"):
            body = request.http_body
            if len(body.data) > self._settings.max_body_bytes:
                raise PayloadTooLarge("request body too large")
            if body.content_type.lower().startswith("multipart/"):
                # parsing and decoding multi-MB uploads is CPU work: off the event loop
                return await asyncio.to_thread(
                    parse_body, kind, body.content_type, body.data, self._limits
                )
            return parse_body(kind, body.content_type, body.data, self._limits)
        if kind is not Kind.GENERATION and request.request.images:
            return await asyncio.to_thread(from_proto, kind, request.request, self._limits)
        return from_proto(kind, request.request, self._limits)

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: Context) -> jobs_pb2.Job:
        md = metadata_of(context)
        job = await self._engine.get(
            parse_kind_or_404(request.kind), request.job_id, Caller.from_key(virtual_key(md))
        )
        if not job.status.terminal:
            await context.send_initial_metadata((("x-http-status", "202"),))
        return await self._render(job, md)

    async def GetJobImage(
        self, request: jobs_pb2.GetJobImageRequest, context: Context
    ) -> jobs_pb2.GetJobImageResponse:
        md = metadata_of(context)
        obj = await self._engine.image(
            parse_kind_or_404(request.kind),
            request.job_id,
            request.index,
            Caller.from_key(virtual_key(md)),
        )
        response = jobs_pb2.GetJobImageResponse()
        response.image.content_type = obj.content_type
        response.image.data = obj.data
        return response

    async def _render(self, job: Job, md: dict[str, str]) -> jobs_pb2.Job:
        images: list[bytes] | None = None
        if job.result is not None and job.request.response_format == "b64_json":
            objects = await asyncio.gather(
                *(self._engine.objects.get(i.ref.object_id) for i in job.result.images)
            )
            if any(o is None for o in objects):  # expired between the two reads
                raise JobNotFound()
            images = [o.data for o in objects if o is not None]
        return job_message(job, images, self._base_url(md))


def parse_kind_or_404(value: str) -> Kind:
    try:
        return Kind.parse(value)
    except ValueError:
        raise JobNotFound() from None
