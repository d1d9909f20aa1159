"""A job's webhook deliveries over gRPC and REST: ListDeliveries (and its JSON face for
`GET …/{kind}/{id}/deliveries`) and Redeliver. Only the job's owner sees them.

`DeliveryRpcs` is a part of the servicer (api/servicer.py inherits it and its constructor
sets these attributes): it reads the caller as every RPC does and asks the job service's
webhook reads.
"""

from __future__ import annotations

from google.api import httpbody_pb2

from imagejobs.api.auth import Authenticator
from imagejobs.api.fields import Context, metadata_of, parse_kind_or_404, read_kind
from imagejobs.api.messages import delivery_message
from imagejobs.api.render import deliveries_json
from imagejobs.api.service import JobService
from imagejobs.v1 import jobs_pb2
from imagejobs.webhooks.delivery import DeliveryRecord


class DeliveryRpcs:
    """The servicer's webhook-delivery RPCs."""

    _auth: Authenticator
    _service: JobService

    async def ListDeliveries(
        self, request: jobs_pb2.ListDeliveriesRequest, context: Context
    ) -> jobs_pb2.ListDeliveriesResponse:
        records = await self._deliveries(request, context)
        return jobs_pb2.ListDeliveriesResponse(deliveries=[delivery_message(r) for r in records])

    async def ListDeliveriesJson(
        self, request: jobs_pb2.ListDeliveriesJsonRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        records = await self._deliveries(request, context)
        return httpbody_pb2.HttpBody(content_type="application/json", data=deliveries_json(records))

    async def _deliveries(
        self,
        request: jobs_pb2.ListDeliveriesRequest | jobs_pb2.ListDeliveriesJsonRequest,
        context: Context,
    ) -> list[DeliveryRecord]:
        caller = self._auth.caller(metadata_of(context))
        if isinstance(request, jobs_pb2.ListDeliveriesRequest):
            kind = read_kind(request.kind)
        else:
            kind = parse_kind_or_404(request.kind)
        return await self._service.webhooks.list(kind, request.job_id, caller)

    async def Redeliver(
        self, request: jobs_pb2.RedeliverRequest, context: Context
    ) -> jobs_pb2.WebhookDelivery:
        caller = self._auth.caller(metadata_of(context))
        kind = read_kind(request.kind)
        return delivery_message(
            await self._service.webhooks.redeliver(kind, request.job_id, caller)
        )
