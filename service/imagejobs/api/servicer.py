"""The gRPC servicer: a thin adapter (read metadata, validate, call the job service, convert).

REST requests arrive through Envoy's transcoder with their headers as metadata and their
raw body in `http_body`; the servicer tells Envoy which HTTP status to use through the
`x-http-status` initial metadata (202 for a still-running job; the gateway itself
answers a successful submit with 202).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.api import httpbody_pb2

from imagejobs.api.auth import Authenticator, Caller
from imagejobs.api.models import listing, listing_json
from imagejobs.api.reads import Page
from imagejobs.api.render import job_json, job_message, list_json
from imagejobs.api.requests import ImageRequest, Limits, from_proto, parse_body
from imagejobs.api.service import JobService
from imagejobs.config import Settings
from imagejobs.domain.errors import InvalidRequest, JobNotFound, PayloadTooLarge
from imagejobs.domain.jobs import Job, Status, resolve_ttl
from imagejobs.domain.kinds import Kind
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

SSE_CONTENT_TYPE = "text/event-stream"

Context = grpc.aio.ServicerContext[Any, Any]

TTL_HEADER = "x-bf-async-job-result-ttl"
IDEMPOTENCY_HEADER = "idempotency-key"
MAX_REQUEST_ID_CHARS = 256
LARGE_RESULT_BYTES = 1024 * 1024  # results above this are rendered in a thread
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def metadata_of(context: Context) -> dict[str, str]:
    """Request metadata as a dict of lower-case names (text values only)."""
    pairs = context.invocation_metadata() or ()
    return {str(k).lower(): v for k, v in pairs if isinstance(v, str)}


def parse_kind(value: str) -> Kind:
    try:
        return Kind.parse(value)
    except ValueError:
        raise InvalidRequest(
            "kind must be generations, edits or variations", param="kind"
        ) from None


class ImageJobServicer(jobs_pb2_grpc.ImageJobServiceServicer):
    def __init__(self, service: JobService, settings: Settings) -> None:
        self._service = service
        self._settings = settings
        self._auth = Authenticator(
            settings.key_policies(), require_key=settings.require_virtual_key
        )
        self._catalogue = settings.model_catalogue()
        self._limits = Limits(
            max_total_bytes=settings.max_body_bytes,
            max_file_bytes=settings.max_file_bytes,
            catalogue=self._catalogue,
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
        caller = self._auth.caller(md)  # 401 before anything else
        kind = parse_kind(request.kind)
        image_request = await self._parse(kind, request)
        header_ttl = md.get(TTL_HEADER)
        if header_ttl is None and request.result_ttl_seconds:
            header_ttl = str(request.result_ttl_seconds)
        ttl = resolve_ttl(header_ttl, self._settings.default_ttl_s, self._settings.max_ttl_s)
        request_id = md.get("x-request-id") or request.request_id
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidRequest(
                f"x-request-id must be at most {MAX_REQUEST_ID_CHARS} characters",
                param="request_id",
            )
        job = await self._service.submit(
            image_request,
            ttl_s=ttl,
            request_id=request_id,
            caller=caller,
            idempotency_key=md.get(IDEMPOTENCY_HEADER) or request.idempotency_key,
        )
        # REST: the gateway answers every successful submit with 202 (rest.lua), which
        # spares an initial-metadata message per submit here
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
        job = await self._read(request.kind, request.job_id, request.wait, md, context)
        return await self._render(job, md)

    async def GetJobJson(
        self, request: jobs_pb2.GetJobJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        md = metadata_of(context)
        job = await self._read(request.kind, request.job_id, request.wait, md, context)
        return httpbody_pb2.HttpBody(
            content_type="application/json", data=await self._render_json(job, md)
        )

    async def _read(
        self, kind_text: str, job_id: str, wait: float, md: dict[str, str], context: Context
    ) -> Job:
        """The caller's job, after waiting up to `wait` s for it to end; 202 (REST) while
        it has not."""
        caller = self._auth.caller(md)
        kind = parse_kind_or_404(kind_text)
        if math.isnan(wait) or wait < 0:
            raise InvalidRequest("wait must be a number of seconds >= 0", param="wait")
        if wait > 0:
            job = await self._service.wait(kind, job_id, caller, wait)
        else:
            job = await self._service.get(kind, job_id, caller)
        if not job.status.terminal:
            await context.send_initial_metadata((("x-http-status", "202"),))
        return job

    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: Context) -> jobs_pb2.Job:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        job = await self._service.cancel(parse_kind_or_404(request.kind), request.job_id, caller)
        return await self._render(job, md)

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.Job]:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        kind = parse_kind_or_404(request.kind)
        async for job in self._service.watch(kind, request.job_id, caller):
            if job is not None:
                yield await self._render(job, md)

    async def StreamJobEvents(
        self, request: jobs_pb2.StreamJobEventsRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        kind = parse_kind_or_404(request.kind)
        number = 0
        async for job in self._service.watch(kind, request.job_id, caller):
            if job is None:
                text = ": keep-alive\n\n"
            else:
                number += 1
                data = (await self._render_json(job, md)).decode()
                text = f"id: {number}\nevent: job\ndata: {data}\n\n"
            yield httpbody_pb2.HttpBody(content_type=SSE_CONTENT_TYPE, data=text.encode())

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: Context
    ) -> jobs_pb2.ListJobsResponse:
        md = metadata_of(context)
        page = await self._list(request, md)
        base_url = self._base_url(md)
        return jobs_pb2.ListJobsResponse(
            jobs=[job_message(j, None, base_url, links=True) for j in page.jobs],
            next_page_token=page.next_page_token,
        )

    async def ListJobsJson(
        self, request: jobs_pb2.ListJobsJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        md = metadata_of(context)
        page = await self._list(request, md)
        base_url = self._base_url(md)
        return httpbody_pb2.HttpBody(
            content_type="application/json",
            data=list_json(
                [job_json(j, None, base_url, links=True) for j in page.jobs], page.next_page_token
            ),
        )

    async def _list(
        self, request: jobs_pb2.ListJobsRequest | jobs_pb2.ListJobsJsonRequest, md: dict[str, str]
    ) -> Page:
        """One page of the caller's jobs, after checking the filters."""
        caller = self._auth.caller(md)
        status = None
        if request.status:
            try:
                status = Status(request.status)
            except ValueError:
                raise InvalidRequest(
                    "status must be pending, processing, completed, failed or cancelled",
                    param="status",
                ) from None
        kind = parse_kind(request.kind) if request.kind else None
        if request.limit < 0:
            raise InvalidRequest("limit must be between 1 and 100", param="limit")
        limit = min(request.limit or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        return await self._service.list(
            caller,
            status=status,
            kind=kind,
            limit=limit,
            page_token=request.page_token,
        )

    async def GetJobImage(
        self, request: jobs_pb2.GetJobImageRequest, context: Context
    ) -> jobs_pb2.GetJobImageResponse:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        obj = await self._service.image(
            parse_kind_or_404(request.kind), request.job_id, request.index, caller
        )
        response = jobs_pb2.GetJobImageResponse()
        response.image.content_type = obj.content_type
        response.image.data = obj.data
        return response

    async def ListModels(
        self, request: jobs_pb2.ListModelsRequest, context: Context
    ) -> jobs_pb2.ListModelsResponse:
        return self._models(self._auth.caller(metadata_of(context)))

    async def ListModelsJson(
        self, request: jobs_pb2.ListModelsJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        models = self._models(self._auth.caller(metadata_of(context)))
        return httpbody_pb2.HttpBody(content_type="application/json", data=listing_json(models))

    def _models(self, caller: Caller) -> jobs_pb2.ListModelsResponse:
        """The configured providers' model families, as `caller`'s key may see them."""
        return listing(
            self._catalogue,
            self._settings.providers,
            day=self._limits.today(),
            max_n=self._limits.max_n,
            policy=caller.policy,
        )

    async def _images(self, job: Job) -> list[bytes] | None:
        """The result images' bytes when the response inlines them (`b64_json`)."""
        if job.result is None or job.request.response_format != "b64_json":
            return None
        objects = await asyncio.gather(
            *(self._service.objects.get(i.ref.object_id) for i in job.result.images)
        )
        if any(o is None for o in objects):  # expired between the two reads
            raise JobNotFound()
        return [o.data for o in objects if o is not None]

    async def _render(self, job: Job, md: dict[str, str]) -> jobs_pb2.Job:
        return job_message(job, await self._images(job), self._base_url(md))

    async def _render_json(self, job: Job, md: dict[str, str]) -> bytes:
        images = await self._images(job)
        if images is not None and sum(len(i) for i in images) > LARGE_RESULT_BYTES:
            # base64 and JSON of MBs of images is CPU work: off the event loop
            return await asyncio.to_thread(job_json, job, images, self._base_url(md))
        return job_json(job, images, self._base_url(md))


def parse_kind_or_404(value: str) -> Kind:
    try:
        return Kind.parse(value)
    except ValueError:
        raise JobNotFound() from None
