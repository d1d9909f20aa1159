"""Webhook deliveries on the in-memory store and a fake clock: the worker (or the API's
cancel) owes the delivery with the terminal state, the dispatcher attempts it with a
scripted sender, and every crash point between the two is replayed. Nothing sleeps for
real, nothing is sent."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from typing import Any

import pytest
from imagejobs.api.service import JobService, ServiceLimits
from imagejobs.config import Settings
from imagejobs.domain.errors import InvalidRequest, JobConflict, JobNotFound, StoreUnavailable
from imagejobs.domain.jobs import Job, Status, StoredError
from imagejobs.domain.keys import Caller
from imagejobs.domain.kinds import Kind
from imagejobs.store.clock import FakeClock
from imagejobs.store.protocols import Backend
from imagejobs.webhooks.delivery import AttemptResult, DeliveryRecord, DeliveryStatus, Outcome
from imagejobs.webhooks.dispatcher import Dispatcher, ack_wait_s
from imagejobs.webhooks.endpoints import Endpoint, Event, WebhookSettings
from imagejobs.webhooks.payload import Intent
from imagejobs.webhooks.signing import new_secret, parse_secret
from imagejobs.worker.worker import Worker

from tests.unit.conftest import ACK_WAIT_S, ALICE, BOB, ScriptedRunner, make_worker, request

GEN = Kind.GENERATION
SECRET = new_secret()


def hook(**changes: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "name": "orders",
        "url": "https://hooks.example.com/in",
        "secret_env": "ORDERS_SECRET",
        "events": ["async_job.completed", "async_job.failed"],
        "initial_backoff_s": 30,
        **changes,
    }
    return WebhookSettings.model_validate(values)


class FakeSender:
    """A `Sender` answering from a script (the last entry repeats): what each attempt
    saw is kept. `gate`, when set, holds every attempt until opened."""

    def __init__(self, *script: AttemptResult) -> None:
        self.script = list(script) or [AttemptResult(200)]
        self.sent: list[tuple[str, str, int]] = []  # (webhook-id, body, timestamp)
        self.gate: asyncio.Event | None = None

    async def send(
        self, endpoint: Endpoint, record: DeliveryRecord, timestamp: int
    ) -> AttemptResult:
        self.sent.append((record.webhook_id, record.body, timestamp))
        if self.gate is not None:
            await self.gate.wait()
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@dataclasses.dataclass
class Rig:
    """The service, a worker and a dispatcher factory on one in-memory backend."""

    backend: Backend
    clock: FakeClock
    settings: Settings
    service: JobService
    worker: Worker
    sender: FakeSender
    hooks: dict[str, WebhookSettings]

    def dispatcher(self, name: str = "orders", **changes: Any) -> Dispatcher:
        settings = self.hooks[name].model_copy(update=changes) if changes else self.hooks[name]
        endpoint = Endpoint(settings=settings, secrets=(parse_secret(SECRET),))
        return Dispatcher(
            self.backend,
            {name: endpoint},
            self.sender,
            concurrency=64,
            base_url="https://gw.example",
            clock=self.clock,
            rng=random.Random(7),
        )

    async def deliver(self, name: str = "orders") -> None:
        await self.dispatcher(name).run(burst=True)

    async def submit(self, caller: Caller = ALICE, webhook: str = "orders", **params: Any) -> Job:
        return await self.service.submit(
            request(**params), ttl_s=600, request_id="req-1", caller=caller, webhook=webhook
        )

    async def delivery(self, job_id: str) -> DeliveryRecord:
        found = await self.backend.deliveries.get(job_id)
        assert found is not None
        return found[0]


@pytest.fixture
def rig(backend: Backend, clock: FakeClock, settings: Settings, runner: ScriptedRunner) -> Rig:
    hooks = {"orders": hook(), "all": hook(name="all", events=[e.value for e in Event])}
    service = JobService(
        backend, limits=ServiceLimits.from_settings(settings), clock=clock, webhooks=hooks
    )
    return Rig(
        backend,
        clock,
        settings,
        service,
        make_worker(backend, runner, clock, settings),
        FakeSender(),
        hooks,
    )


async def owed(backend: Backend, endpoint: str = "orders") -> int:
    return await backend.outbox_work.owed(endpoint)


# --- the happy path ----------------------------------------------------------------------


async def test_a_completed_job_is_delivered_once_with_the_gateways_payload(rig: Rig) -> None:
    job = await rig.submit()
    await rig.worker.run(burst=True)
    assert await owed(rig.backend) == 1  # owed from the terminal write on
    await rig.deliver()
    [(webhook_id, body, timestamp)] = rig.sender.sent
    assert webhook_id == f"{job.id}.async_job.completed"
    assert timestamp == int(rig.clock.time())
    payload = json.loads(body)
    assert payload["event"] == "async_job.completed"
    data = payload["data"]
    assert data["job_id"] == job.id and data["status"] == "completed"
    assert data["status_code"] == 200 and data["request_id"] == "req-1"
    assert data["request_type"] == "image_generation"
    assert data["result_url"] == f"https://gw.example/v1/async/images/generations/{job.id}"
    assert data["response_omitted"] is False and data["result_expired"] is False
    assert "response" not in data  # include_response is off
    record = await rig.delivery(job.id)
    assert record.status is DeliveryStatus.DELIVERED and record.total_attempts == 1
    assert await owed(rig.backend) == 0


async def test_a_failed_job_is_delivered_and_a_cancel_only_when_subscribed(
    rig: Rig, runner: ScriptedRunner
) -> None:
    cancelled = await rig.submit()
    await rig.service.cancel(GEN, cancelled.id, ALICE)  # "orders" takes no cancel event
    subscribed = await rig.submit(webhook="all")
    await rig.service.cancel(GEN, subscribed.id, ALICE)
    await rig.worker.run(burst=True)
    await rig.deliver()
    await rig.deliver("all")
    assert [s[0] for s in rig.sender.sent] == [f"{subscribed.id}.async_job.cancelled"]
    assert await rig.service.webhooks.list(GEN, cancelled.id, ALICE) == []
    assert await owed(rig.backend) == 0 and await owed(rig.backend, "all") == 0


async def test_unknown_and_disabled_endpoints_are_400_and_nothing_is_kept(
    backend: Backend, clock: FakeClock, settings: Settings
) -> None:
    hooks = {"off": hook(name="off", disabled=True)}
    service = JobService(backend, clock=clock, webhooks=hooks)
    for name, code in (("nope", "webhook_not_found"), ("off", "webhook_disabled")):
        with pytest.raises(InvalidRequest) as info:
            await service.submit(request(), ttl_s=60, request_id="r", caller=ALICE, webhook=name)
        assert info.value.code == code and info.value.param == "webhook"
    assert await backend.queue.depth() == (0, 0)
    assert (await backend.index.page(ALICE.owner, None, 0, 10)).entries == []


# --- retries -----------------------------------------------------------------------------


async def test_a_503_is_retried_after_the_backoff_with_the_same_id_and_body(rig: Rig) -> None:
    rig.sender.script = [AttemptResult(503), AttemptResult(200)]
    job = await rig.submit()
    await rig.worker.run(burst=True)
    await rig.deliver()
    record = await rig.delivery(job.id)
    assert record.status is DeliveryStatus.PENDING and record.next_attempt_at is not None
    wait = record.next_attempt_at - rig.clock.time()
    assert 30 * 0.8 <= wait <= 30 * 1.2  # the first backoff, jittered
    await rig.clock.advance(wait - 1)
    await rig.deliver()
    assert len(rig.sender.sent) == 1  # not yet
    await rig.clock.advance(2)
    await rig.deliver()
    first, second = rig.sender.sent
    assert first[:2] == second[:2] and second[2] > first[2]  # same id and body, new time
    assert (await rig.delivery(job.id)).status is DeliveryStatus.DELIVERED
    assert await owed(rig.backend) == 0


async def test_retry_after_is_honoured_and_retries_run_out(rig: Rig) -> None:
    rig.hooks["orders"] = hook(max_retries=2)
    rig.sender.script = [AttemptResult(429, retry_after_s=400.0), AttemptResult(500)]
    job = await rig.submit()
    await rig.worker.run(burst=True)
    await rig.deliver()
    record = await rig.delivery(job.id)
    assert record.next_attempt_at is not None
    assert record.next_attempt_at - rig.clock.time() == pytest.approx(400.0)
    for _ in range(3):
        await rig.clock.advance(410)
        await rig.deliver()
    assert len(rig.sender.sent) == 3  # max_retries = 2: three attempts
    record = await rig.delivery(job.id)
    assert record.status is DeliveryStatus.FAILED
    assert [a.outcome for a in record.attempts] == [Outcome.RETRY] * 3
    assert await owed(rig.backend) == 0


async def test_a_400_fails_at_once(rig: Rig) -> None:
    rig.sender.script = [AttemptResult(400)]
    job = await rig.submit()
    await rig.worker.run(burst=True)
    await rig.deliver()
    await rig.clock.advance(600)
    await rig.deliver()
    assert len(rig.sender.sent) == 1
    assert (await rig.delivery(job.id)).status is DeliveryStatus.FAILED
    assert await owed(rig.backend) == 0


async def test_a_410_disables_the_endpoint_until_its_settings_change(rig: Rig) -> None:
    rig.sender.script = [AttemptResult(410), AttemptResult(200)]
    first = await rig.submit()
    await rig.worker.run(burst=True)
    await rig.deliver()
    held = await rig.delivery(first.id)
    assert held.status is DeliveryStatus.PENDING and held.gone
    with pytest.raises(InvalidRequest) as info:  # a new submit naming it is refused
        await rig.submit()
    assert info.value.code == "webhook_disabled"
    await rig.clock.advance(3600)
    await rig.deliver()
    assert len(rig.sender.sent) == 1  # held: nothing is attempted
    changed = rig.dispatcher(url="https://hooks.example.com/v2")
    await changed.run(burst=True)
    assert len(rig.sender.sent) == 2
    record = await rig.delivery(first.id)
    assert record.status is DeliveryStatus.DELIVERED and record.tries == 1  # 410 not counted


# --- the intent is bound to the terminal state ------------------------------------------


class FailingOutbox:
    """The outbox, refusing its first `failures` publishes (a store outage, or a writer
    that died right after its terminal write)."""

    def __init__(self, backend: Backend, failures: int) -> None:
        self._inner = backend.outbox
        self.failures = failures

    async def publish(self, endpoint: str, msg_id: str, job_id: str, data: bytes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("outbox down")
        await self._inner.publish(endpoint, msg_id, job_id, data)


async def test_a_worker_whose_intent_fails_leaves_the_message_and_the_next_delivery_owes_it(
    rig: Rig, runner: ScriptedRunner, settings: Settings
) -> None:
    broken = dataclasses.replace(rig.backend, outbox=FailingOutbox(rig.backend, failures=1))
    worker = make_worker(broken, runner, rig.clock, settings)
    job = await rig.submit()
    await worker.run(burst=True)
    assert (await rig.service.get(GEN, job.id, ALICE)).status is Status.COMPLETED
    assert await owed(rig.backend) == 0 and await rig.backend.queue.contains(job.id)
    await rig.clock.advance(5)  # the nak's delay
    await worker.run(burst=True)
    assert await owed(rig.backend) == 1 and not await rig.backend.queue.contains(job.id)
    await rig.deliver()
    assert [s[0] for s in rig.sender.sent] == [f"{job.id}.async_job.completed"]
    assert len(runner.started) == 1  # the job ran once


async def test_a_worker_killed_between_terminal_write_and_intent_is_covered(rig: Rig) -> None:
    job = await rig.submit()
    [_taken] = await rig.backend.work.fetch(1, 0)  # a worker takes it, ends it, dies
    found = await rig.backend.records.get(job.id)
    assert found is not None
    await rig.backend.records.update(job.fail(_error(), rig.clock.time()), found[1])
    await rig.clock.advance(ACK_WAIT_S + 1)
    await rig.worker.run(burst=True)  # the redelivery finds it terminal: owes, then acks
    assert not await rig.backend.queue.contains(job.id)
    await rig.deliver()
    assert [s[0] for s in rig.sender.sent] == [f"{job.id}.async_job.failed"]


async def test_a_cancel_whose_intent_fails_is_delivered_through_the_jobs_message(
    rig: Rig,
) -> None:
    broken = dataclasses.replace(rig.backend, outbox=FailingOutbox(rig.backend, failures=9))
    service = JobService(broken, clock=rig.clock, webhooks=rig.hooks)
    job = await rig.submit(webhook="all")
    cancelled = await service.cancel(GEN, job.id, ALICE)  # the API "dies" before the intent
    assert cancelled.status is Status.CANCELLED and await owed(rig.backend, "all") == 0
    await rig.worker.run(burst=True)
    await rig.deliver("all")
    assert [s[0] for s in rig.sender.sent] == [f"{job.id}.async_job.cancelled"]


async def test_a_cancel_of_an_orphan_first_queues_it_so_the_intent_cannot_be_lost(
    rig: Rig,
) -> None:
    rig.service.hooks.after_record = lambda job: (_ for _ in ()).throw(SystemExit)  # API dies
    with pytest.raises(SystemExit):
        await rig.submit(webhook="all")
    [entry] = (await rig.backend.index.page(ALICE.owner, None, 0, 10)).entries
    assert not await rig.backend.queue.contains(entry.job_id)  # never queued
    broken = dataclasses.replace(rig.backend, outbox=FailingOutbox(rig.backend, failures=9))
    await JobService(broken, clock=rig.clock, webhooks=rig.hooks).cancel(GEN, entry.job_id, ALICE)
    assert await rig.backend.queue.contains(entry.job_id)
    await rig.worker.run(burst=True)
    await rig.deliver("all")
    assert [s[0] for s in rig.sender.sent] == [f"{entry.job_id}.async_job.cancelled"]


# --- dispatchers that die, duplicates, redelivery ---------------------------------------


async def test_a_dispatcher_killed_mid_attempt_is_replaced_after_ack_wait(rig: Rig) -> None:
    job = await rig.submit()
    await rig.worker.run(burst=True)
    rig.sender.script = [AttemptResult(503), AttemptResult(200)]
    await rig.deliver()  # the record exists, the next attempt is due in ~30 s
    await rig.clock.advance(40)
    [taken] = await rig.backend.outbox_work.fetch("orders", 1, 0)  # kill -9 mid-attempt:
    assert taken.data  # a dispatcher took it, sent it maybe, settled nothing
    await rig.deliver()
    assert len(rig.sender.sent) == 1  # still held by the dead one
    endpoint = Endpoint(settings=rig.hooks["orders"], secrets=(parse_secret(SECRET),))
    await rig.clock.advance(ack_wait_s(endpoint) + 1)
    await rig.deliver()
    assert [s[0] for s in rig.sender.sent] == [f"{job.id}.async_job.completed"] * 2
    assert rig.sender.sent[0][1] == rig.sender.sent[1][1]
    assert (await rig.delivery(job.id)).status is DeliveryStatus.DELIVERED


async def test_a_late_duplicate_intent_sends_nothing(rig: Rig) -> None:
    job = await rig.submit()
    await rig.worker.run(burst=True)
    await rig.deliver()
    done = await rig.service.get(GEN, job.id, ALICE)
    await rig.clock.advance(300)  # past the outbox's duplicate window
    intent = Intent(endpoint="orders", event=Event.COMPLETED, job_id=job.id, job=done)
    await rig.backend.outbox.publish("orders", intent.msg_id, job.id, intent.dumps())
    await rig.deliver()
    assert len(rig.sender.sent) == 1 and await owed(rig.backend) == 0


async def test_redeliver_sends_the_same_id_and_body_and_only_the_owner_may(rig: Rig) -> None:
    job = await rig.submit()
    await rig.worker.run(burst=True)
    with pytest.raises(JobConflict) as info:  # owed, not attempted yet
        await rig.service.webhooks.redeliver(GEN, job.id, ALICE)
    assert info.value.code == "delivery_in_progress"
    [listed] = await rig.service.webhooks.list(GEN, job.id, ALICE)
    assert listed.status is DeliveryStatus.PENDING and listed.attempts == ()
    await rig.deliver()
    with pytest.raises(JobNotFound):
        await rig.service.webhooks.list(GEN, job.id, BOB)
    with pytest.raises(JobNotFound):
        await rig.service.webhooks.redeliver(GEN, job.id, BOB)
    again = await rig.service.webhooks.redeliver(GEN, job.id, ALICE)
    assert again.status is DeliveryStatus.PENDING and again.round == 1
    await rig.deliver()
    first, second = rig.sender.sent
    assert first[:2] == second[:2]
    [record] = await rig.service.webhooks.list(GEN, job.id, ALICE)
    assert record.status is DeliveryStatus.DELIVERED and record.total_attempts == 2


async def test_a_redeliver_whose_record_write_was_lost_still_delivers(rig: Rig) -> None:
    job = await rig.submit()
    await rig.worker.run(burst=True)
    await rig.deliver()
    intent = Intent(endpoint="orders", event=Event.COMPLETED, job_id=job.id, round=1)
    await rig.backend.outbox.publish("orders", intent.msg_id, job.id, intent.dumps())
    await rig.deliver()  # the API died after publishing: the message moves the record on
    record = await rig.delivery(job.id)
    assert record.round == 1 and record.total_attempts == 2 and len(rig.sender.sent) == 2


async def test_the_history_outlives_the_job(rig: Rig) -> None:
    job = await rig.submit()
    await rig.worker.run(burst=True)
    await rig.deliver()
    await rig.clock.advance(601)  # the job's TTL
    with pytest.raises(JobNotFound):
        await rig.service.get(GEN, job.id, ALICE)
    [record] = await rig.service.webhooks.list(GEN, job.id, ALICE)
    assert record.status is DeliveryStatus.DELIVERED
    await rig.clock.advance(hook().retry_window_s() + 600)
    with pytest.raises(JobNotFound):
        await rig.service.webhooks.list(GEN, job.id, ALICE)


def _error() -> StoredError:
    return StoredError(status_code=500, type="api_error", message="upstream broke")
