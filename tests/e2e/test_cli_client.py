"""The client commands (`imagejobs generate|edit|vary|get|watch|cancel|jobs`) run as a user
runs them, in subprocesses against real stacks: images on disk under `<job id>-<index>`,
JSON for scripts, exit codes 0/1/2/3, and the progress line under a pseudo-terminal."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imagejobs.client import Client, Status
from imagejobs.testing import Stack, free_port, require_binary, wait_until
from PIL import Image

from tests.conftest import png

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "imagejobs"]
RUN_TIMEOUT_S = 60
SLOW_SMALL = ["--model", "mock/m", "--size", "8x8", "--param", "mock_latency_ms=1500"]  # 1.5 s jobs
PATH_LINE = re.compile(r"(.*/)?([0-9a-f-]{36})-(\d+)\.(png|jpg|webp)")


def cli_env(server: str, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEJOBS_")}
    env["IMAGEJOBS_SERVER"] = server
    if key:
        env["IMAGEJOBS_KEY"] = key
    return env


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`imagejobs ARGS...` to its end (bounded), its output captured."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def run(stack: Stack, tmp_path: Path) -> Any:
    """`run(*args)` runs the command line with this test's own key against the stack."""
    env = cli_env(stack.grpc_gateway, f"sk-bf-cli-{uuid.uuid4().hex}")
    return lambda *args: run_cli(env, tmp_path, *args)


def test_generate_saves_each_image_as_job_id_dash_index_and_prints_its_path(
    run: Any, tmp_path: Path
) -> None:
    done = run("generate", "a red fox", "--model", "mock/image-1", "--size", "48x32", "-n", "2")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress line: stderr is not a terminal
    lines = done.stdout.splitlines()
    first = PATH_LINE.fullmatch(lines[0])
    assert len(lines) == 2 and first, lines
    job_id = first.group(2)
    assert lines == [f"{job_id}-{i}.png" for i in range(2)]  # in the current directory
    for line in lines:
        assert Image.open(tmp_path / line).size == (48, 32)


def test_generate_json_prints_the_job_with_the_saved_paths(run: Any, tmp_path: Path) -> None:
    out = tmp_path / "images"
    done = run("generate", "owl", "--model", "mock/m", "--size", "8x8", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "completed" and job["kind"] == "generations"
    assert job["status_code"] == 200 and job["created_at"].endswith("Z")
    [image] = job["result"]["data"]
    assert image["path"] == str(out / f"{job['id']}-0.png") and Path(image["path"]).is_file()
    assert (
        image["mime_type"] == "image/png"
        and image["size_bytes"] == Path(image["path"]).stat().st_size
    )
    assert "b64_json" not in image and job["result"]["extra_fields"]["provider"] == "mock"


def test_no_wait_then_get_watch_and_get_again(run: Any, tmp_path: Path) -> None:
    submitted = run("generate", "later", *SLOW_SMALL, "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id)
    running = run("get", job_id)
    assert running.returncode == 0 and running.stdout.split() in (
        [job_id, "pending"],
        [job_id, "processing"],
    )
    watched = run("watch", job_id)
    assert watched.returncode == 0, watched.stderr
    states = watched.stdout.split()
    assert states[-1] == "completed" and set(states) <= {"pending", "processing", "completed"}
    got = run("get", job_id, "--out", "saved")
    assert got.returncode == 0 and got.stdout.strip() == f"saved/{job_id}-0.png"
    assert (tmp_path / "saved" / f"{job_id}-0.png").is_file()


def test_cancel_and_failed_jobs_exit_1_with_the_error(run: Any) -> None:
    pending = run(
        "generate", "slow", "--model", "mock/m", "--param", "mock_latency_ms=20000", "--no-wait"
    )
    job_id = pending.stdout.strip()
    cancelled = run("cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"{job_id} cancelled"
    again = run("cancel", job_id)
    assert again.returncode == 1 and "job_not_cancellable" in again.stderr
    got = run("get", job_id, "--json")
    assert got.returncode == 1 and json.loads(got.stdout)["status"] == "cancelled"
    assert f"job {job_id} cancelled: job cancelled" in got.stderr

    failed = run("generate", "doomed", "--model", "mock/m", "--param", "mock_fail_status=400")
    assert failed.returncode == 1 and failed.stdout == ""
    assert "failed: mock upstream error: HTTP 400" in failed.stderr
    assert "(HTTP 400 mock_failure)" in failed.stderr
    refused = run("generate", " ", "--model", "mock/m")  # the server refuses the request
    assert refused.returncode == 1
    assert "prompt cannot be empty (HTTP 400 invalid_request, param prompt)" in refused.stderr


def test_edit_and_vary_from_files(run: Any, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(24, 16, (10, 200, 10)))
    edited = run("edit", "a.png", "--prompt", "tint", "--model", "mock/m", "--json")
    assert edited.returncode == 0, edited.stderr
    job = json.loads(edited.stdout)
    saved = tmp_path / job["result"]["data"][0]["path"]
    assert job["kind"] == "edits" and Image.open(saved).size == (24, 16)
    varied = run("vary", "a.png", "--model", "mock/m", "-n", "2")
    assert varied.returncode == 0 and len(varied.stdout.splitlines()) == 2


def test_jobs_lists_this_keys_jobs_as_text_or_json(run: Any) -> None:
    ids = [
        run("generate", f"n{i}", "--model", "mock/m", "--size", "8x8", "--no-wait").stdout.strip()
        for i in range(3)
    ]
    listed = run("jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert list(doc) == ["jobs"] and [j["id"] for j in doc["jobs"]] == ids[::-1]
    text = run("jobs", "--limit", "2", "--kind", "generations")
    assert [line.split()[0] for line in text.stdout.splitlines()] == ids[:0:-1]
    assert all(line.split()[1] == "generations" for line in text.stdout.splitlines())
    none = run("jobs", "--status", "failed", "--json")
    assert json.loads(none.stdout) == {"jobs": []}


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "no model"],
        ["generate", "x", "--model", "mock/m", "--param", "novalue"],
        ["generate", "x", "--model", "mock/m", "--param", "n=many"],
        ["edit", "missing.png", "--prompt", "p", "--model", "mock/m"],
        ["jobs", "--status", "sleeping"],
    ],
    ids=[
        "missing-model",
        "param-without-value",
        "param-of-wrong-type",
        "no-such-file",
        "bad-status",
    ],
)
def test_usage_errors_exit_2(run: Any, args: list[str]) -> None:
    done = run(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Usage:" in done.stderr or "Error:" in done.stderr


def test_an_unreachable_server_exits_3(run: Any) -> None:
    done = run("jobs", "--server", f"127.0.0.1:{free_port()}")
    assert done.returncode == 3 and "cannot reach 127.0.0.1:" in done.stderr


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """A stack that requires a virtual key (no worker: nothing here needs a job to run)."""
    for binary in ("nats-server", "envoy"):
        require_binary(binary)
    key = f"sk-bf-{uuid.uuid4().hex}"
    config = {
        "providers": {"mock": {}},
        "require_virtual_key": True,
        "virtual_keys": {"cli": {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}},
    }
    s = Stack(tmp_path_factory.mktemp("keyed-cli"), config, workers=0)
    try:
        s.start()
        yield s, key
    finally:
        s.stop()


@pytest.mark.parametrize("key", [None, "sk-bf-not-a-known-key"], ids=["no-key", "unknown-key"])
def test_a_refused_key_exits_3(keyed: tuple[Stack, str], key: str | None, tmp_path: Path) -> None:
    stack, good = keyed
    env = cli_env(stack.grpc_gateway, key)
    refused = run_cli(env, tmp_path, "jobs")
    assert refused.returncode == 3 and "the key was refused" in refused.stderr
    allowed = run_cli(env, tmp_path, "jobs", "--key", good)
    assert allowed.returncode == 0, allowed.stderr  # --key wins over IMAGEJOBS_KEY


def read_terminal(fd: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """Everything written to the pseudo-terminal until the process exits (bounded)."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    return seen


def test_progress_is_drawn_on_a_terminal_and_stdout_stays_clean(
    stack: Stack, tmp_path: Path
) -> None:
    """stderr on a pseudo-terminal gets a live spinner line (state, elapsed seconds, job
    id) redrawn in place and a last plain line; stdout, a pipe, gets only the path."""
    leader, follower = pty.openpty()
    env = cli_env(stack.grpc_gateway, f"sk-bf-pty-{uuid.uuid4().hex}") | {
        "TERM": "xterm",
        "COLUMNS": "120",
    }
    proc = subprocess.Popen(
        [*CLI, "generate", "pty fox", *SLOW_SMALL],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        cwd=tmp_path,
    )
    os.close(follower)
    try:
        screen = read_terminal(leader, proc, RUN_TIMEOUT_S).decode(errors="replace")
        stdout = proc.communicate(timeout=RUN_TIMEOUT_S)[0].decode()
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, screen
    match = PATH_LINE.fullmatch(stdout.strip())
    assert match and "\x1b" not in stdout, stdout
    job_id = match.group(2)
    frames = re.findall(r"(\S) (pending|processing|completed)  (\d+\.\d) s  " + job_id, screen)
    assert len(frames) >= 5, screen  # redrawn while the job ran (8 per second)
    assert {f[1] for f in frames} >= {"processing"}
    assert len({f[0] for f in frames}) > 1  # the spinner turns
    elapsed = [float(f[2]) for f in frames]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 1.0
    assert "\r\x1b[2K" in screen  # the line is rewritten in place
    assert re.search(rf"completed  \d+\.\d s  {job_id}\r?\n", screen)  # the last line stays


def test_ctrl_c_while_waiting_exits_130_and_names_the_job(stack: Stack, tmp_path: Path) -> None:
    key = f"sk-bf-int-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [*CLI, "generate", "interrupted", "--model", "mock/m", "--param", "mock_latency_ms=20000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(stack.grpc_gateway, key),
        cwd=tmp_path,
    )
    with Client(stack.grpc_gateway, key=key) as client:
        try:
            [job] = wait_until(lambda: list(client.list()), 30, "the job submitted")
            wait_until(lambda: client.get(job.id).status is Status.PROCESSING, 30, "it running")
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, stderr
        assert f"interrupted; job {job.id} goes on (imagejobs watch {job.id})" in stderr
        assert not client.get(job.id).terminal  # Ctrl-C leaves the job alone
        client.cancel(job.id)
