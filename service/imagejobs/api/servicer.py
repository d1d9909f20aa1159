"""The gRPC servicer: a thin adapter (read metadata, validate, call the job service, convert).

Two faces of one service. gRPC clients call the typed RPCs (SubmitImageJob, GetJob,
CancelJob, WatchJob, ListJobs, StreamJobImage): enums, typed results, raw image bytes
(messages.py). REST requests arrive through Envoy's transcoder at the `…Json` RPCs,
StreamJobEvents and GetJobImage, with their headers as metadata and (for a submit) their
raw body in `http_body`; their answers are JSON the servicer renders itself (render.py),
and the servicer tells Envoy which HTTP status to use through the `x-http-status` initial
metadata (202 for a still-running job; the gateway itself answers a successful submit
with 202). The console's reads (GetSubmission, GetStats): console_reads.py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

from google.api import httpbody_pb2

from imagejobs.api.auth import Authenticator
from imagejobs.api.console_reads import ConsoleRpcs
from imagejobs.api.fields import (
    Context,
    list_kind,
    list_status,
    metadata_of,
    parse_kind,
    parse_kind_or_404,
    parse_status,
    read_kind,
    submit_kind,
)
from imagejobs.api.messages import IMAGE_CHUNK_BYTES, delivery_message, inlines, job_message
from imagejobs.api.models import listing, listing_json
from imagejobs.api.reads import Page
from imagejobs.api.render import deliveries_json, job_json, list_json
from imagejobs.api.requests import ImageRequest, Limits, from_proto, parse_body
from imagejobs.api.service import JobService
from imagejobs.api.usage import UsageRpcs
from imagejobs.config import Settings
from imagejobs.domain.errors import InvalidRequest, JobNotFound, PayloadTooLarge
from imagejobs.domain.jobs import Job, Status, resolve_ttl
from imagejobs.domain.keys import Caller
from imagejobs.domain.kinds import Kind
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc
from imagejobs.webhooks.delivery import DeliveryRecord

SSE_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json"

TTL_HEADER = "x-bf-async-job-result-ttl"
IDEMPOTENCY_HEADER = "idempotency-key"
WEBHOOK_HEADER = "x-bf-async-webhook"
MAX_REQUEST_ID_CHARS = 256
LARGE_RESULT_BYTES = 1024 * 1024  # results above this are rendered in a thread
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class ImageJobServicer(UsageRpcs, ConsoleRpcs, jobs_pb2_grpc.ImageJobServiceServicer):
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

    # --- submit ---------------------------------------------------------------------

    async def SubmitImageJob(
        self, request: jobs_pb2.SubmitImageJobRequest, context: Context
    ) -> jobs_pb2.Job:
        md = metadata_of(context)
        caller = self._auth.caller(md)  # 401 before anything else
        kind = submit_kind(request.kind)
        if kind is not Kind.GENERATION and request.request.images:
            # decoding and checking MBs of images is CPU work: off the event loop
            parsed = await asyncio.to_thread(from_proto, kind, request.request, self._limits)
        else:
            parsed = from_proto(kind, request.request, self._limits)
        job = await self._submit(
            parsed,
            md,
            caller,
            ttl_s=request.result_ttl_seconds,
            request_id=request.request_id,
            idempotency_key=request.idempotency_key,
            webhook=request.webhook,
        )
        return await self._typed(job, md)

    async def SubmitImageJobJson(
        self, request: jobs_pb2.SubmitImageJobJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        kind = parse_kind(request.kind)
        body = request.http_body
        if len(body.data) > self._settings.max_body_bytes:
            raise PayloadTooLarge("request body too large")
        if body.content_type.lower().startswith("multipart/"):
            # parsing and decoding multi-MB uploads is CPU work: off the event loop
            parsed = await asyncio.to_thread(
                parse_body, kind, body.content_type, body.data, self._limits
            )
        else:
            parsed = parse_body(kind, body.content_type, body.data, self._limits)
        job = await self._submit(parsed, md, caller)
        # the gateway answers every successful submit with 202 (rest.lua), which spares
        # an initial-metadata message per submit here
        return await self._json_body(job, md)

    async def _submit(
        self,
        request: ImageRequest,
        md: dict[str, str],
        caller: Caller,
        *,
        ttl_s: int = 0,
        request_id: str = "",
        idempotency_key: str = "",
        webhook: str = "",
    ) -> Job:
        """The submit both faces share; the REST headers (metadata) win over the typed
        request's fields."""
        header_ttl = md.get(TTL_HEADER)
        if header_ttl is None and ttl_s:
            header_ttl = str(ttl_s)
        ttl = resolve_ttl(header_ttl, self._settings.default_ttl_s, self._settings.max_ttl_s)
        request_id = md.get("x-request-id") or request_id
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidRequest(
                f"x-request-id must be at most {MAX_REQUEST_ID_CHARS} characters",
                param="request_id",
            )
        return await self._service.submit(
            request,
            ttl_s=ttl,
            request_id=request_id,
            caller=caller,
            idempotency_key=md.get(IDEMPOTENCY_HEADER) or idempotency_key,
            webhook=(md.get(WEBHOOK_HEADER) or webhook).strip(),
        )

    # --- reads ----------------------------------------------------------------------

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: Context) -> jobs_pb2.Job:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        kind = read_kind(request.kind)
        job = await self._read(kind, request.job_id, request.wait, caller, context)
        return await self._typed(job, md)

    async def GetJobJson(
        self, request: jobs_pb2.GetJobJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        kind = parse_kind_or_404(request.kind)
        job = await self._read(kind, request.job_id, request.wait, caller, context)
        return await self._json_body(job, md)

    async def _read(
        self, kind: Kind | None, job_id: str, wait: float, caller: Caller, context: Context
    ) -> Job:
        """The caller's job, after waiting up to `wait` s for it to end; 202 (REST) while
        it has not."""
        if math.isnan(wait) or wait < 0:
            raise InvalidRequest("wait must be a number of seconds >= 0", param="wait")
        if wait > 0:
            job = await self._service.wait(kind, job_id, caller, wait)
        else:
            job = await self._service.get(kind, job_id, caller)
        if not job.status.terminal:
            await context.send_initial_metadata((("x-http-status", "202"),))
        return job

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

    async def StreamJobImage(
        self, request: jobs_pb2.StreamJobImageRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.StreamJobImageResponse]:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        obj = await self._service.image(
            read_kind(request.kind), request.job_id, request.index, caller
        )
        size = len(obj.data)
        for offset in range(0, max(size, 1), IMAGE_CHUNK_BYTES):  # an empty image: one chunk
            yield jobs_pb2.StreamJobImageResponse(
                content_type=obj.content_type,
                size_bytes=size,
                offset=offset,
                data=obj.data[offset : offset + IMAGE_CHUNK_BYTES],
            )

    # --- cancel ---------------------------------------------------------------------

    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: Context) -> jobs_pb2.Job:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        job = await self._service.cancel(read_kind(request.kind), request.job_id, caller)
        return await self._typed(job, md)

    async def CancelJobJson(
        self, request: jobs_pb2.CancelJobJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        job = await self._service.cancel(parse_kind_or_404(request.kind), request.job_id, caller)
        return await self._json_body(job, md)

    # --- watch ----------------------------------------------------------------------

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.Job]:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        async for job in self._service.watch(read_kind(request.kind), request.job_id, caller):
            if job is not None:
                yield await self._typed(job, md)

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

    # --- list -----------------------------------------------------------------------

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: Context
    ) -> jobs_pb2.ListJobsResponse:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        status, kind = list_status(request.status), list_kind(request.kind)
        page = await self._list(caller, status, kind, request)
        base_url = self._base_url(md)
        return jobs_pb2.ListJobsResponse(
            jobs=[job_message(j, None, base_url) for j in page.jobs],
            next_page_token=page.next_page_token,
        )

    async def ListJobsJson(
        self, request: jobs_pb2.ListJobsJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        md = metadata_of(context)
        caller = self._auth.caller(md)
        status = parse_status(request.status)
        kind = parse_kind(request.kind) if request.kind else None
        page = await self._list(caller, status, kind, request)
        base_url = self._base_url(md)
        return httpbody_pb2.HttpBody(
            content_type=JSON_CONTENT_TYPE,
            data=list_json(
                [job_json(j, None, base_url, links=True) for j in page.jobs], page.next_page_token
            ),
        )

    async def _list(
        self,
        caller: Caller,
        status: Status | None,
        kind: Kind | None,
        request: jobs_pb2.ListJobsRequest | jobs_pb2.ListJobsJsonRequest,
    ) -> Page:
        """One page of the caller's jobs, after checking the page size."""
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

    # --- rendering ------------------------------------------------------------------

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

    async def _fetch(self, job: Job) -> list[bytes]:
        """Every result image's bytes (JobNotFound if they expired meanwhile)."""
        assert job.result is not None
        objects = await asyncio.gather(
            *(self._service.objects.get(i.ref.object_id) for i in job.result.images)
        )
        if any(o is None for o in objects):  # expired between the two reads
            raise JobNotFound()
        return [o.data for o in objects if o is not None]

    async def _typed(self, job: Job, md: dict[str, str]) -> jobs_pb2.Job:
        """The typed Job, its images inlined when `inlines(job)`."""
        images = await self._fetch(job) if inlines(job) else None
        return job_message(job, images, self._base_url(md))

    async def _render_json(self, job: Job, md: dict[str, str]) -> bytes:
        """The job's REST JSON; `b64_json` results inline their images."""
        images = None
        if job.result is not None and job.request.response_format == "b64_json":
            images = await self._fetch(job)
        if images is not None and sum(len(i) for i in images) > LARGE_RESULT_BYTES:
            # base64 and JSON of MBs of images is CPU work: off the event loop
            return await asyncio.to_thread(job_json, job, images, self._base_url(md))
        return job_json(job, images, self._base_url(md))

    async def _json_body(self, job: Job, md: dict[str, str]) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(
            content_type=JSON_CONTENT_TYPE, data=await self._render_json(job, md)
        )

    # --- webhooks -----------------------------------------------------------------------

    async def ListDeliveries(
        self, request: jobs_pb2.ListDeliveriesRequest, context: Context
    ) -> jobs_pb2.ListDeliveriesResponse:
        records = await self._deliveries(request, context)
        return jobs_pb2.ListDeliveriesResponse(deliveries=[delivery_message(r) for r in records])

    async def ListDeliveriesJson(
        self, request: jobs_pb2.ListDeliveriesJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        records = await self._deliveries(request, context)
        return httpbody_pb2.HttpBody(content_type="application/json", data=deliveries_json(records))

    async def _deliveries(
        self,
        request: jobs_pb2.ListDeliveriesRequest | jobs_pb2.ListDeliveriesJsonRequest,
        context: Context,
    ) -> list[DeliveryRecord]:
        caller = self._auth.caller(metadata_of(context))
        if isinstance(request, jobs_pb2.ListDeliveriesRequest):
            kind = read_kind(request.kind)
        else:
            kind = parse_kind_or_404(request.kind)
        return await self._service.webhooks.list(kind, request.job_id, caller)

    async def Redeliver(
        self, request: jobs_pb2.RedeliverRequest, context: Context
    ) -> jobs_pb2.WebhookDelivery:
        caller = self._auth.caller(metadata_of(context))
        kind = read_kind(request.kind)
        return delivery_message(
            await self._service.webhooks.redeliver(kind, request.job_id, caller)
        )
