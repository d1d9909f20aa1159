"""What every background process (a worker, a dispatcher) does around its main loop:
stop on SIGTERM/SIGINT, serve /metrics meanwhile, and leave nothing behind however the
loop ends."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Protocol

from imagejobs.config import Settings
from imagejobs.runtime import metrics
from imagejobs.store.protocols import QueueDepth


class MainLoop(Protocol):
    """A process's main loop: `run` until `stop` is called, then drain and return."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


async def run_until_signalled(
    main: MainLoop,
    settings: Settings,
    ports: range,
    queue: QueueDepth,
    flush_spans: Callable[[], None],
    also: metrics.Sampler | None = None,
) -> None:
    """Run `main` with its `stop` called on SIGTERM or SIGINT, /metrics served on the
    first free port of `ports` meanwhile (sampling `queue` and `also`); then close the
    metrics server and flush the spans, even when `main.run` raised."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, main.stop)
    server = await metrics.start(settings, ports, queue, also=also)
    try:
        await main.run()
    finally:
        if server is not None:
            await server.close()
        flush_spans()
