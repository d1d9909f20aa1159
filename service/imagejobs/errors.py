"""The error tree. Every error a client can see is an `ApiError` subclass that carries its
HTTP status, its gRPC code and the contract's error `type`; `to_error_response()` turns one
into the contract's error body, which the servicer's interceptor sends as the
`google.rpc.Status` detail (and Envoy prints as the REST body).

    Exception
    ├── ConfigError                 bad settings; the process refuses to start
    ├── StoreError                  JetStream trouble (translated in store/queue/objects)
    │   ├── RevisionConflict        a compare-and-set write lost the race
    │   └── StoreUnavailable        the job engine cannot be reached (-> 503 Unavailable)
    └── ApiError                    500 api_error (anything unexpected becomes this)
        ├── InvalidRequest          400 invalid_request_error
        ├── Unauthenticated         401 authentication_error
        ├── Forbidden               403 permission_error
        ├── JobNotFound             404 "job not found or expired"
        ├── JobConflict             409 conflict_error
        ├── PayloadTooLarge         413 invalid_request_error
        ├── RateLimited             429 rate_limit_error (+ Retry-After)
        ├── QueueFull               429 rate_limit_error (+ Retry-After)
        └── Unavailable             503 service_unavailable (+ Retry-After)
"""

from __future__ import annotations

import uuid
from typing import TypedDict

import grpc

from imagejobs.v1 import jobs_pb2


class ErrorContext(TypedDict, total=False):
    """What a request was about, for the error body's `extra_fields`."""

    provider: str
    model: str
    request_type: str


class ConfigError(Exception):
    """The configuration is invalid; the message says what and where."""


class StoreError(Exception):
    """A JetStream operation failed."""


class RevisionConflict(StoreError):
    """A compare-and-set write was rejected: someone else wrote the key first."""


class StoreUnavailable(StoreError):
    """JetStream did not answer (no leader, no connection, timeout)."""


class ApiError(Exception):
    """An error with a place on the wire. Subclasses fix status, code and type."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    error_type = "api_error"
    default_code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        provider: str = "",
        model: str = "",
        request_type: str = "",
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param or ""
        self.provider = provider
        self.model = model
        self.request_type = request_type
        self.retry_after_s = retry_after_s

    def to_error_response(self) -> jobs_pb2.ErrorResponse:
        """The contract's error body for this error, with a fresh event id."""
        return error_response(
            status_code=self.http_status,
            type=self.error_type,
            code=self.code,
            message=self.message,
            param=self.param,
            provider=self.provider,
            model=self.model,
            request_type=self.request_type,
        )


class InvalidRequest(ApiError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class Unauthenticated(ApiError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(ApiError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    error_type = "permission_error"
    default_code = "model_not_allowed"


class JobNotFound(ApiError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    error_type = "invalid_request_error"
    default_code = "job_not_found"

    def __init__(self) -> None:
        super().__init__("job not found or expired")


class JobConflict(ApiError):
    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "conflict_error"
    default_code = "conflict"


class IdempotencyConflict(JobConflict):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    default_code = "idempotency_key_reused"


class PayloadTooLarge(ApiError):
    http_status = 413
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(ApiError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = "rate_limit_error"
    default_code = "rate_limited"


class QueueFull(RateLimited):
    default_code = "queue_full"


class Unavailable(ApiError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = "service_unavailable"
    default_code = "unavailable"


def error_response(
    *,
    status_code: int,
    type: str,
    code: str,
    message: str,
    param: str = "",
    provider: str = "",
    model: str = "",
    request_type: str = "",
) -> jobs_pb2.ErrorResponse:
    """The contract's error body (also used inside failed jobs)."""
    event_id = str(uuid.uuid4())
    extra = None
    if provider or model or request_type:
        extra = jobs_pb2.ErrorExtraFields(
            provider=provider, model_requested=model, request_type=request_type
        )
    return jobs_pb2.ErrorResponse(
        event_id=event_id,
        type=type,
        is_bifrost_error=True,
        status_code=status_code,
        error=jobs_pb2.ErrorDetail(
            type=type, code=code, message=message, param=param, event_id=event_id
        ),
        extra_fields=extra,
    )
