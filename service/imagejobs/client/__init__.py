"""The Python SDK of imagejobs: typed clients over gRPC.

    from imagejobs.client import Client

    with Client("localhost:8080") as client:
        result = client.generate("a red fox", model="mock/image-1", size="512x512")
        result.images[0].save("fox.png")

`Client` blocks; `AsyncClient` is the same API for asyncio. Both take `key=` (a virtual
key), `tls=`, `timeout_s=`, `metadata=` and `retry=`; retried submits carry one
idempotency key, so they never make a second job. Errors are `ClientError`s carrying the
contract's error body (`imagejobs.client.errors`). This layer imports only the domain
and the generated messages.
"""

from __future__ import annotations

from imagejobs.client.aio import AsyncClient, Shaping
from imagejobs.client.errors import (
    AuthenticationError,
    BudgetExceeded,
    ClientError,
    Conflict,
    DeadlineExceeded,
    ImageStreamBroken,
    InvalidArgument,
    JobFailed,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerUnavailable,
    WaitTimeout,
)
from imagejobs.client.options import DEFAULT_SERVER, ClientOptions, RetryPolicy
from imagejobs.client.sync import Client
from imagejobs.client.types import Image, Job, JobResult, KeyUsage, TokenDetails, Usage
from imagejobs.domain.jobs import Status
from imagejobs.domain.kinds import Kind

__all__ = [
    "DEFAULT_SERVER",
    "AsyncClient",
    "AuthenticationError",
    "BudgetExceeded",
    "Client",
    "ClientError",
    "ClientOptions",
    "Conflict",
    "DeadlineExceeded",
    "Image",
    "ImageStreamBroken",
    "InvalidArgument",
    "Job",
    "JobFailed",
    "JobResult",
    "KeyUsage",
    "Kind",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "ServerUnavailable",
    "Shaping",
    "Status",
    "TokenDetails",
    "Usage",
    "WaitTimeout",
]
