"""The SDK's errors: one branch of the package's tree, each carrying the contract's
error body.

    ImageJobsError
    └── ClientError            a call failed; `.error` is the contract's ErrorResponse
        ├── ServerUnavailable  UNAVAILABLE after the retries, or no connection at all
        ├── AuthenticationError the key was refused (missing, unknown or invalid)
        ├── PermissionDenied   the key may not do this (e.g. a model it is not allowed)
        ├── InvalidArgument    the request is invalid (400) or too large (413)
        ├── NotFound           no such job, another caller's, another kind's, or expired
        ├── Conflict           not cancellable (terminal), or an idempotency key reused
        ├── RateLimited        429: a key's rate or concurrency, or the queue is full
        ├── DeadlineExceeded   the call's deadline passed
        ├── ImageStreamBroken  an image's chunks did not add up
        ├── JobFailed          the job ended `failed` or `cancelled` (generate/edit/vary)
        └── WaitTimeout        the job did not end within the wait's timeout

gRPC errors are translated once, here (`from_rpc_error`): the server's `google.rpc.Status`
detail (`imagejobs.v1.ErrorResponse`) becomes `.error`; a failure that never reached our
server (a refused connection, a dropped stream) gets a body made from its gRPC status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from google.rpc import status_pb2

from imagejobs.domain.errors import ErrorBody, ErrorCode, ErrorType, ImageJobsError
from imagejobs.v1 import jobs_pb2

if TYPE_CHECKING:
    from imagejobs.client.types import Job

DETAILS_KEY = "grpc-status-details-bin"
KEY_REFUSED_CODES = frozenset(
    {ErrorCode.INVALID_VIRTUAL_KEY, ErrorCode.MISSING_VIRTUAL_KEY, ErrorCode.INVALID_API_KEY}
)


class ClientError(ImageJobsError):
    """A call failed. `error` is the contract's error body (`status_code`, `type`, `code`,
    `message`, `param`, `event_id`); `grpc_code` the call's gRPC status code."""

    def __init__(self, error: ErrorBody, grpc_code: grpc.StatusCode | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.grpc_code = grpc_code

    @property
    def status_code(self) -> int:
        return self.error.status_code

    @property
    def type(self) -> str:
        return self.error.type

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def message(self) -> str:
        return self.error.message

    @property
    def param(self) -> str:
        return self.error.param


class ServerUnavailable(ClientError):
    """The server could not be reached, or kept answering UNAVAILABLE through every retry."""

    @classmethod
    def because(cls, message: str) -> ServerUnavailable:
        """One the SDK concludes itself (no call failed with it)."""
        body = ErrorBody(503, ErrorType.SERVICE_UNAVAILABLE, ErrorCode.UNAVAILABLE, message)
        return cls(body, grpc.StatusCode.UNAVAILABLE)


class AuthenticationError(ClientError):
    """The server refused the key: none given where one is required, or an unknown one."""


class PermissionDenied(ClientError):
    """The key may not do this (e.g. use that model)."""


class InvalidArgument(ClientError):
    """The request is invalid (HTTP 400) or too large (413); `param` names the field."""


class NotFound(ClientError):
    """No such job for this caller (unknown, expired, another caller's or kind's)."""


class Conflict(ClientError):
    """The job is already terminal (cancel), or an idempotency key was reused with a
    different request."""


class RateLimited(ClientError):
    """HTTP 429: the key's rate or concurrency limit, or a full queue. `retry_after_s` is
    the server's advice, when it gave one."""

    def __init__(
        self,
        error: ErrorBody,
        grpc_code: grpc.StatusCode | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(error, grpc_code)
        self.retry_after_s = retry_after_s


class BudgetExceeded(ClientError):
    """HTTP 402: the submit would pass the virtual key's budget for its period (the
    message says when it resets). Not retried: waiting seconds does not help."""


class DeadlineExceeded(ClientError):
    """The call did not finish within its timeout."""


class JobFailed(ClientError):
    """The job ended `failed` or `cancelled`; `job` is the terminal job and `error` its
    error (the provider's status in `status_code`)."""

    def __init__(self, job: Job) -> None:
        assert job.error is not None
        super().__init__(job.error)
        self.job = job


class ImageStreamBroken(ClientError):
    """StreamJobImage's chunks did not add up to the image (out of order, or short)."""

    def __init__(self, job_id: str, index: int, why: str) -> None:
        message = f"job {job_id} image {index}: {why}"
        super().__init__(ErrorBody(502, ErrorType.API, "bad_image_stream", message))


class WaitTimeout(ClientError):
    """The job was not terminal when the wait's timeout passed; `job` is how it was."""

    def __init__(self, job: Job, timeout_s: float) -> None:
        super().__init__(
            ErrorBody(
                status_code=504,
                type=ErrorType.TIMEOUT,
                code="wait_timeout",
                message=f"job {job.id} is still {job.status} after {timeout_s:g} s",
            )
        )
        self.job = job


# gRPC code -> (the HTTP status the server maps it from, our class)
_BY_CODE: dict[grpc.StatusCode, tuple[int, type[ClientError]]] = {
    grpc.StatusCode.UNAVAILABLE: (503, ServerUnavailable),
    grpc.StatusCode.UNAUTHENTICATED: (401, AuthenticationError),
    grpc.StatusCode.PERMISSION_DENIED: (403, PermissionDenied),
    grpc.StatusCode.INVALID_ARGUMENT: (400, InvalidArgument),
    grpc.StatusCode.NOT_FOUND: (404, NotFound),
    grpc.StatusCode.FAILED_PRECONDITION: (409, Conflict),
    grpc.StatusCode.ALREADY_EXISTS: (409, Conflict),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, RateLimited),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, DeadlineExceeded),
}


def error_body(msg: jobs_pb2.ErrorResponse) -> ErrorBody:
    """The `ErrorResponse` message as the contract's `ErrorBody`."""
    return ErrorBody(
        status_code=msg.status_code,
        type=msg.type,
        code=msg.error.code,
        message=msg.error.message,
        param=msg.error.param,
        event_id=msg.event_id,
        provider=msg.extra_fields.provider,
        model=msg.extra_fields.model_requested,
        request_type=msg.extra_fields.request_type,
    )


def _trailer(exc: grpc.aio.AioRpcError, name: str) -> str | bytes | None:
    for key, value in exc.trailing_metadata() or ():
        if key == name:
            return value
    return None


def server_detail(exc: grpc.aio.AioRpcError) -> jobs_pb2.ErrorResponse | None:
    """Our server's error body from the call's `google.rpc.Status` detail, if it sent one
    (a failure in transport, or from a proxy, has none)."""
    raw = _trailer(exc, DETAILS_KEY)
    if not isinstance(raw, bytes):
        return None
    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        body = jobs_pb2.ErrorResponse()
        if detail.Unpack(body):
            return body
    return None


def _seconds(value: str | bytes | None) -> float | None:
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def from_rpc_error(exc: grpc.aio.AioRpcError) -> ClientError:
    """The SDK error for a failed call."""
    code = exc.code()
    http_status, cls = _BY_CODE.get(code, (500, ClientError))
    detail = server_detail(exc)
    if detail is not None:
        body = error_body(detail)
    else:
        details = exc.details()
        body = ErrorBody(
            status_code=http_status,
            type=ErrorType.SERVICE_UNAVAILABLE if http_status == 503 else ErrorType.API,
            code=code.name.lower(),
            message=details or code.name.lower(),
        )
    if body.code in KEY_REFUSED_CODES:
        cls = AuthenticationError  # an unknown virtual key is a 400 on the wire
    if body.code == ErrorCode.BUDGET_EXCEEDED:
        cls = BudgetExceeded  # RESOURCE_EXHAUSTED, as rate limits, but 402 and for good
    if cls is RateLimited:
        return RateLimited(body, code, retry_after_s=_seconds(_trailer(exc, "retry-after")))
    return cls(body, code)
