"""The supervisor of `imagejobs up`, without the real stack: what every child is told,
and a child that exits while the start waits for it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from imagejobs.config import load_settings
from imagejobs.runtime.supervisor import Child, StartFailed, Supervisor


def supervisor(tmp_path: Path, config_path: str | None = None) -> Supervisor:
    settings = load_settings(None, data_dir=str(tmp_path / "d"))
    return Supervisor(settings, config_path=config_path, echo=False)


def test_every_child_gets_the_config_file_as_an_absolute_path_over_an_inherited_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGEJOBS_CONFIG", raising=False)
    sup = supervisor(tmp_path, "f.toml")
    monkeypatch.setenv("IMAGEJOBS_CONFIG", "/elsewhere/other.toml")  # what children inherit
    assert sup.child_env()["IMAGEJOBS_CONFIG"] == str(tmp_path / "f.toml")


def test_without_a_config_file_no_child_reads_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEJOBS_CONFIG", raising=False)
    assert "IMAGEJOBS_CONFIG" not in supervisor(tmp_path).child_env()


async def test_a_child_that_exits_while_starting_fails_the_start_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEJOBS_CONFIG", raising=False)
    sup = supervisor(tmp_path)
    script = "print('first'); print('last words', flush=True); raise SystemExit(3)"
    child = await sup.spawn(Child("boom", "api", [sys.executable, "-c", script]))

    async def never() -> bool:
        return False

    started = time.monotonic()
    try:
        with pytest.raises(StartFailed) as info:
            await sup.wait_ready(child, never, "boom never ready")
    finally:
        await sup.stop()
    assert time.monotonic() - started < 10  # not READY_TIMEOUT_S (30 s)
    message = str(info.value)
    assert "boom exited with code 3" in message
    assert "  first\n  last words" in message
