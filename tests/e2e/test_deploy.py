"""deploy/: the alert rules pass `promtool check rules` and their unit tests (`promtool test
rules`), the dashboard is well formed, and a real Prometheus (Debian's package) scraping a
running stack (API, worker, webhook dispatcher) answers every dashboard query with data."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from imagejobs.testing import (
    Stack,
    free_port,
    free_port_run,
    require_binary,
    terminate,
    wait_until,
)
from imagejobs.webhooks.signing import new_secret

from tests.fakes.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "imagejobs.json"
SECRET = new_secret()
SCRAPE_S = 1  # Prometheus' scrape interval here
WINDOW = "30s"  # what the dashboard's $__rate_interval stands for in the queries
RANGE = "2m"  # and $__range
PROMTOOL_TIMEOUT_S = 60


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every dashboard target, Grafana's variables filled in."""
    return [
        (panel["title"], t["expr"].replace("$__rate_interval", WINDOW).replace("$__range", RANGE))
        for panel in _dashboard()["panels"]
        for t in panel["targets"]
    ]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    require_binary("promtool")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False
    )


def test_the_alert_rules_pass_promtool_check() -> None:
    done = _promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_the_alert_rules_unit_tests_pass() -> None:
    done = _promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_well_formed_and_covers_what_operators_look_at() -> None:
    board = _dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    metrics = set(re.findall(r"imagejobs_[a-z_]+", " ".join(e for _, e in _queries())))
    for wanted in (
        "imagejobs_submits_total",
        "imagejobs_completions_total",
        "imagejobs_job_seconds_bucket",
        "imagejobs_provider_call_seconds_bucket",
        "imagejobs_provider_call_seconds_count",
        "imagejobs_queue_depth",
        "imagejobs_jobs_in_flight",
        "imagejobs_workers",
        "imagejobs_webhook_attempts_total",
        "imagejobs_cost_usd_total",
    ):
        assert wanted in metrics, wanted


# --- a real Prometheus over a real stack ----------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver({"main": [SECRET]}) as r:
        yield r


@pytest.fixture(scope="module")
def scraped_stack(
    tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver
) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    base = free_port_run(3)  # the API, the worker, the dispatcher
    hook = {
        "name": "main",
        "url": f"{receiver.url}/main",
        "secret_env": "HOOK_SECRET",
        "allow_private_network": True,
        "initial_backoff_s": 0.2,
    }
    config = {
        "metrics_port": base,
        "webhooks": [hook],
        "providers": {"mock": {"max_retries": 1}},
    }
    stack = Stack(tmp_path_factory.mktemp("scraped"), config, env={"HOOK_SECRET": SECRET})
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, scraped_stack: Stack) -> Iterator[str]:
    """A Prometheus scraping the stack's three /metrics ports every second; its URL."""
    require_binary("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    base = scraped_stack.settings.metrics_port
    targets = [f"127.0.0.1:{base + i}" for i in range(3)]
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "imagejobs", "static_configs": [{"targets": targets}]}],
    }
    (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    argv = [
        "prometheus",
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (root / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url) or proc.poll() is not None, 30, "prometheus ready")
        assert proc.poll() is None, (root / "prometheus.log").read_text()

        def all_up() -> bool:
            active = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active)

        wait_until(all_up, 30, "every target scraped", 0.2)
        yield url
    finally:
        terminate([proc])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wave(client: httpx.Client, n: int) -> list[str]:
    """Jobs that touch every metric: completions with a cost, a retried 5xx, a 4xx
    failure, a cancel, an invalid submit, and webhook deliveries."""
    ids = []
    for i in range(n):
        for body in (
            {"prompt": f"fox {i}", "mock_cost_usd_ticks": 700_000_000},
            {"prompt": f"retried {i}", "mock_fail_status": 503, "mock_fail_times": 1},
            {"prompt": f"refused {i}", "mock_fail_status": 400},
        ):
            r = client.post(
                "/v1/async/images/generations",
                json={"model": "mock/image-1", "size": "16x16", **body},
                headers={"x-bf-async-webhook": "main"},
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    slow = client.post(
        "/v1/async/images/generations",
        json={"model": "mock/image-1", "prompt": "slow", "mock_latency_ms": 10_000},
    )
    assert client.delete(f"/v1/async/images/generations/{slow.json()['id']}").status_code == 200
    assert client.post("/v1/async/images/generations", json={"model": "mock/m"}).status_code == 400
    return ids


def _ended(client: httpx.Client, ids: list[str]) -> bool:
    return all(
        client.get(f"/v1/async/images/generations/{job_id}").status_code == 200 for job_id in ids
    )


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    scraped_stack: Stack, prometheus: str, receiver: WebhookReceiver
) -> None:
    with httpx.Client(base_url=scraped_stack.url, timeout=30) as client:
        ids = _wave(client, 2)
        wait_until(lambda: _ended(client, ids), 30, "the first wave's jobs to end", 0.1)
        time.sleep(SCRAPE_S * 2.5)  # at least two scrapes between the waves: rates > 0
        ids += _wave(client, 2)
        wait_until(lambda: _ended(client, ids), 30, "every job to end", 0.1)
    wait_until(lambda: len(receiver.to("main")) >= len(ids), 30, "every webhook delivery")
    at = time.time() + SCRAPE_S * 2  # the counters' last values are scraped by then
    time.sleep(SCRAPE_S * 3)

    def query(expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr, "time": at}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    empty = [f"{title}: {expr}" for title, expr in _queries() if not _finite(query(expr))]
    assert not empty, "queries without data:\n" + "\n".join(empty)
    # and the numbers are the workload's
    cost = query('sum(increase(imagejobs_cost_usd_total{provider="mock"}[5m]))')
    assert float(cost[0]["value"][1]) > 0
    workers = query("max(imagejobs_workers)")
    assert float(workers[0]["value"][1]) == 1
