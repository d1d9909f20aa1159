"""The benchmark works (not how fast): `bench/run.py --smoke` starts its own stack and
baselines, runs every section with tiny bounded loads through the Python load
generators (no h2load needed), and its counts equal the Prometheus metrics. Its `--json`
holds a number for each row of issue 18's table (the store-filling rows at the quick
sizes), each in a sane range, and names the load generator it used."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from imagejobs.testing import require_binary

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# a share of a baseline's rate: positive and finite (at the smoke's tiny sizes, on a busy
# machine, ours has measured twice the no-op's rate: the noise is that large)
SHARES = ("rest_c32_vs_noop", "grpc_direct_vs_noop")
# seconds (the smoke's loads are tiny: anything under a minute is sane)
SECONDS = ["big_poll_p50_s", "e2e_250_p50_s", "e2e_250_p99_s", "drain_2000_s"]
SECONDS += ["list_first_page_s_at_100", "list_first_page_s_at_2000"]


@pytest.mark.timeout(300)
def test_bench_smoke_runs_every_section_and_matches_the_metrics(tmp_path: Path) -> None:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    numbers = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [sys.executable, "bench/run.py", "--smoke", "--python-load", "--json", str(numbers)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a hung run is killed whole
    )
    try:
        stdout, stderr = bench.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        stdout, stderr = bench.communicate()
        pytest.fail(f"bench --smoke did not finish in 240 s: {stdout[-4000:]}{stderr[-4000:]}")
    assert bench.returncode == 0, stdout[-4000:] + stderr[-4000:]
    out = json.loads(numbers.read_text())
    assert {row["section"] for row in out["rows"]} == set("abcdefghij"), stdout
    assert len(out["checks"]) >= 8
    for what, counted, scraped in out["checks"]:
        assert counted == scraped > 0, (what, counted, scraped)
    assert "metrics cross-check" in stdout and "all equal" in stdout
    numbers = out["numbers"]
    for key in SHARES:
        assert 0 < numbers[key] < math.inf, (key, numbers[key])
    for key in SECONDS:
        assert 0 < numbers[key] < 60, (key, numbers[key])
    assert numbers["e2e_250_p50_s"] <= numbers["e2e_250_p99_s"]
    assert (numbers["submit_cpu_store_small"], numbers["submit_cpu_store_large"]) == (100, 3000)
    # per-submit CPU is a few ms at any store size; the ratio of two is near 1 when flat
    assert 0 < numbers["submit_cpu_s_small"] < 0.1 and 0 < numbers["submit_cpu_s_large"] < 0.1
    assert 0.1 < numbers["submit_cpu_ratio_1m_vs_10k"] < 10
    assert out["load_generator"].startswith("python"), out["load_generator"]
    assert f"load generator: {out['load_generator']}" in stdout
