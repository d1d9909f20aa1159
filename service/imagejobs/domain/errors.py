"""The error tree: one root, every error the service raises under it.

    ImageJobsError
    ├── ConfigError                 bad settings; the process refuses to start
    ├── InvalidTransition           a job state change the transition table forbids (a bug)
    ├── StoreError                  JetStream trouble (translated once, in store/jetstream.py)
    │   ├── RevisionConflict        a compare-and-set write lost the race
    │   └── StoreUnavailable        the job engine cannot be reached (-> 503 Unavailable)
    ├── FetchError                  a caller-given URL could not be fetched (safefetch.py)
    ├── ProviderError               a provider call failed; ends the job `failed`
    │   ├── UnsupportedOperation    the provider has no such operation (400)
    │   ├── ProviderNotConfigured   no settings or no key for the provider (400)
    │   └── BadUpstreamResponse     a 2xx answer we cannot use (502)
    └── ApiError                    what a caller sees: 500 api_error (anything unexpected)
        ├── InvalidRequest          400 invalid_request_error
        ├── Unauthenticated         401 authentication_error
        ├── Forbidden               403 permission_error
        ├── JobNotFound             404 "job not found or expired"
        ├── JobConflict             409 conflict_error
        │   └── IdempotencyConflict 409 (gRPC ALREADY_EXISTS)
        ├── PayloadTooLarge         413 invalid_request_error
        ├── BudgetExceeded          402 budget_exceeded (the key's spend limit)
        ├── RateLimited             429 rate_limit_error (+ Retry-After)
        │   └── QueueFull           429 queue_full
        └── Unavailable             503 service_unavailable (+ Retry-After)

An `ApiError` carries its HTTP status, gRPC code and the contract's error `type`; its
`body()` is the contract's error body (`ErrorBody`), which the API's interceptor sends as
the `google.rpc.Status` detail and Envoy prints as the REST body. The same `ErrorBody`
is a failed job's `error` and the body of the errors Envoy makes itself (gateway/), so the
contract's error shape is written down once, here.

Error `type`s and our own error `code`s are the enums `ErrorType` and `ErrorCode`.
`ProviderError.code` may also be a vendor's own code (`content_policy_violation`,
`RESOURCE_EXHAUSTED`), passed through as the text the vendor sent.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any, TypedDict

import grpc

from imagejobs.domain.kinds import Kind


class ErrorType(enum.StrEnum):
    """The contract's error `type` values."""

    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    PERMISSION = "permission_error"
    NOT_FOUND = "not_found_error"
    CONFLICT = "conflict_error"
    RATE_LIMIT = "rate_limit_error"
    API = "api_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    UPSTREAM = "upstream_error"
    TIMEOUT = "timeout_error"
    CONNECTION = "connection_error"
    CANCELLED = "cancelled"
    SERVER = "server_error"  # the mock's scripted 5xx, as vendors name theirs
    BUDGET = "budget_exceeded"  # a virtual key's spend limit (402), as the gateway names it


class ErrorCode(enum.StrEnum):
    """Our own error `code` values (vendors' codes pass through as their text)."""

    # the API's answers
    INVALID_REQUEST = "invalid_request"
    REQUEST_TOO_LARGE = "request_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    INVALID_API_KEY = "invalid_api_key"
    MISSING_VIRTUAL_KEY = "missing_virtual_key"
    INVALID_VIRTUAL_KEY = "invalid_virtual_key"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    MODEL_RETIRED = "model_retired"  # the catalogue says the vendor no longer serves it
    JOB_NOT_FOUND = "job_not_found"
    CONFLICT = "conflict"
    JOB_NOT_CANCELLABLE = "job_not_cancellable"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_JOB_EXPIRED = "idempotency_job_expired"
    RATE_LIMITED = "rate_limited"
    CONCURRENCY_LIMITED = "concurrency_limited"
    QUEUE_FULL = "queue_full"
    BUDGET_EXCEEDED = "budget_exceeded"  # the key's budget for this period is used up
    MODEL_NOT_PRICED = "model_not_priced"  # a key with a budget names a model with no price
    UNAVAILABLE = "unavailable"
    INTERNAL_ERROR = "internal_error"
    GATEWAY_ERROR = "gateway_error"
    # a job's end
    CANCELLED = "cancelled"
    JOB_EXPIRED = "job_expired"
    JOB_TIMEOUT = "job_timeout"
    MAX_DELIVERIES_EXCEEDED = "max_deliveries_exceeded"
    # providers
    UNSUPPORTED_OPERATION = "unsupported_operation"
    PROVIDER_NOT_CONFIGURED = "provider_not_configured"
    INVALID_UPSTREAM_RESPONSE = "invalid_upstream_response"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    RESULT_TOO_LARGE = "result_too_large"
    CONTENT_FILTERED = "content_filtered"
    NO_OUTPUT = "no_output"
    NO_IMAGE = "no_image"
    UNSUPPORTED_MODEL = "unsupported_model"
    INVALID_MODEL = "invalid_model"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_NOT_MAPPED = "model_not_mapped"  # the HF Hub maps the repo to no such provider
    UNSUPPORTED_EDIT_TYPE = "unsupported_edit_type"
    MISSING_IMAGE = "missing_image"
    MISSING_MASK = "missing_mask"
    MASK_REQUIRED = "mask_required"
    INVALID_MASK = "invalid_mask"
    INVALID_VALUE = "invalid_value"
    INVALID_INPUT_IMAGE = "invalid_input_image"
    INVALID_CREDENTIALS = "invalid_credentials"
    TOKEN_REFRESH_FAILED = "token_refresh_failed"
    TASK_FAILED = "task_failed"
    TASK_NOT_FOUND = "task_not_found"
    PREDICTION_ABORTED = "prediction_aborted"
    MOCK_FAILURE = "mock_failure"
    CONTENT_FILTER = "content_filter"  # gemini/vertex's name for CONTENT_FILTERED, kept
    PREDICTION_FAILED = "prediction_failed"
    PREDICTION_CANCELED = "prediction_canceled"
    IMAGE_REQUIRED = "image_required"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"
    INVALID_OUTPUT_FORMAT = "invalid_output_format"
    INVALID_SIZE = "invalid_size"
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
    # caller-given URLs (safefetch.py)
    INPUT_URL_FORBIDDEN = "input_url_forbidden"
    INPUT_URL_INVALID = "input_url_invalid"
    INPUT_URL_UNREACHABLE = "input_url_unreachable"
    INPUT_URL_TIMEOUT = "input_url_timeout"
    INPUT_URL_TOO_LARGE = "input_url_too_large"
    INPUT_URL_TOO_MANY_REDIRECTS = "input_url_too_many_redirects"
    INPUT_URL_BAD_STATUS = "input_url_bad_status"
    # webhooks
    WEBHOOK_NOT_FOUND = "webhook_not_found"
    WEBHOOK_DISABLED = "webhook_disabled"
    DELIVERY_IN_PROGRESS = "delivery_in_progress"
    NO_WEBHOOK_DELIVERY = "no_webhook_delivery"


class ErrorContext(TypedDict, total=False):
    """What a request was about, for the error body's `extra_fields`."""

    provider: str
    model: str
    request_type: str


def new_event_id() -> str:
    """A fresh error event id (a UUIDv4)."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class ErrorBody:
    """The contract's error body:

        {"event_id", "type", "is_bifrost_error": true, "status_code",
         "error": {"type", "code", "message", "param", "event_id"},
         "extra_fields": {"provider", "model_requested", "request_type"}}

    `extra_fields` is present only when one of its values is known."""

    status_code: int
    type: str
    code: str
    message: str
    param: str = ""
    event_id: str = ""
    provider: str = ""
    model: str = ""  # printed as extra_fields.model_requested
    request_type: str = ""

    @property
    def has_extra_fields(self) -> bool:
        return bool(self.provider or self.model or self.request_type)

    def to_dict(self) -> dict[str, Any]:
        """The body as JSON-ready data, exactly as protobuf's JSON mapping prints the
        `ErrorResponse` message (its field order; empty strings left out), so that every
        error body looks the same whoever renders it: the API, Envoy's transcoder, or
        Envoy's own local replies."""
        error = {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "is_bifrost_error": True,
            "status_code": self.status_code,
            "error": {k: v for k, v in error.items() if v},
        }
        if self.has_extra_fields:
            extra = {
                "provider": self.provider,
                "model_requested": self.model,
                "request_type": self.request_type,
            }
            out["extra_fields"] = {k: v for k, v in extra.items() if v}
        return {k: v for k, v in out.items() if v != ""}


class ImageJobsError(Exception):
    """The root of every error this package raises."""


class ConfigError(ImageJobsError):
    """The configuration is invalid; the message says what and where."""


class InvalidTransition(ImageJobsError):
    """A state change the job state machine does not allow (domain/jobs.py)."""


class StoreError(ImageJobsError):
    """A JetStream operation failed."""


class RevisionConflict(StoreError):
    """A compare-and-set write was rejected: someone else wrote the key first."""


class StoreUnavailable(StoreError):
    """JetStream did not answer (no leader, no connection, timeout)."""


class FetchError(ImageJobsError):
    """A caller-given URL could not be fetched; `code` says why (`INPUT_URL_*`)."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProviderError(ImageJobsError):
    """The provider failed this request.

    `status_code` is the upstream HTTP status (None when no response came: timeouts,
    connection errors). `retryable` says whether the same call may succeed later;
    `retry_after` is the upstream's `Retry-After` in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.code = code
        self.param = param
        self.retryable = retryable
        self.retry_after = retry_after


class UnsupportedOperation(ProviderError):
    """The provider has no such operation (e.g. xai edits); the job fails with 400."""

    def __init__(self, provider: str, kind: Kind) -> None:
        super().__init__(
            f"provider {provider} does not support {kind.request_type}",
            status_code=400,
            type=ErrorType.INVALID_REQUEST,
            code=ErrorCode.UNSUPPORTED_OPERATION,
        )


class ProviderNotConfigured(ProviderError):
    """No configuration (or no key) for the requested provider; the job fails with 400."""

    def __init__(self, provider: str) -> None:
        super().__init__(
            f"provider {provider} is not configured",
            status_code=400,
            type=ErrorType.INVALID_REQUEST,
            code=ErrorCode.PROVIDER_NOT_CONFIGURED,
        )


class BadUpstreamResponse(ProviderError):
    """A 2xx answer we cannot use (not JSON, no images, undecodable data): 502."""

    def __init__(self, provider: str, why: str) -> None:
        super().__init__(
            f"{provider} returned an unusable response: {why}",
            status_code=502,
            type=ErrorType.UPSTREAM,
            code=ErrorCode.INVALID_UPSTREAM_RESPONSE,
        )


class ApiError(ImageJobsError):
    """An error with a place on the wire. Subclasses fix status, code and type."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    error_type = ErrorType.API
    default_code = ErrorCode.INTERNAL_ERROR

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

    def body(self, event_id: str | None = None) -> ErrorBody:
        """The contract's error body for this error (a fresh event id unless given)."""
        return ErrorBody(
            status_code=self.http_status,
            type=self.error_type,
            code=self.code,
            message=self.message,
            param=self.param,
            event_id=event_id or new_event_id(),
            provider=self.provider,
            model=self.model,
            request_type=self.request_type,
        )


class InvalidRequest(ApiError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = ErrorType.INVALID_REQUEST
    default_code = ErrorCode.INVALID_REQUEST


class Unauthenticated(ApiError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    error_type = ErrorType.AUTHENTICATION
    default_code = ErrorCode.INVALID_API_KEY


class Forbidden(ApiError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    error_type = ErrorType.PERMISSION
    default_code = ErrorCode.MODEL_NOT_ALLOWED


class JobNotFound(ApiError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    error_type = ErrorType.INVALID_REQUEST
    default_code = ErrorCode.JOB_NOT_FOUND

    def __init__(self) -> None:
        super().__init__("job not found or expired")


class JobConflict(ApiError):
    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = ErrorType.CONFLICT
    default_code = ErrorCode.CONFLICT


class IdempotencyConflict(JobConflict):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    default_code = ErrorCode.IDEMPOTENCY_KEY_REUSED


class PayloadTooLarge(ApiError):
    http_status = 413
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = ErrorType.INVALID_REQUEST
    default_code = ErrorCode.REQUEST_TOO_LARGE


class RateLimited(ApiError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = ErrorType.RATE_LIMIT
    default_code = ErrorCode.RATE_LIMITED


class QueueFull(RateLimited):
    default_code = ErrorCode.QUEUE_FULL


class BudgetExceeded(ApiError):
    """402: the submit's reservation would pass its virtual key's budget for the period
    (the message says which period and when it starts over). gRPC RESOURCE_EXHAUSTED, as
    for other quotas; not retried by clients, since waiting seconds does not help."""

    http_status = 402
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = ErrorType.BUDGET
    default_code = ErrorCode.BUDGET_EXCEEDED


class Unavailable(ApiError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = ErrorType.SERVICE_UNAVAILABLE
    default_code = ErrorCode.UNAVAILABLE
