"""The package as a new user gets it: a wheel built from this tree, installed into a fresh
virtualenv outside it (dependencies from the package index, as on a fresh machine), and
`imagejobs up` run from another directory. A mock job goes through Envoy and completes;
SIGINT (Ctrl-C) stops the whole stack.

This catches anything read at run time from the source tree instead of package data (the
gateway's Lua filter used to be). pip's cache is reused; the test takes about a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from imagejobs.testing import free_port, tcp_open, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.wheel, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
# what the wheel is built from: the package and its metadata, nothing else of the tree
SOURCES = ("pyproject.toml", "README.md", "service")
INSTALL_TIMEOUT_S = 420.0
UP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


def _run(argv: list[str], timeout_s: float) -> None:
    """Run a command to completion; fail with its output if it fails or overruns."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, f"{argv[:3]} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"


def _build_wheel(tmp: Path) -> Path:
    """A wheel of a copy of the tree, so the build leaves nothing in the checkout."""
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    # the running venv's setuptools builds it: no build environment to download
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*pip_wheel, "-q", "-w", str(dist), str(src)], INSTALL_TIMEOUT_S)
    (wheel,) = dist.glob("imagejobs-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel and its dependencies; returns its bin directory."""
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)], INSTALL_TIMEOUT_S)
    _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], INSTALL_TIMEOUT_S)
    return venv / "bin"


def _clean_env(bin_dir: Path) -> dict[str, str]:
    """This environment without our settings, our venv or our source tree on any path."""
    ours = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != ours]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IMAGEJOBS_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    yield _fresh_venv(tmp, _build_wheel(tmp))
    shutil.rmtree(tmp, ignore_errors=True)  # the venv is large; keep the temp dir small


def test_the_wheel_runs_the_stack(installed: Path, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gateway", "api", "nats", "admin")}
    elsewhere = tmp_path / "elsewhere"  # neither the source tree nor the venv
    elsewhere.mkdir()
    env = _clean_env(installed) | {"IMAGEJOBS_GATEWAY_ADMIN_PORT": str(ports["admin"])}
    argv = [str(installed / "imagejobs"), "up", "--data-dir", str(tmp_path / "data")]
    for name in ("gateway", "api", "nats"):
        argv += [f"--{name}-port", str(ports[name])]
    log_path = tmp_path / "up.log"
    log = log_path.open("wb")
    up = subprocess.Popen(argv, cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        return log_path.read_text(errors="replace")

    try:
        wait_until(
            lambda: up.poll() is not None or "imagejobs is ready" in output(),
            UP_TIMEOUT_S,
            "imagejobs up to be ready",
        )
        assert up.poll() is None, f"imagejobs up exited with {up.returncode}:\n{output()}"
        _complete_a_job(f"http://127.0.0.1:{ports['gateway']}")
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends; the children have own sessions
        assert up.wait(timeout=STOP_TIMEOUT_S) == 0, output()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        log.close()
    assert "stopped" in output()
    for name in ("gateway", "api", "nats"):
        assert not tcp_open(ports[name]), f"{name} still listening after stop"


def _complete_a_job(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        body = {"model": "mock/m", "prompt": "from a wheel", "size": "16x16"}
        r = client.post("/v1/async/images/generations", json=body)
        assert r.status_code == 202, r.text
        path = f"/v1/async/images/generations/{r.json()['id']}"
        deadline = time.monotonic() + 30
        while (r := client.get(path)).status_code == 202:
            assert time.monotonic() < deadline, f"job not done after 30 s: {r.text}"
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed"
        assert r.json()["result"]["data"][0]["b64_json"]
