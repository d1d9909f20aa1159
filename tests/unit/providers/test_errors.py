"""`upstream.error_from_response` with each vendor's parser: the upstream's error details
that must survive into the ProviderError — AWS error names (Bedrock's `x-amzn-ErrorType`,
read by `bedrock.parse_error`) as type/code, Google's `RetryInfo.retryDelay` (read by
`google_common.parse_error`) as the retry delay — on real httpx responses."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from imagejobs.domain.errors import ProviderError
from imagejobs.providers import bedrock, google_common
from imagejobs.providers.upstream import ErrorParser, parse_error
from imagejobs.providers.upstream import error_from_response as generic_error

PARSERS: dict[str, ErrorParser] = {
    "bedrock": bedrock.parse_error,
    "gemini": google_common.parse_error,
    "openai": parse_error,
}


def error_from_response(response: httpx.Response, provider: str) -> ProviderError:
    """The error as `provider`'s adapter reads it."""
    return generic_error(response, provider, parse=PARSERS[provider])


NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"


def response(
    status: int, body: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1/upstream")
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def google_body(status: int, grpc_status: str, details: list[Any]) -> dict[str, Any]:
    return {
        "error": {"code": status, "message": "quota", "status": grpc_status, "details": details}
    }


def retry_info(delay: Any) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


# --- AWS error names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name", "etype", "retryable"),
    [
        (429, "ThrottlingException", "rate_limit_error", True),
        (400, "ValidationException", "invalid_request_error", False),
        (403, "AccessDeniedException", "permission_error", False),
        (403, "UnrecognizedClientException", "authentication_error", False),
        (404, "ResourceNotFoundException", "not_found_error", False),
        (408, "ModelTimeoutException", "timeout_error", True),
        (503, "ServiceUnavailableException", "api_error", True),
        (424, "SomeFutureException", "upstream_error", False),  # unknown name: default type
    ],
)
def test_amzn_error_type_header_becomes_code_and_type(
    status: int, name: str, etype: str, retryable: bool
) -> None:
    err = error_from_response(
        response(status, {"message": "m"}, {"x-amzn-ErrorType": f"{name}:{NAMESPACE}"}),
        "bedrock",
    )
    assert (err.status_code, err.type, err.code, err.message) == (status, etype, name, "m")
    assert err.retryable is retryable
    assert err.retry_after is None


def test_amzn_error_type_without_namespace_suffix() -> None:
    err = error_from_response(
        response(429, {"message": "slow down"}, {"x-amzn-ErrorType": "ThrottlingException"}),
        "bedrock",
    )
    assert (err.type, err.code) == ("rate_limit_error", "ThrottlingException")


def test_aws_body_type_and_capitalised_message() -> None:
    body = {"__type": "com.amazon.coral.service#ExpiredTokenException", "Message": "expired"}
    err = error_from_response(response(403, body), "bedrock")
    assert (err.type, err.code, err.message) == (
        "authentication_error",
        "ExpiredTokenException",
        "expired",
    )


def test_amzn_header_wins_over_body_type() -> None:
    body = {"__type": "com.amazon.coral.service#InternalFailure", "message": "m"}
    headers = {"x-amzn-ErrorType": f"ValidationException:{NAMESPACE}"}
    err = error_from_response(response(400, body, headers), "bedrock")
    assert err.code == "ValidationException"


def test_amzn_header_on_a_body_without_json() -> None:
    headers = {"x-amzn-ErrorType": f"ServiceUnavailableException:{NAMESPACE}"}
    err = error_from_response(response(503, None, headers), "bedrock")
    assert (err.type, err.code, err.message) == (
        "api_error",
        "ServiceUnavailableException",
        "bedrock returned HTTP 503",
    )


def test_amzn_header_and_retry_after_together() -> None:
    headers = {"x-amzn-ErrorType": f"ThrottlingException:{NAMESPACE}", "Retry-After": "3"}
    err = error_from_response(response(429, {"message": "m"}, headers), "bedrock")
    assert (err.code, err.retry_after) == ("ThrottlingException", 3.0)


def test_responses_without_aws_names_are_unchanged() -> None:
    body = {"error": {"message": "bad size", "type": "invalid_request_error", "code": "x"}}
    err = error_from_response(response(400, body), "openai")
    assert (err.type, err.code, err.message) == ("invalid_request_error", "x", "bad size")


# --- Google RetryInfo -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "seconds"), [("2s", 2.0), ("1.5s", 1.5), ("0.250s", 0.25), ("37s", 37.0)]
)
def test_google_retry_info_delay_becomes_retry_after(delay: str, seconds: float) -> None:
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        retry_info(delay),
    ]
    err = error_from_response(
        response(429, google_body(429, "RESOURCE_EXHAUSTED", details)), "gemini"
    )
    assert err.retry_after == seconds
    assert (err.status_code, err.retryable) == (429, True)


def test_retry_after_header_wins_over_retry_info() -> None:
    body = google_body(429, "RESOURCE_EXHAUSTED", [retry_info("30s")])
    err = error_from_response(response(429, body, {"Retry-After": "4"}), "gemini")
    assert err.retry_after == 4.0


@pytest.mark.parametrize(
    "details",
    [
        [],
        [{"@type": "type.googleapis.com/google.rpc.Help", "retryDelay": "5s"}],  # not RetryInfo
        [retry_info("soon")],
        [retry_info(5)],
        [retry_info("-1s")],
        "not a list",
        ["not an object"],
    ],
)
def test_unusable_retry_info_is_ignored(details: Any) -> None:
    err = error_from_response(
        response(429, google_body(429, "RESOURCE_EXHAUSTED", details)), "gemini"
    )
    assert err.retry_after is None
    assert err.message == "quota"
