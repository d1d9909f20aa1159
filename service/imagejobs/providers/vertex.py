"""Vertex AI: the same Gemini image models and Imagen as the Gemini API, on
`POST {base}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}`
`:generateContent` (Gemini) or `:predict` (Imagen). `base` defaults to
`https://{region}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com` for
the `global` location, where the newest Gemini image models live).

Differences from the Gemini API:
- Auth: an OAuth2 access token for a service account (`config.credentials_file`),
  obtained with google-auth's JWT-bearer grant. The token is cached until google-auth
  considers it near expiry; a lock makes concurrent jobs refresh it once. google-auth
  refreshes synchronously, so the refresh runs in a thread over a small httpx transport.
- Imagen takes `negativePrompt` and `seed` (a seed turns the watermark off: Vertex
  ignores seeds otherwise).
- Imagen edits (`imagen-3.0-capability-001`): mask-based, `editMode`
  `EDIT_MODE_INPAINT_INSERTION` (or `EDIT_MODE_OUTPAINT` for `type=outpainting`), the
  image as `REFERENCE_TYPE_RAW` and the mask as `REFERENCE_TYPE_MASK` with
  `MASK_MODE_USER_PROVIDED`. Vertex edits where the mask is non-zero; an OpenAI-style
  mask (edit where transparent) is converted. A mask is required.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from typing import Any, ClassVar

import google.auth.exceptions
import google.auth.transport
import httpx
from google.oauth2 import service_account
from PIL import Image

from imagejobs.domain.errors import ErrorCode, ErrorType, ProviderError, ProviderNotConfigured
from imagejobs.providers import google_common as gc
from imagejobs.providers import normalize
from imagejobs.providers.adapter import Vendor
from imagejobs.providers.base import (
    SYSTEM_CLOCK,
    Clock,
    JSONValue,
    ProviderConfig,
    ProviderRequest,
    b64,
    edit_mode,
    invalid_input,
)
from imagejobs.providers.gemini import GeminiProvider

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT_REGION = "us-central1"
# No key: a service-account file; the project defaults to the file's own `project_id`.
VENDOR = Vendor(
    name="vertex", options={"credentials_file": "", "project": "", "region": DEFAULT_REGION}
)
TOKEN_TIMEOUT_S = 30.0  # one token-endpoint call
_EDIT_MODES = {"inpainting": "EDIT_MODE_INPAINT_INSERTION", "outpainting": "EDIT_MODE_OUTPAINT"}


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxTransport(google.auth.transport.Request):
    """google-auth's synchronous transport interface over httpx (`requests` is not a
    dependency). Only ever called from a worker thread."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        try:
            with httpx.Client(timeout=timeout or self._timeout_s) as client:
                response = client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            message = f"token request failed: {type(exc).__name__}"
            raise google.auth.exceptions.TransportError(message) from exc  # type: ignore[no-untyped-call]
        return _Response(response)


class TokenSource:
    """Access tokens for one service account, cached until near expiry."""

    def __init__(self, credentials_file: str, timeout_s: float) -> None:
        self._file = credentials_file
        self._timeout_s = timeout_s
        self._credentials: service_account.Credentials | None = None
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        """A valid access token, refreshing it (once, for all waiters) when needed."""
        async with self._lock:
            if self._credentials is None:
                self._credentials = await asyncio.to_thread(self._load)
            credentials = self._credentials
            if not credentials.valid:
                await asyncio.to_thread(self._refresh, credentials)
            return str(credentials.token)

    @property
    def current(self) -> str:
        """The cached access token, or '' before the first `token()`."""
        token = getattr(self._credentials, "token", None)
        return token if isinstance(token, str) else ""

    @property
    def project_id(self) -> str:
        """The service account's project (after the first `token()`), else ''."""
        project = getattr(self._credentials, "project_id", None)
        return project if isinstance(project, str) else ""

    def _load(self) -> service_account.Credentials:
        try:
            credentials: service_account.Credentials = (
                service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    self._file, scopes=list(SCOPES)
                )
            )
        except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as exc:
            raise ProviderError(
                f"vertex service-account credentials could not be loaded: {type(exc).__name__}",
                type=ErrorType.AUTHENTICATION,
                code=ErrorCode.INVALID_CREDENTIALS,
            ) from exc
        return credentials

    def _refresh(self, credentials: service_account.Credentials) -> None:
        try:
            credentials.refresh(HttpxTransport(self._timeout_s))  # type: ignore[no-untyped-call]
        except google.auth.exceptions.RefreshError as exc:
            reason = str(exc.args[0]) if exc.args else type(exc).__name__
            # google-auth has already retried a retryable (5xx/429) answer a few times.
            retryable = bool(getattr(exc, "retryable", False))
            raise ProviderError(
                f"vertex could not obtain an access token: {reason[:300]}",
                status_code=None if retryable else 401,
                type=ErrorType.AUTHENTICATION,
                code=ErrorCode.TOKEN_REFRESH_FAILED,
                retryable=retryable,
            ) from exc
        except google.auth.exceptions.TransportError as exc:
            raise ProviderError(
                "vertex could not reach the token endpoint",
                type=ErrorType.CONNECTION,
                code=ErrorCode.UPSTREAM_UNREACHABLE,
                retryable=True,
            ) from exc


def _mask_for_vertex(mask: bytes) -> bytes:
    """Vertex edits where the mask is non-zero. A mask with transparent pixels is
    OpenAI-style (edit where transparent) and is converted; an opaque one is taken to be
    white-means-edit already."""
    try:
        with Image.open(io.BytesIO(mask)) as img:
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                lowest = img.convert("RGBA").getchannel("A").getextrema()[0]
                if isinstance(lowest, int) and lowest < 255:
                    return normalize.transparent_to_white_mask(mask)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise invalid_input(
            "the mask is not a readable image", "mask", ErrorCode.INVALID_MASK
        ) from exc
    return mask


class VertexProvider(GeminiProvider):
    """Gemini image models and Imagen (with edits) on Vertex AI."""

    vendor = VENDOR
    requires_key = False
    vertex: ClassVar[bool] = True
    imagen_edits: ClassVar[bool] = True

    def __init__(
        self, config: ProviderConfig, http: httpx.AsyncClient, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        super().__init__(config, http, clock=clock)
        self._tokens = (
            TokenSource(config.credentials_file, min(config.timeout_s, TOKEN_TIMEOUT_S))
            if config.credentials_file
            else None
        )

    @property
    def base_url(self) -> str:
        if self._config.base_url:
            return self._config.base_url.rstrip("/")
        if self._config.region == "global":
            return "https://aiplatform.googleapis.com"
        return f"https://{self._config.region}-aiplatform.googleapis.com"

    def configured(self) -> bool:
        return self._tokens is not None

    def endpoint(self, model: str, method: str) -> str:
        project = self._config.project or (self._tokens.project_id if self._tokens else "")
        if not project:
            raise ProviderNotConfigured(self.name)
        return (
            f"{self.base_url}/v1/projects/{project}/locations/{self._config.region}"
            f"/publishers/google/models/{model}:{method}"
        )

    def secrets(self) -> tuple[str, ...]:
        current = self._tokens.current if self._tokens else ""
        return (*self._config.secrets(), current) if current else self._config.secrets()

    async def auth_headers(self) -> dict[str, str]:
        if self._tokens is None:
            raise ProviderNotConfigured(self.name)
        return {"Authorization": f"Bearer {await self._tokens.token()}"}

    def imagen_edit_body(self, request: ProviderRequest) -> dict[str, JSONValue]:
        _, mode = edit_mode(request, _EDIT_MODES, self.name)
        if not request.images or request.mask is None:
            raise invalid_input(
                "vertex Imagen edits need an image and a mask", "mask", ErrorCode.MASK_REQUIRED
            )
        image = request.images[0]
        references: list[JSONValue] = [
            {
                "referenceType": "REFERENCE_TYPE_RAW",
                "referenceId": 1,
                "referenceImage": {"bytesBase64Encoded": b64(image.data)},
            },
            {
                "referenceType": "REFERENCE_TYPE_MASK",
                "referenceId": 2,
                "referenceImage": {"bytesBase64Encoded": b64(_mask_for_vertex(request.mask.data))},
                "maskImageConfig": {"maskMode": "MASK_MODE_USER_PROVIDED"},
            },
        ]
        instance: dict[str, JSONValue] = {"referenceImages": references}
        if request.prompt:
            instance["prompt"] = request.prompt
        parameters = gc.imagen_parameters(request, 1, vertex=True, seed=request.param_int("seed"))
        parameters.pop("aspectRatio", None)  # an edit keeps the input's shape
        parameters.pop("sampleImageSize", None)
        parameters["editMode"] = mode
        steps = request.param_int("num_inference_steps")
        if steps is not None:
            parameters["editConfig"] = {"baseSteps": steps}
        return {"instances": [instance], "parameters": parameters}


build = VertexProvider  # the factory the registry calls: build(config, http)
