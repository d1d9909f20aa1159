"""Run by tests/e2e/test_compose.py inside a NATS container (`python -c` with this
file's text; the image has nats-py): prints every stream's cluster info (leader,
replicas) as one JSON object, after moving the leadership of stream argv[1] to server
argv[2] when both are given (a stepdown with a preferred server)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import nats

TIMEOUT_S = 2.0  # each JetStream API request


async def main(argv: list[str]) -> None:
    nc = await nats.connect(
        "nats://127.0.0.1:4222", connect_timeout=TIMEOUT_S, max_reconnect_attempts=1
    )

    async def api(subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = json.dumps(body or {}).encode()
        reply = await nc.request(f"$JS.API.{subject}", request, timeout=TIMEOUT_S)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    try:
        if len(argv) == 2:
            stream, server = argv
            await api(f"STREAM.LEADER.STEPDOWN.{stream}", {"placement": {"preferred": server}})
        names = (await api("STREAM.NAMES")).get("streams") or []
        print(json.dumps({s: (await api(f"STREAM.INFO.{s}")).get("cluster", {}) for s in names}))
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
