"""The benchmark works (not how fast): `bench/run.py --smoke` starts its own stack and
baselines, runs every section with tiny bounded loads through the Python load
generators (no h2load needed), and its counts equal the Prometheus metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from imagejobs.testing import require_binary

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


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
    assert {row["section"] for row in out["rows"]} == set("abcdefgh"), stdout
    assert len(out["checks"]) >= 8
    for what, counted, scraped in out["checks"]:
        assert counted == scraped > 0, (what, counted, scraped)
    assert "metrics cross-check" in stdout and "all equal" in stdout
