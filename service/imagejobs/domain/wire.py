"""The proto enums `JobStatus` and `JobKind` and the domain's `Status` and `Kind`, mapped
by name (`Status.PENDING` <-> `JOB_STATUS_PENDING`), so neither side keeps a table.

Used by the API (records -> messages, request enums -> domain values) and by the SDK
(messages -> its own values); pure, no I/O.
"""

from __future__ import annotations

from imagejobs.domain.jobs import Status
from imagejobs.domain.kinds import Kind
from imagejobs.v1 import jobs_pb2

_STATUS_PREFIX = "JOB_STATUS_"
_KIND_PREFIX = "JOB_KIND_"


def status_enum(status: Status) -> jobs_pb2.JobStatus.ValueType:
    """`Status.PENDING` -> `JOB_STATUS_PENDING`."""
    return jobs_pb2.JobStatus.Value(_STATUS_PREFIX + status.name)


def kind_enum(kind: Kind) -> jobs_pb2.JobKind.ValueType:
    """`Kind.GENERATION` -> `JOB_KIND_GENERATION`."""
    return jobs_pb2.JobKind.Value(_KIND_PREFIX + kind.name)


def status_of(value: int) -> Status | None:
    """`JOB_STATUS_PENDING` -> `Status.PENDING`; None for JOB_STATUS_UNSPECIFIED.
    ValueError for a number this version does not know (a newer peer's)."""
    if value == jobs_pb2.JOB_STATUS_UNSPECIFIED:
        return None
    name = jobs_pb2.JobStatus.Name(jobs_pb2.JobStatus.ValueType(value))
    return Status[name.removeprefix(_STATUS_PREFIX)]


def kind_of(value: int) -> Kind | None:
    """`JOB_KIND_EDIT` -> `Kind.EDIT`; None for JOB_KIND_UNSPECIFIED. ValueError for a
    number this version does not know."""
    if value == jobs_pb2.JOB_KIND_UNSPECIFIED:
        return None
    name = jobs_pb2.JobKind.Name(jobs_pb2.JobKind.ValueType(value))
    return Kind[name.removeprefix(_KIND_PREFIX)]
