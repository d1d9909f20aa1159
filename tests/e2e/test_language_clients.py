"""The TypeScript and Go clients (clients/) against the session's live stack: this runs
`clients/test.sh` with IMAGEJOBS_TARGET at Envoy's port and IMAGEJOBS_API_TARGET at an API
process, and prints its output (each language's, under a line naming it) into the test
log, passing or not. Node and Go must be installed (scripts/toolchains.sh installs them); in CI a
missing one fails, locally it skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from imagejobs.testing import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 240  # npm ci, tsc, a cold Go build and both suites: ~40 s on 2 cores


@pytest.mark.timeout(BUDGET_S + 30)
def test_every_language_client_passes_against_the_stack(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    for tool in ("node", "npm", "go", "gofmt"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is required in CI (scripts/toolchains.sh installs it)")
            pytest.skip(f"{tool} not installed")
    env = {
        **os.environ,
        "IMAGEJOBS_TARGET": stack.grpc_gateway,
        "IMAGEJOBS_API_TARGET": stack.grpc_direct,
    }
    try:
        run = subprocess.run(
            ["bash", str(ROOT / "clients" / "test.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUDGET_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        with capsys.disabled():
            print(f"\n{_text(exc.stdout)}{_text(exc.stderr)}")
        raise
    with capsys.disabled():
        print(f"\n{run.stdout}{run.stderr}")
    assert run.returncode == 0, "clients/test.sh failed (its output is above)"
    for language in ("TypeScript", "Go"):
        assert f">>> {language} client" in run.stdout
    assert "# fail 0" in run.stdout and "\nok  \timagejobs/clients/go" in run.stdout


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""
