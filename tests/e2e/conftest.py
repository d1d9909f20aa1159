"""Fixtures the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from imagejobs.testing import Stack, require_binary


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One real nats-server (JetStream) for a test module, on a free loopback port; no
    API, gateway or worker."""
    require_binary("nats-server")
    s = Stack(tmp_path_factory.mktemp("nats"), workers=0)
    try:
        s.start_nats()
        yield s
    finally:
        s.stop()
