"""The one place errors meet the wire: a server interceptor that turns `ApiError`s into a
gRPC status carrying the contract's error body as a `google.rpc.Status` detail (Envoy
prints that detail as the REST body and takes the HTTP status from it), and anything
unexpected into a generic 500 whose text reveals nothing. It also makes each unary call
of ours a trace span (runtime/tracing.py), a child of the caller's `traceparent`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2
from opentelemetry.trace import SpanKind

from imagejobs.api.fields import metadata_of
from imagejobs.api.render import error_proto
from imagejobs.domain.errors import ApiError, StoreUnavailable, Unavailable
from imagejobs.domain.wire import kind_of
from imagejobs.runtime import logs, metrics, tracing
from imagejobs.v1 import jobs_pb2

_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["ImageJobService"].full_name
SUBMIT_METHODS = frozenset({f"/{_SERVICE}/SubmitImageJob", f"/{_SERVICE}/SubmitImageJobJson"})
OUR_SERVICE_PREFIX = f"/{_SERVICE}/"

log = logging.getLogger(__name__)


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[Any, ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing


def to_status(error: ApiError) -> grpc.Status:
    body = error_proto(error.body())
    detail = any_pb2.Any()
    detail.Pack(body)
    status = status_pb2.Status(
        code=error.grpc_code.value[0], message=error.message, details=[detail]
    )
    trailing: list[tuple[str, str | bytes]] = [
        ("grpc-status-details-bin", status.SerializeToString()),
        ("x-http-status", str(error.http_status)),
    ]
    if error.retry_after_s is not None:
        trailing.append(("retry-after", str(error.retry_after_s)))
    return _Status(error.grpc_code, error.message, tuple(trailing))


def as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StoreUnavailable):
        return Unavailable("the job engine is unavailable; retry later", retry_after_s=2)
    log.exception("unexpected error", exc_info=exc)
    return ApiError("internal server error")


def _submitted_kind(request: Any) -> str:
    """A submit's kind as text: REST's path segment, or the typed submit's JobKind."""
    if isinstance(request.kind, str):
        return request.kind
    try:
        kind = kind_of(request.kind)
    except ValueError:
        return ""
    return kind.value if kind is not None else ""


def _count_submit(request: Any, result: str) -> None:
    metrics.submitted(_submitted_kind(request), result)


def _no_count(request: Any, result: str) -> None:
    pass


async def _answer(
    inner: Callable[[Any, Any], Awaitable[Any]],
    request: Any,
    context: Any,
    count: Callable[[Any, str], None],
) -> Any:
    """The handler's answer, its error sent as our status, the submit counted."""
    try:
        response = await inner(request, context)
    except grpc.aio.AbortError:
        count(request, "aborted")
        raise
    except asyncio.CancelledError:  # the caller went away
        count(request, "cancelled")
        raise
    except Exception as exc:
        error = as_api_error(exc)
        count(request, error.code)
        await context.abort_with_status(to_status(error))
    count(request, "accepted")
    return response


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary handler and our server-streaming ones (health's Watch and
    reflection pass through unchanged), and counts submits by kind and result in the
    metrics."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary
            method = str(handler_call_details.method)
            count = _count_submit if method in SUBMIT_METHODS else _no_count
            traced = method.startswith(OUR_SERVICE_PREFIX)

            async def unary(request: Any, context: Any) -> Any:
                if not traced:  # health checks, reflection
                    return await _answer(inner, request, context, count)
                with (
                    logs.about(),  # the job's log fields, once known, for this call only
                    tracing.span(
                        method.lstrip("/"), parent=metadata_of(context), kind=SpanKind.SERVER
                    ),
                ):
                    return await _answer(inner, request, context, count)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and handler_call_details.method.startswith(
            OUR_SERVICE_PREFIX
        ):
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await context.abort_with_status(to_status(as_api_error(exc)))

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
