"""`AsyncClient`: the SDK over a `grpc.aio` channel. `Client` (sync.py) runs this same
code on a private event loop.

Every answer fits gRPC's default 4 MiB receive limit, so the channel keeps it: a job whose
images the server did not inline (above 3 MiB in total, or `response_format=url`) has
them fetched here, image by image, with StreamJobImage, before `get`, `wait`, `watch` or
`generate` return it. Only `list` leaves images without bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar, Unpack

import grpc

from imagejobs.client.errors import (
    ImageStreamBroken,
    JobFailed,
    ServerUnavailable,
    WaitTimeout,
    from_rpc_error,
)
from imagejobs.client.options import (
    CHANNEL_OPTIONS,
    DEFAULT_SERVER,
    DEFAULT_TIMEOUT_S,
    MAX_POLL_S,
    RetryPolicy,
    channel_credentials,
    retryable,
)
from imagejobs.client.requests import ImageInput, image_request
from imagejobs.client.types import Image, Job, JobResult, KeyUsage, job_of, key_usage_of
from imagejobs.domain.jobs import Status
from imagejobs.domain.kinds import Kind
from imagejobs.domain.wire import kind_enum, status_enum
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
KindArg = Kind | str  # `Kind.EDIT` or its REST word, `"edits"`
StatusArg = Status | str
VK_HEADER = "x-bf-vk"
FAST_ANSWER_S = 1.0  # a long-poll answered sooner than this without the job ending: back off


def _kind(kind: KindArg | None) -> jobs_pb2.JobKind.ValueType:
    return kind_enum(Kind(kind)) if kind is not None else jobs_pb2.JOB_KIND_UNSPECIFIED


class AsyncClient:
    """A client of one imagejobs server (its gateway, `host:port`, REST and gRPC on one
    port; or an API process directly).

    :param server: `host:port`; default `localhost:8080`.
    :param key: a virtual key, sent as `x-bf-vk` on every call (jobs made with a key are
        visible only with it).
    :param tls: False for plaintext, True for TLS with the system's roots, or your own
        `grpc.ChannelCredentials` (client certificates, private roots).
    :param timeout_s: the deadline of one call in seconds (a long-poll gets its wait on
        top).
    :param metadata: extra metadata for every call, e.g. `(("x-request-id", "…"),)`.
    :param retry: how calls that failed with UNAVAILABLE or a dropped connection are
        retried (`RetryPolicy(attempts=1)`: never).
    :param channel_options: extra gRPC channel options (after the SDK's reconnect ones).
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        options = [*CHANNEL_OPTIONS, *channel_options]
        credentials = channel_credentials(tls)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(server, options)
        else:
            self._channel = grpc.aio.secure_channel(server, credentials, options)
        self._stub = jobs_pb2_grpc.ImageJobServiceStub(self._channel)
        self._metadata = (*metadata, (VK_HEADER, key)) if key else tuple(metadata)
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self.server = server

    async def close(self) -> None:
        """Close the channel (calls in flight are cancelled)."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- one call -------------------------------------------------------------------

    async def _call(self, attempt: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """Run `attempt` (one RPC), retried per the policy; gRPC errors as ClientErrors."""
        try:
            if retry:
                return await self._retry.retrying()(attempt)
            return await attempt()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    async def _unary(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        extra_s: float = 0.0,
        retry: bool = True,
    ) -> Resp:
        """One unary RPC with the client's deadline (plus `extra_s`) and metadata."""

        async def attempt() -> Resp:
            return await rpc(request, timeout=self._timeout_s + extra_s, metadata=self._metadata)

        return await self._call(attempt, retry=retry)

    # --- submit ---------------------------------------------------------------------

    async def submit(
        self,
        kind: KindArg,
        model: str,
        prompt: str | None = None,
        *,
        images: Sequence[ImageInput] = (),
        mask: ImageInput | None = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        result_ttl_s: int = 0,
        request_id: str = "",
    ) -> Job:
        """Submit a job; returns it `pending` (or, for an idempotency key already used
        with the same request, the job it made, as it is now).

        :param kind: `Kind.GENERATION`/`"generations"`, `Kind.EDIT`/`"edits"` or
            `Kind.VARIATION`/`"variations"`.
        :param model: `provider/model`, e.g. `mock/image-1`.
        :param images: edits and variations: the input images (bytes or paths).
        :param mask: edits: an optional PNG mask, transparent where the image changes.
        :param params: any other request field (`size`, `n`, `quality`, `seed`,
            `response_format`, …) or provider parameter.
        :param idempotency_key: default: a fresh UUID for this call, sent unchanged on
            every retry, so that a retried submit never makes a second job.
        :param result_ttl_s: seconds to keep the result after completion (0: the server's
            default).
        """
        request = jobs_pb2.SubmitImageJobRequest(
            kind=kind_enum(Kind(kind)),
            request=image_request(model, prompt, images=images, mask=mask, params=params),
            result_ttl_seconds=result_ttl_s,
            request_id=request_id,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        msg = await self._unary(self._stub.SubmitImageJob, request)
        return await self._complete(msg)

    # --- reads ----------------------------------------------------------------------

    async def get(self, job_id: str, *, kind: KindArg | None = None, images: bool = True) -> Job:
        """The job as it is now (a completed one with every image's bytes; with
        `images=False`, only those the server inlined). `kind`, if given, must be the
        job's (else NotFound)."""
        request = jobs_pb2.GetJobRequest(job_id=job_id, kind=_kind(kind))
        msg = await self._unary(self._stub.GetJob, request)
        return await self._complete(msg, images)

    async def wait(
        self,
        job_id: str,
        *,
        kind: KindArg | None = None,
        timeout_s: float | None = None,
        images: bool = True,
    ) -> Job:
        """The job once terminal, by server-side long-polls (no busy polling). With
        `timeout_s`, the job as it is then if it has not ended (check `job.terminal`);
        without, until it ends (the server ends every job within its own deadlines).
        `images` as in `get`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        early_answers = 0
        while True:
            remaining = MAX_POLL_S if deadline is None else deadline - time.monotonic()
            poll_s = max(0.0, min(MAX_POLL_S, remaining))
            request = jobs_pb2.GetJobRequest(job_id=job_id, kind=_kind(kind), wait=poll_s)
            started = time.monotonic()
            msg = await self._unary(self._stub.GetJob, request, extra_s=poll_s)
            if msg.status in _TERMINAL or poll_s <= 0:
                return await self._complete(msg, images)
            if time.monotonic() - started < min(FAST_ANSWER_S, poll_s):
                # answered at once without the job ending (its API is shutting down)
                early_answers += 1
                await asyncio.sleep(self._retry.backoff_s(min(early_answers, 8)))

    async def watch(
        self, job_id: str, *, kind: KindArg | None = None, images: bool = True
    ) -> AsyncIterator[Job]:
        """The job now, then each change, ending after the terminal state (with every
        image's bytes; `images` as in `get`). Re-attaches, per the retry policy, when its
        stream drops or its API process shuts down before the end."""
        request = jobs_pb2.WatchJobRequest(job_id=job_id, kind=_kind(kind))
        last: jobs_pb2.Job | None = None
        retries = 0
        while True:
            error: grpc.aio.AioRpcError | None = None
            try:
                async for msg in self._stub.WatchJob(request, metadata=self._metadata):
                    if msg == last:  # a re-attach starts with the state already seen
                        continue
                    last, retries = msg, 0
                    yield await self._complete(msg, images)
                    if msg.status in _TERMINAL:
                        return
            except grpc.aio.AioRpcError as exc:
                if not retryable(exc):
                    raise from_rpc_error(exc) from exc
                error = exc
            retries += 1  # the stream failed, or ended before the job did
            if retries >= self._retry.attempts:
                if error is not None:
                    raise from_rpc_error(error) from error
                raise ServerUnavailable.because(
                    f"the watch of job {job_id} kept ending before the job did"
                )
            await asyncio.sleep(self._retry.backoff_s(retries))

    async def image(self, job_id: str, index: int, *, kind: KindArg | None = None) -> bytes:
        """One result image's bytes, streamed in chunks (any size, default receive
        limit)."""
        request = jobs_pb2.StreamJobImageRequest(job_id=job_id, index=index, kind=_kind(kind))

        async def attempt() -> bytes:
            parts: list[bytes] = []
            size = 0
            stream = self._stub.StreamJobImage(
                request, timeout=self._timeout_s, metadata=self._metadata
            )
            async for chunk in stream:
                if chunk.offset != sum(len(p) for p in parts):
                    raise ImageStreamBroken(job_id, index, "chunks out of order")
                parts.append(chunk.data)
                size = chunk.size_bytes
            data = b"".join(parts)
            if len(data) != size:
                raise ImageStreamBroken(job_id, index, f"{len(data)} of {size} bytes")
            return data

        return await self._call(attempt)

    # --- cancel and list ------------------------------------------------------------

    async def cancel(self, job_id: str, *, kind: KindArg | None = None) -> Job:
        """Cancel a pending or processing job; returns it `cancelled`. Conflict for a job
        already terminal. Not retried (a first try may have worked)."""
        request = jobs_pb2.CancelJobRequest(job_id=job_id, kind=_kind(kind))
        msg = await self._unary(self._stub.CancelJob, request, retry=False)
        return job_of(msg)

    async def list(
        self,
        *,
        status: StatusArg | None = None,
        kind: KindArg | None = None,
        limit: int | None = None,
        page_size: int = 20,
    ) -> AsyncIterator[Job]:
        """The caller's jobs, newest first, fetched `page_size` (1-100) at a time, at most
        `limit` in all (None: every one). Their images carry no bytes (`get` a job for
        them)."""
        token = ""
        count = 0
        while limit is None or count < limit:
            size = page_size if limit is None else min(page_size, limit - count)
            request = jobs_pb2.ListJobsRequest(
                status=(
                    status_enum(Status(status))
                    if status is not None
                    else jobs_pb2.JOB_STATUS_UNSPECIFIED
                ),
                kind=_kind(kind),
                limit=size,
                page_token=token,
            )
            page = await self._unary(self._stub.ListJobs, request)
            for msg in page.jobs:
                count += 1
                yield job_of(msg)
            token = page.next_page_token
            if not token:
                return

    async def usage(self) -> KeyUsage:
        """The client's virtual key's spend in its current budget period and its queue;
        AuthenticationError without a configured key."""
        return key_usage_of(await self._unary(self._stub.GetUsage, jobs_pb2.GetUsageRequest()))

    # --- conveniences ---------------------------------------------------------------

    async def generate(self, prompt: str, *, model: str, **shaping: Unpack[Shaping]) -> JobResult:
        """Submit a generation and wait for it; its result (images with their bytes).
        JobFailed if the job failed or was cancelled, WaitTimeout after `timeout_s`."""
        job = await self.submit(Kind.GENERATION, model, prompt, params=_shaped(shaping))
        return await self._result(job, shaping.get("timeout_s"))

    async def edit(
        self,
        images: Sequence[ImageInput],
        *,
        prompt: str | None,
        model: str,
        mask: ImageInput | None = None,
        **shaping: Unpack[Shaping],
    ) -> JobResult:
        """Submit an edit of `images` (bytes or paths; the first is the base) and wait for
        it, as `generate` does."""
        params = _shaped(shaping)
        job = await self.submit(Kind.EDIT, model, prompt, images=images, mask=mask, params=params)
        return await self._result(job, shaping.get("timeout_s"))

    async def vary(self, image: ImageInput, *, model: str, **shaping: Unpack[Shaping]) -> JobResult:
        """Submit a variation of `image` and wait for it, as `generate` does."""
        params = _shaped(shaping)
        job = await self.submit(Kind.VARIATION, model, images=[image], params=params)
        return await self._result(job, shaping.get("timeout_s"))

    async def _result(self, job: Job, timeout_s: float | None) -> JobResult:
        if not job.terminal:
            job = await self.wait(job.id, timeout_s=timeout_s)
        if not job.terminal:
            raise WaitTimeout(job, timeout_s or 0.0)
        if job.result is None:
            raise JobFailed(job)
        return job.result

    async def _complete(self, msg: jobs_pb2.Job, images: bool = True) -> Job:
        """The job, with the bytes of every result image the server did not inline
        (unless not `images`)."""
        job = job_of(msg)
        if (
            not images
            or job.result is None
            or all(i.data or not i.size_bytes for i in job.result.images)
        ):
            return job
        fetched = await asyncio.gather(*(self._with_bytes(job.id, i) for i in job.result.images))
        return job.with_images(tuple(fetched))

    async def _with_bytes(self, job_id: str, image: Image) -> Image:
        if image.data or not image.size_bytes:
            return image
        return dataclasses.replace(image, data=await self.image(job_id, image.index))


class Shaping(TypedDict, total=False):
    """What `generate`, `edit` and `vary` take besides their inputs: the image `size`
    and count `n` (None: not sent), the other request `params`, and `timeout_s`, how long
    to wait for the job in seconds (None: until it ends)."""

    size: str | None
    n: int | None
    params: Mapping[str, Any] | None
    timeout_s: float | None


def _shaped(shaping: Shaping) -> dict[str, Any]:
    """The request parameters of a convenience call: `size` and `n` with the others."""
    return {"size": shaping.get("size"), "n": shaping.get("n"), **(shaping.get("params") or {})}


_TERMINAL = frozenset(status_enum(s) for s in Status if s.terminal)
