"""Which model id an inference provider knows a Hugging Face Hub model by, as the official
clients (huggingface_hub, @huggingface/inference) find it.

The Hub answers `GET {hub}/api/models/{repo}?expand[]=inferenceProviderMapping` with the
model's `inferenceProviderMapping`: a list of `{"provider", "providerId", "status",
"task", ...}` (`model_info`'s older shape, an object keyed by provider, is read too). The
entry of the requested provider gives the id to send (`providerId`, e.g. Together's own
name for a Hub repo); its `task` must be the job's (`text-to-image` for a generation,
`image-to-image` for an edit). `hf-inference` is not looked up: its model id is the repo
id, as the official client has it.

A deployment's `model_map` (`"<provider>/<repo>" = "<provider's id>"`) answers first and
needs no Hub access. Hub answers are kept for `ttl_s` seconds (mappings change rarely;
the official clients keep them for the life of the process); concurrent jobs for one repo
share one lookup. Errors are ProviderErrors: a repo the Hub does not know, or does not
map to the provider (or for the task), is a 400 naming both; a Hub that cannot be
reached or answers 5xx is retryable, as any upstream call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from cachetools import TTLCache

from imagejobs.domain.errors import ErrorCode, ProviderError
from imagejobs.domain.kinds import Kind
from imagejobs.providers.base import ACCEPT_JSON, Clock, JSONValue, invalid_input

log = logging.getLogger(__name__)

UNMAPPED_PROVIDERS = frozenset({"hf-inference"})  # their model id is the repo id
TASKS: Mapping[Kind, str] = {Kind.GENERATION: "text-to-image", Kind.EDIT: "image-to-image"}
CACHE_MAX_REPOS = 4096  # distinct repos kept at once (each entry is a few hundred bytes)

Send = Callable[[httpx.Request], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class ProviderMapping:
    """One entry of a model's `inferenceProviderMapping`."""

    provider: str
    provider_id: str
    task: str
    status: str  # live, staging or error (the Hub's last health check)


def parse_mappings(payload: JSONValue) -> tuple[ProviderMapping, ...] | None:
    """The entries of a `model_info` answer; None when it holds no mapping at all."""
    raw = payload.get("inferenceProviderMapping") if isinstance(payload, dict) else None
    if isinstance(raw, dict):  # {provider: {...}}: model_info's older shape
        raw = [{**v, "provider": k} for k, v in raw.items() if isinstance(v, dict)]
    if not isinstance(raw, list):
        return None
    return tuple(
        ProviderMapping(
            provider=str(item.get("provider", "")),
            provider_id=str(item.get("providerId", "")),
            task=str(item.get("task", "")),
            status=str(item.get("status", "")),
        )
        for item in raw
        if isinstance(item, dict) and item.get("providerId")
    )


class HubMapper:
    """Resolves `<provider>/<repo>` to the provider's model id (see the module doc).

    :param send: the adapter's `send` (timeout, error translation, scrubbing).
    :param hub_url: the Hub's base URL (no trailing slash).
    :param ttl_s: how long a Hub answer is reused, in seconds.
    :param clock: the cache's time (a fake one in tests).
    :param model_map: `<provider>/<repo>` -> id overrides, answered without the Hub.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        send: Send,
        *,
        hub_url: str,
        ttl_s: float,
        clock: Clock,
        model_map: Mapping[str, str],
    ) -> None:
        self._http = http
        self._send = send
        self._hub_url = hub_url.rstrip("/")
        self._model_map = dict(model_map)
        self._cache: TTLCache[str, tuple[ProviderMapping, ...] | None] = TTLCache(
            maxsize=CACHE_MAX_REPOS, ttl=ttl_s, timer=clock.now
        )
        self._pending: dict[str, asyncio.Task[tuple[ProviderMapping, ...] | None]] = {}

    async def provider_id(self, provider: str, repo: str, kind: Kind, token: str) -> str:
        """The id `provider` knows `repo` by, for a job of `kind`; ProviderError 400
        `model_not_mapped` / `model_not_found` when the Hub has none."""
        mapped = self._model_map.get(f"{provider}/{repo}")
        if mapped:
            return mapped
        if provider in UNMAPPED_PROVIDERS:
            return repo
        mappings = await self._mappings(repo, token)
        entry = next((m for m in mappings or () if m.provider == provider), None)
        if entry is None:
            served = sorted({m.provider for m in mappings or ()})
            raise invalid_input(
                f"the Hugging Face Hub maps {repo} to no {provider} model"
                f" (inference providers serving it: {', '.join(served) or 'none'});"
                f" add it to [providers.huggingface] model_map if {provider} serves it",
                "model",
                ErrorCode.MODEL_NOT_MAPPED,
            )
        task = TASKS.get(kind, "")
        if entry.task != task:
            raise invalid_input(
                f"{provider} serves {repo} for {entry.task or 'another task'}, not {task}",
                "model",
                ErrorCode.MODEL_NOT_MAPPED,
            )
        if entry.status != "live":
            log.warning("the Hub lists %s on %s as %s", repo, provider, entry.status or "?")
        return entry.provider_id

    async def _mappings(self, repo: str, token: str) -> tuple[ProviderMapping, ...] | None:
        """The repo's mapping entries, from the cache or one Hub lookup shared by every
        job asking at the same time (a task of its own, so that a cancelled job does not
        cancel the others' lookup)."""
        if repo in self._cache:
            return self._cache[repo]
        task = self._pending.get(repo)
        if task is None:
            task = asyncio.ensure_future(self._lookup(repo, token))
            self._pending[repo] = task
            task.add_done_callback(functools.partial(self._settle, repo))
        return await asyncio.shield(task)

    def _settle(self, repo: str, task: asyncio.Task[tuple[ProviderMapping, ...] | None]) -> None:
        """A lookup ended: keep its answer; its error reached whoever awaited it."""
        del self._pending[repo]
        if not task.cancelled() and task.exception() is None:
            self._cache[repo] = task.result()

    async def _lookup(self, repo: str, token: str) -> tuple[ProviderMapping, ...] | None:
        url = f"{self._hub_url}/api/models/{quote(repo, safe='/')}"
        request = self._http.build_request(
            "GET",
            url,
            params={"expand[]": "inferenceProviderMapping"},
            headers={"Authorization": f"Bearer {token}", **ACCEPT_JSON},
        )
        try:
            response = await self._send(request)
        except ProviderError as exc:
            if exc.status_code == 404:
                raise invalid_input(
                    f"the Hugging Face Hub has no model {repo}: {exc.message}",
                    "model",
                    ErrorCode.MODEL_NOT_FOUND,
                ) from exc
            raise
        try:
            return parse_mappings(response.json())
        except ValueError:
            return None
