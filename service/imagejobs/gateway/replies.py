"""The errors Envoy answers itself, in the contract's error body.

The body's shape is written down once, as `domain.errors.ErrorBody`; everything here is
made from `ErrorBody.to_dict()`:

- the local-reply mappers (Envoy's own replies: unknown route, body too large, backend
  down, headers refused by rest.lua, ...), whose `json_format` is the body with an Envoy
  command operator (`%STREAM_ID%`) as the event id;
- the two bodies rest.lua fills in when a transcoded gRPC error comes without our typed
  detail (which cannot happen unless the API breaks its own contract): compact JSON with
  `@STATUS_CODE@`, `@MESSAGE@` and `@EVENT_ID@` placeholders, passed to Lua as route
  metadata (bootstrap.py) rather than written into its source.
"""

from __future__ import annotations

import json
from typing import Any

from imagejobs.domain.errors import ErrorBody, ErrorCode, ErrorType

# Envoy's own local replies, for REST callers only (gRPC callers get grpc-status):
# HTTP status -> (the body's type, its message).
LOCAL_REPLY_STATUSES: dict[int, tuple[ErrorType, str]] = {
    400: (ErrorType.INVALID_REQUEST, "invalid request format"),
    404: (ErrorType.INVALID_REQUEST, "route not found"),
    405: (ErrorType.INVALID_REQUEST, "method not allowed"),
    408: (ErrorType.INVALID_REQUEST, "request timeout"),
    413: (ErrorType.INVALID_REQUEST, "request body too large"),
    431: (ErrorType.INVALID_REQUEST, "request headers too large"),
    429: (ErrorType.RATE_LIMIT, "too many requests"),
    500: (ErrorType.API, "internal gateway error"),
    502: (ErrorType.API, "bad gateway"),
    503: (ErrorType.SERVICE_UNAVAILABLE, "the API is unavailable; retry later"),
    504: (ErrorType.API, "gateway timeout"),
}
# the code of each status's body; GATEWAY_ERROR for the rest
LOCAL_REPLY_CODES = {413: ErrorCode.REQUEST_TOO_LARGE, 431: ErrorCode.HEADERS_TOO_LARGE}

# Replies Envoy's HTTP/1 codec makes before any filter has run (malformed request, header
# block beyond the codec's own limits): no REST mark exists yet, and such a request can
# never be gRPC (which needs HTTP/2), so these statuses get the error body unconditionally.
CODEC_REPLY_STATUSES = (400, 431)
# A REST reply's event id is Envoy's stream id. A codec reply has no stream: its event id
# is the start time (µs) and the connection number.
STREAM_EVENT_ID = "%STREAM_ID%"
CODEC_EVENT_ID = "%START_TIME(%s%6f)%-%CONNECTION_ID%"

# rest.lua marks REST requests with this dynamic metadata (namespace, key)
REST_MARK = ("imagejobs", "rest")


def local_reply_body(status: int, event_id: str) -> dict[str, Any]:
    """The error body of Envoy's own reply with HTTP `status` (a key of
    LOCAL_REPLY_STATUSES), as a `json_format` whose event id is `event_id`."""
    etype, message = LOCAL_REPLY_STATUSES[status]
    code = LOCAL_REPLY_CODES.get(status, ErrorCode.GATEWAY_ERROR)
    body = ErrorBody(status_code=status, type=etype, code=code, message=message, event_id=event_id)
    return body.to_dict()


def _status_is(status: int) -> dict[str, Any]:
    # runtime_key is required by Envoy's schema; nothing sets it at run time
    value = {"default_value": status, "runtime_key": f"rs_{status}"}
    return {"status_code_filter": {"comparison": {"op": "EQ", "value": value}}}


def _is_rest() -> dict[str, Any]:
    namespace, key = REST_MARK
    return {
        "metadata_filter": {
            "match_if_key_not_found": False,
            "matcher": {
                "filter": namespace,
                "path": [{"key": key}],
                "value": {"bool_match": True},
            },
        }
    }


def _mapper(status: int, event_id: str, *also: dict[str, Any]) -> dict[str, Any]:
    """A mapper giving replies with `status` (and matching every filter in `also`) the
    error body."""
    match = _status_is(status)
    if also:
        match = {"and_filter": {"filters": [*also, match]}}
    body = {"content_type": "application/json", "json_format": local_reply_body(status, event_id)}
    return {"filter": match, "body_format_override": body}


def local_reply_config() -> dict[str, Any]:
    """The connection manager's `local_reply_config`: REST local replies first (marked by
    rest.lua), then the codec's own replies. Envoy uses the first mapper that matches."""
    rest = [_mapper(s, STREAM_EVENT_ID, _is_rest()) for s in LOCAL_REPLY_STATUSES]
    codec = [_mapper(s, CODEC_EVENT_ID) for s in CODEC_REPLY_STATUSES]
    return {"mappers": rest + codec}


# rest.lua's fallback body: placeholders it fills with string.gsub (one pass, so a message
# that happens to contain a placeholder is left as it is)
STATUS_CODE = "@STATUS_CODE@"
MESSAGE = "@MESSAGE@"
EVENT_ID = "@EVENT_ID@"


def fallback_body_template(etype: ErrorType) -> str:
    """The compact JSON error body of type `etype` and code `gateway_error`, with the
    placeholders above for the status (a bare JSON number once filled), message and
    event id."""
    body = ErrorBody(
        status_code=0,
        type=etype,
        code=ErrorCode.GATEWAY_ERROR,
        message=MESSAGE,
        event_id=EVENT_ID,
    ).to_dict()
    body["status_code"] = STATUS_CODE
    text = json.dumps(body, separators=(",", ":"))
    return text.replace(json.dumps(STATUS_CODE), STATUS_CODE)


def fallback_bodies() -> dict[str, str]:
    """rest.lua's fallback bodies, by the class of the HTTP status: a 4xx is the caller's
    fault (invalid_request_error), anything else ours (api_error)."""
    return {
        "error_body_4xx": fallback_body_template(ErrorType.INVALID_REQUEST),
        "error_body_5xx": fallback_body_template(ErrorType.API),
    }
