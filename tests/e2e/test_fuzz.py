"""A bounded schemathesis run, driven by openapi/openapi.yaml, against a stack of its own
(mock provider only) through Envoy on loopback: no response may be a 5xx, none may take
longer than the per-request timeout (a hang), and every response must be one the spec
documents (status, content type, body schema).

Bounded: `FUZZ_SECONDS` of wall time for the whole run (schemathesis's --max-time; its
fuzzing phase repeats until the budget is spent), `MAX_EXAMPLES` per operation and phase,
a fixed seed, one worker. Positive and negative data (schemathesis's default mode `all`)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from imagejobs.testing import Stack, require_binary

pytestmark = pytest.mark.e2e

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.yaml"
FUZZ_SECONDS = 45
MAX_EXAMPLES = 25
REQUEST_TIMEOUT_S = 15  # a request still unanswered after this is a hang
SEED = 20261126
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    # long-polls end within a few seconds, well inside the per-request timeout
    config = {"providers": {"mock": {}}, "max_wait_s": 3.0}
    s = Stack(tmp_path_factory.mktemp("fuzz"), config)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_fuzz_finds_no_server_error_no_hang_and_nothing_undocumented(
    fuzz_stack: Stack, tmp_path: Path
) -> None:
    junit = tmp_path / "junit.xml"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(SPEC),
        "--url",
        fuzz_stack.url,  # 127.0.0.1: the local stack only
        "--checks",
        ",".join(CHECKS),
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--request-retries",
        "0",
        "--max-time",
        str(FUZZ_SECONDS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--warnings",
        "off",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
    ]
    proxies = ("http_proxy", "https_proxy", "all_proxy")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SCHEMATHESIS_") and k.lower() not in proxies
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    run = subprocess.run(
        command,
        cwd=tmp_path,  # no schemathesis.toml is found, nothing is written into the repo
        env=env,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
    )
    report = f"schemathesis exited {run.returncode}:\n{run.stdout[-12000:]}\n{run.stderr[-3000:]}"
    assert junit.exists(), report
    suites = ET.parse(junit).getroot()
    assert int(suites.get("failures", "-1")) == 0, report
    assert int(suites.get("errors", "-1")) == 0, report  # request timeouts are errors
    tested = {case.get("name") for case in suites.iter("testcase")}
    operations = {
        f"{verb.upper()} {path}"
        for path, item in yaml.safe_load(SPEC.read_text())["paths"].items()
        for verb in ("get", "post", "delete")
        if verb in item
    }
    assert operations <= tested, (sorted(operations - tested), report)
    assert run.returncode == 0, report
    # and nothing unexpected happened inside the API either
    for port in fuzz_stack.api_ports:
        log = fuzz_stack.log(f"api-{port}")
        assert "unexpected error" not in log, log[-6000:]
