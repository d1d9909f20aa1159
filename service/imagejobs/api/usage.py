"""The usage report (`GetUsage`, and `GetUsageJson` for `GET /v1/async/images/usage`): a
virtual key's spend in its current budget period, as the typed message and as the REST
JSON (unset fields left out, times with milliseconds, as every REST answer).

`UsageRpcs` is a part of the servicer (api/servicer.py inherits it): it reads the caller
as every RPC does and asks the job service, nothing more.
"""

from __future__ import annotations

import json
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from imagejobs.api.auth import Authenticator
from imagejobs.api.fields import Context, metadata_of
from imagejobs.api.governance import KeyUsage
from imagejobs.api.service import JobService
from imagejobs.domain.budget import usd
from imagejobs.domain.jobs import rfc3339
from imagejobs.v1 import jobs_pb2


def usage_dict(report: KeyUsage) -> dict[str, Any]:
    """The report as REST prints it (`GetUsageResponse`'s fields, unset ones left out)."""
    policy, spend = report.policy, report.spend
    doc: dict[str, Any] = {"key": policy.id, "period": policy.budget_period.value}
    if spend.window.start is not None and spend.window.end is not None:
        doc["period_start"] = rfc3339(spend.window.start)
        doc["resets_at"] = rfc3339(spend.window.end)
    if policy.budget_micro:
        doc["budget_usd"] = usd(policy.budget_micro)
    doc["spent_usd"] = usd(spend.spent)
    doc["reserved_usd"] = usd(spend.reserved)
    if policy.budget_micro:
        doc["remaining_usd"] = usd(spend.remaining(policy.budget_micro))
    doc["queued_jobs"] = report.queued_jobs
    doc["max_queued_jobs"] = policy.max_queued_jobs
    return doc


def _timestamp(epoch_s: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(epoch_s * 1000))
    return ts


def usage_message(report: KeyUsage) -> jobs_pb2.GetUsageResponse:
    """The report as the typed `GetUsageResponse` (the same fields as `usage_dict`)."""
    doc = usage_dict(report)
    msg = jobs_pb2.GetUsageResponse(
        key=doc["key"],
        period=doc["period"],
        spent_usd=doc["spent_usd"],
        reserved_usd=doc["reserved_usd"],
        queued_jobs=doc["queued_jobs"],
        max_queued_jobs=doc["max_queued_jobs"],
    )
    window = report.spend.window
    if window.start is not None and window.end is not None:
        msg.period_start.CopyFrom(_timestamp(window.start))
        msg.resets_at.CopyFrom(_timestamp(window.end))
    if "budget_usd" in doc:
        msg.budget_usd = doc["budget_usd"]
        msg.remaining_usd = doc["remaining_usd"]
    return msg


class UsageRpcs:
    """`GetUsage` and `GetUsageJson`, for a servicer that has `_auth` and `_service`."""

    _auth: Authenticator
    _service: JobService

    async def GetUsage(
        self, request: jobs_pb2.GetUsageRequest, context: Context
    ) -> jobs_pb2.GetUsageResponse:
        caller = self._auth.caller(metadata_of(context))
        return usage_message(await self._service.usage(caller))

    async def GetUsageJson(
        self, request: jobs_pb2.GetUsageJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        caller = self._auth.caller(metadata_of(context))
        doc = usage_dict(await self._service.usage(caller))
        data = json.dumps(doc, separators=(",", ":")).encode()
        return httpbody_pb2.HttpBody(content_type="application/json", data=data)
