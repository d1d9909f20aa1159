"""The request fields the servicer reads besides the body: metadata, and kinds and
statuses, as REST's text (path segments, query values) or the typed RPCs' enums.

Reads name a job by id; a kind that is not a kind names no job (404), while a submit or a
list filter with a bad one is a 400.
"""

from __future__ import annotations

from typing import Any

import grpc

from imagejobs.domain.errors import InvalidRequest, JobNotFound
from imagejobs.domain.jobs import Status
from imagejobs.domain.kinds import Kind
from imagejobs.domain.wire import kind_of, status_of

Context = grpc.aio.ServicerContext[Any, Any]

KIND_REQUIRED = "kind must be generations, edits or variations"
STATUS_WORDS = "status must be pending, processing, completed, failed or cancelled"


def metadata_of(context: Context) -> dict[str, str]:
    """Request metadata as a dict of lower-case names (text values only)."""
    pairs = context.invocation_metadata() or ()
    return {str(k).lower(): v for k, v in pairs if isinstance(v, str)}


def parse_kind(value: str) -> Kind:
    """A submit's or a list filter's kind text; 400 for anything else."""
    try:
        return Kind.parse(value)
    except ValueError:
        raise InvalidRequest(KIND_REQUIRED, param="kind") from None


def parse_kind_or_404(value: str) -> Kind | None:
    """A read's kind text (a REST path segment; empty over gRPC = any kind). A kind that
    does not exist names no job: 404, as an unknown job is."""
    if not value:
        return None
    try:
        return Kind.parse(value)
    except ValueError:
        raise JobNotFound() from None


def read_kind(value: int) -> Kind | None:
    """A typed read's kind: JOB_KIND_UNSPECIFIED = any; an unknown number names no job."""
    try:
        return kind_of(value)
    except ValueError:
        raise JobNotFound() from None


def list_kind(value: int) -> Kind | None:
    """A typed list filter's kind; JOB_KIND_UNSPECIFIED = any."""
    try:
        return kind_of(value)
    except ValueError:
        raise InvalidRequest(KIND_REQUIRED, param="kind") from None


def submit_kind(value: int) -> Kind:
    """A typed submit's kind, which must be given."""
    kind = list_kind(value)
    if kind is None:
        raise InvalidRequest(KIND_REQUIRED, param="kind")
    return kind


def parse_status(value: str) -> Status | None:
    """A REST list filter's status text; empty = any."""
    try:
        return Status(value) if value else None
    except ValueError:
        raise InvalidRequest(STATUS_WORDS, param="status") from None


def list_status(value: int) -> Status | None:
    """A typed list filter's status; JOB_STATUS_UNSPECIFIED = any."""
    try:
        return status_of(value)
    except ValueError:
        raise InvalidRequest(STATUS_WORDS, param="status") from None
