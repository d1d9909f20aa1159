"""Governance on the wire, pure: a job's `cost_usd` in the REST result, the typed result,
the SDK's values and the webhook payload (absent, not 0, without a price); the usage
report as REST JSON, as the typed message and as the SDK and command line show it; and
the SDK's `BudgetExceeded` for a 402."""

from __future__ import annotations

import json
import time

import grpc
from imagejobs.api.governance import KeyUsage
from imagejobs.api.messages import job_message
from imagejobs.api.render import job_json
from imagejobs.api.usage import usage_dict, usage_message
from imagejobs.client import BudgetExceeded, RateLimited
from imagejobs.client.errors import from_rpc_error
from imagejobs.client.types import job_of, key_usage_of
from imagejobs.domain.budget import Period, Spend, window
from imagejobs.domain.errors import ErrorBody
from imagejobs.domain.jobs import Job
from imagejobs.domain.keys import KeyPolicy
from imagejobs.runtime.client_commands import usage_lines
from imagejobs.store.clock import FakeClock
from imagejobs.store.memory import MemoryObjects
from imagejobs.webhooks.endpoints import Event, WebhookSettings
from imagejobs.webhooks.payload import build_body

from tests.unit.test_typed_wire import completed, rpc_error

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def priced(cost: float | None) -> Job:
    job = completed([10])
    assert job.result is not None
    return job.model_copy(update={"result": job.result.model_copy(update={"cost_usd": cost})})


def test_a_priced_jobs_cost_is_in_every_rendering_and_absent_without_a_price() -> None:
    job, unpriced = priced(0.03205), priced(None)
    cases: list[tuple[Job, float | None]] = [(job, 0.03205), (unpriced, None)]
    for value, expected in cases:
        doc = json.loads(job_json(value, [b"x" * 10]))
        assert doc["result"]["extra_fields"].get("cost_usd") == expected
        msg = job_message(value)
        assert msg.result.extra_fields.HasField("cost_usd") is (expected is not None)
        sdk = job_of(msg)
        assert sdk.result is not None and sdk.result.cost_usd == expected
        assert sdk.to_dict()["result"]["extra_fields"].get("cost_usd") == expected


async def test_the_webhook_payload_carries_the_cost() -> None:
    objects = MemoryObjects(FakeClock(start=time.time()))
    settings = WebhookSettings(name="h", url="https://hooks.example.com/x", secret_env="S")
    cases: list[tuple[Job, float | None]] = [(priced(0.5), 0.5), (priced(None), None)]
    for value, expected in cases:
        text = await build_body(value, Event.COMPLETED, settings, objects, "https://gw", 0.0)
        body = json.loads(text)
        assert body["data"].get("cost_usd") == expected


def report(period: Period, budget: float = 0.0) -> KeyUsage:
    policy = KeyPolicy(id="team", budget_usd=budget, budget_period=period, max_queued_jobs=9)
    return KeyUsage(policy, Spend(window(period, NOW), used=1_250_000, reserved=250_000), 3)


def test_the_usage_report_is_the_same_on_rest_grpc_the_sdk_and_the_command_line() -> None:
    monthly = report(Period.MONTH, budget=10.0)
    doc = usage_dict(monthly)
    assert doc == {
        "key": "team",
        "period": "month",
        "period_start": "2027-01-01T00:00:00.000Z",
        "resets_at": "2027-02-01T00:00:00.000Z",
        "budget_usd": 10.0,
        "spent_usd": 1.0,
        "reserved_usd": 0.25,
        "remaining_usd": 8.75,
        "queued_jobs": 3,
        "max_queued_jobs": 9,
    }
    assert key_usage_of(usage_message(monthly)).to_dict() == doc
    lines = usage_lines(key_usage_of(usage_message(monthly)))
    assert "remaining $8.75" in " ".join(" ".join(line.split()) for line in lines)
    # no budget, and a total period: those fields are left out
    total = usage_dict(report(Period.TOTAL))
    assert set(total) == {"key", "period", "spent_usd", "reserved_usd", "queued_jobs"} | {
        "max_queued_jobs"
    }
    assert key_usage_of(usage_message(report(Period.TOTAL))).to_dict() == total


def test_a_402_is_budget_exceeded_in_the_sdk_and_never_a_rate_limit() -> None:
    body = ErrorBody(402, "budget_exceeded", "budget_exceeded", "budget of $1.00 per day …")
    error = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, body))
    assert isinstance(error, BudgetExceeded) and not isinstance(error, RateLimited)
    assert (error.status_code, error.code) == (402, "budget_exceeded")
