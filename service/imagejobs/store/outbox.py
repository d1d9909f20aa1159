"""The webhook outbox: a WorkQueue stream (HOOKQ) of owed deliveries, one message per
delivery round on `imagejobs.hookq.<endpoint>.<job_id>`, published with
`Nats-Msg-Id = <job id>.<event>` (`.r<n>` for redelivery round n), so that a terminal
state published twice (a writer that died after publishing, a redelivered job message)
owes one delivery. A message stays until a dispatcher settles it: acked once the
delivery is finished, nak'd with a delay while it waits for its next attempt, so waiting
retries are kept by the server and survive any restart.

Each endpoint has its own durable pull consumer (`hooks-<endpoint>`, filtered to its
subjects), so one slow or dead receiver cannot hold up the others' deliveries; its
ack_wait is what an attempt may take, after which a dispatcher that died mid-attempt has
its message delivered again.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js import api as js_api

from imagejobs.domain import constants
from imagejobs.store.jetstream import nats_errors, publish
from imagejobs.store.protocols import OutboxMessage
from imagejobs.store.queue import PullConsumer

MAX_OWED_PER_ENDPOINT = 1_000_000  # waiting retries count as pending acks: no real bound


def outbox_subject(endpoint: str, job_id: str) -> str:
    return f"{constants.OUTBOX_SUBJECT_PREFIX}.{endpoint}.{job_id}"


def consumer_name(endpoint: str) -> str:
    return constants.OUTBOX_CONSUMER_PREFIX + endpoint


def consumer_config(endpoint: str, ack_wait_s: float) -> js_api.ConsumerConfig:
    """The endpoint's shared durable consumer: explicit acks, redelivered forever (the
    delivery record counts attempts), waiting retries not limited."""
    return js_api.ConsumerConfig(
        durable_name=consumer_name(endpoint),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=MAX_OWED_PER_ENDPOINT,
        max_waiting=512,
        filter_subject=f"{constants.OUTBOX_SUBJECT_PREFIX}.{endpoint}.>",
    )


class JetStreamOutbox:
    """`Outbox` (the writers' side) and `OutboxWork` (the dispatchers') on HOOKQ."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._pulls: dict[str, PullConsumer] = {}

    async def publish(self, endpoint: str, msg_id: str, job_id: str, data: bytes) -> None:
        await publish(
            self._js,
            outbox_subject(endpoint, job_id),
            data,
            what="webhook outbox publish",
            headers={"Nats-Msg-Id": msg_id},
        )

    async def open(self, endpoint: str, ack_wait_s: float) -> None:
        with nats_errors(f"webhook consumer {endpoint}"):
            await self._js.add_consumer(
                constants.OUTBOX_STREAM, consumer_config(endpoint, ack_wait_s)
            )

    async def fetch(self, endpoint: str, batch: int, timeout_s: float) -> list[OutboxMessage]:
        pull = self._pulls.get(endpoint)
        if pull is None:
            pull = self._pulls[endpoint] = PullConsumer(
                self._js, constants.OUTBOX_STREAM, consumer_name(endpoint), "webhook fetch"
            )
        return list(await pull.fetch(batch, timeout_s))

    async def owed(self, endpoint: str) -> int:
        with nats_errors("webhook outbox depth"):
            info = await self._js.consumer_info(constants.OUTBOX_STREAM, consumer_name(endpoint))
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
