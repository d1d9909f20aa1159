"""Fixtures shared by the adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The client an adapter sends with; trust_env=False so no proxy setting can route a
    test's traffic anywhere but the loopback fake."""
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client
