"""Any server that speaks the OpenAI Images API at a configured base URL (self-hosted
models, proxies, other vendors' OpenAI-compatible endpoints).

The wire is exactly the openai adapter's (generations, edits, variations; see
`imagejobs.providers.openai`), against `config.base_url` — with or without a trailing
`/v1` — which is required: without one every call fails with 400
`provider_not_configured`. The key is optional: with none, no `Authorization` header is
sent.
"""

from __future__ import annotations

from imagejobs.providers.adapter import Vendor
from imagejobs.providers.openai import OpenAIProvider

VENDOR = Vendor(name="openai-compatible")  # no default key variable, no public endpoint


class OpenAICompatibleProvider(OpenAIProvider):
    """The openai adapter with a required base URL and an optional key."""

    vendor = VENDOR
    requires_key = False
    requires_base_url = True


build = OpenAICompatibleProvider  # the factory the registry calls: build(config, http)
