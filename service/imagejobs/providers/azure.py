"""Azure OpenAI image deployments (gpt-image-1, dall-e-3): generations and edits.

Wire, checked against Microsoft's Azure OpenAI REST reference and image how-to:

- `POST {endpoint}/openai/deployments/{deployment}/images/generations?api-version=…`
  (JSON) and `…/images/edits?api-version=…` (multipart, as OpenAI's); the OpenAI body.
- `endpoint` is `config.base_url` (the resource, `https://<name>.openai.azure.com`) and
  is required; `deployment` is `config.deployments[model]`, else the model name itself;
  `api-version` is `config.api_version`, else `DEFAULT_API_VERSION`.
- auth: `api-key: <key>`; a key configured as `Bearer <token>` (a Microsoft Entra ID
  token) is sent as `Authorization` instead.
- no variations endpoint: those fail with 400 `unsupported_operation`.

Parameters are mapped exactly as for OpenAI (see `imagejobs.providers.openai`).
"""

from __future__ import annotations

from urllib.parse import quote

from imagejobs.domain.kinds import Kind
from imagejobs.providers.adapter import Vendor
from imagejobs.providers.openai import OpenAIProvider

# The first api-version with gpt-image-1 generations and edits; override per deployment
# with `api_version` in the provider's settings.
DEFAULT_API_VERSION = "2025-04-01-preview"
VENDOR = Vendor(
    name="azure",
    key_env="AZURE_API_KEY",
    options={"api_version": DEFAULT_API_VERSION, "deployments": {}},
)


class AzureProvider(OpenAIProvider):
    """The openai adapter on Azure's deployment paths and `api-key` auth."""

    vendor = VENDOR
    operations = frozenset({Kind.GENERATION, Kind.EDIT})
    requires_base_url = True

    def endpoint(self, kind: Kind, model: str) -> str:
        deployment = self._config.deployments.get(model, model)
        return (
            f"{self.base_url}/openai/deployments/{quote(deployment, safe='')}/images/{kind.value}"
        )

    def query(self) -> dict[str, str]:
        return {"api-version": self._config.api_version}

    def auth_headers(self) -> dict[str, str]:
        key = self._config.pick_key()
        if not key:
            return {}
        if key.startswith("Bearer "):
            return {"Authorization": key}
        return {"api-key": key}


build = AzureProvider  # the factory the registry calls: build(config, http)
