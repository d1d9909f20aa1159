"""`Client`: the blocking SDK. It runs an `AsyncClient` on a private event loop in a
daemon thread and waits for each call, so the two clients share every line of logic
(retries, long-polls, image streaming) and every signature.

A call interrupted in the calling thread (Ctrl-C) is cancelled on the loop too. The
iterators (`watch`, `list`) step the async ones one item at a time.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar, Unpack

from imagejobs.client.aio import AsyncClient
from imagejobs.client.options import DEFAULT_SERVER, ClientOptions

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Client, P], R]:
    """AsyncClient's coroutine method as a blocking Client method."""

    @functools.wraps(method)
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(method(self._async, *args, **kwargs))

    return call


def _iterating(
    method: Callable[Concatenate[AsyncClient, P], AsyncIterator[T]],
) -> Callable[Concatenate[Client, P], Iterator[T]]:
    """AsyncClient's async-iterator method as a Client method returning an iterator."""

    @functools.wraps(method)
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._iterate(method(self._async, *args, **kwargs))

    return call


class Client:
    """The blocking client; the same parameters, methods and errors as `AsyncClient`:
    `submit`, `get`, `wait`, `watch` (an iterator), `cancel`, `list` (an iterator that
    pages), `image`, and `generate` / `edit` / `vary` (submit, wait, return the result).
    Use it as a context manager, or call `close()`."""

    def __init__(self, server: str = DEFAULT_SERVER, **options: Unpack[ClientOptions]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="imagejobs-client", daemon=True
        )
        self._thread.start()
        self._async: AsyncClient = self._run(self._open(server, options))

    @staticmethod
    async def _open(server: str, options: ClientOptions) -> AsyncClient:
        return AsyncClient(server, **options)  # its channel belongs to the loop it is made on

    def _run(self, coro: Awaitable[R]) -> R:
        future = asyncio.run_coroutine_threadsafe(_awaited(coro), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: stop the call too
            raise

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and self._loop.is_running():
                self._run(aclose())

    @property
    def server(self) -> str:
        return self._async.server

    def close(self) -> None:
        """Close the channel and stop the loop thread (idempotent)."""
        if not self._loop.is_running():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    submit = _blocking(AsyncClient.submit)
    get = _blocking(AsyncClient.get)
    wait = _blocking(AsyncClient.wait)
    watch = _iterating(AsyncClient.watch)
    image = _blocking(AsyncClient.image)
    cancel = _blocking(AsyncClient.cancel)
    list = _iterating(AsyncClient.list)
    usage = _blocking(AsyncClient.usage)
    generate = _blocking(AsyncClient.generate)
    edit = _blocking(AsyncClient.edit)
    vary = _blocking(AsyncClient.vary)


async def _awaited(awaitable: Awaitable[R]) -> R:
    return await awaitable
