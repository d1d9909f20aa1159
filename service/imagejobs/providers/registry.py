"""The one table of vendors: which provider prefix maps to which adapter module.

Every module exposes `VENDOR` (its `adapter.Vendor`: key variable, base URL, the
vendor-only settings it takes and their defaults) and
`build(config: ProviderConfig, http: httpx.AsyncClient) -> Provider`. Modules are
imported on first use, so a process pays only for the vendors it is configured with
(botocore and google-auth take a while to import).
"""

from __future__ import annotations

import importlib

import httpx

from imagejobs.providers.adapter import Vendor
from imagejobs.providers.base import Provider, ProviderConfig

MODULES: dict[str, str] = {
    "mock": "imagejobs.providers.mock",
    "openai": "imagejobs.providers.openai",
    "openai-compatible": "imagejobs.providers.openai_compatible",
    "azure": "imagejobs.providers.azure",
    "xai": "imagejobs.providers.xai",
    "nebius": "imagejobs.providers.nebius",
    "gemini": "imagejobs.providers.gemini",
    "vertex": "imagejobs.providers.vertex",
    "huggingface": "imagejobs.providers.huggingface",
    "bedrock": "imagejobs.providers.bedrock",
    "replicate": "imagejobs.providers.replicate",
    "stability": "imagejobs.providers.stability",
    "bfl": "imagejobs.providers.bfl",
}

KNOWN_PROVIDERS = frozenset(MODULES)


def vendor(name: str) -> Vendor:
    """What provider `name` (one of KNOWN_PROVIDERS) states about itself."""
    spec: Vendor = importlib.import_module(MODULES[name]).VENDOR
    return spec


def build_provider(config: ProviderConfig, http: httpx.AsyncClient) -> Provider:
    """The adapter for `config.name`, ready to run requests over `http`."""
    module = importlib.import_module(MODULES[config.name])
    provider: Provider = module.build(config, http)
    return provider
