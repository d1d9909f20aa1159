"""The `imagejobs` command line, run as a user would, in a subprocess."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["imagejobs", "imagejobs.runtime.cli"])
def test_new_key_prints_a_key_and_its_config_section(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "new-key", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key = re.fullmatch(r"key: (sk-bf-[A-Za-z0-9_-]{43})\n", done.stderr)
    assert key, done.stderr
    digest = hashlib.sha256(key.group(1).encode()).hexdigest()
    assert done.stdout == f'[virtual_keys.x]\nkey_sha256 = "{digest}"\n'
