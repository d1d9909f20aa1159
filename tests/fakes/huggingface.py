"""A fake Hugging Face inference router, and a fake Hub beside it, on FakeUpstream.

Router (`url`):
- `POST /hf-inference/models/<org>/<model>`: text-to-image (`{"inputs": prompt}`) or
  image-to-image (`{"inputs": <base64 image>, "parameters": {"prompt": ...}}`); answers
  the raw PNG bytes with `Content-Type: image/png`, as hf-inference does.
- `POST /together/v1/images/generations` and `POST /nebius/v1/images/generations`:
  OpenAI-style; answer `{"data": [{"b64_json": ...}]}`.
- Auth: `Authorization: Bearer <token>` must equal `token` (when set), else the router's
  401 `{"error": "Invalid credentials in Authorization header"}`.

Hub (`hub_url`, its own server, so that a scripted router failure never hits a lookup):
- `GET /api/models/<org>/<model>?expand[]=inferenceProviderMapping`: the repo's entry of
  `mappings` in the shape `model_info` answers (an object keyed by provider:
  `{"together": {"providerId", "status", "task"}}`), or 404 `{"error": "Repository not
  found"}`. `hub_requests` records the lookups.

`served` lists the image bytes answered, in order.

    with FakeHuggingFace(token="hf_test") as fake:
        ProviderConfig(name="huggingface", base_url=fake.url, hub_url=fake.hub_url, ...)
"""

from __future__ import annotations

import base64
import binascii
import itertools
import threading
from typing import Any, Self

from .gemini import png_bytes
from .upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake

FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
# What the Hub maps FLUX.1-schnell to: repo -> provider -> its entry. Together's id
# differs from the repo id, which is why the official clients look it up.
DEFAULT_MAPPINGS: dict[str, dict[str, dict[str, Any]]] = {
    FLUX_SCHNELL: {
        "hf-inference": {"providerId": FLUX_SCHNELL, "status": "live", "task": "text-to-image"},
        "together": {
            "providerId": "black-forest-labs/FLUX.1-schnell-Free",
            "status": "live",
            "task": "text-to-image",
        },
        "nebius": {
            "providerId": "black-forest-labs/flux-schnell",
            "status": "live",
            "task": "text-to-image",
        },
    },
    "timbrooks/instruct-pix2pix": {
        "hf-inference": {
            "providerId": "timbrooks/instruct-pix2pix",
            "status": "live",
            "task": "image-to-image",
        },
    },
}


class FakeHuggingFace(VendorFake):
    """router.huggingface.co. Start with `with FakeHuggingFace() as fake:`."""

    def __init__(
        self,
        *,
        token: str | None = None,
        mappings: dict[str, dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self.token = token
        self.mappings = dict(DEFAULT_MAPPINGS if mappings is None else mappings)
        self.hub = FakeUpstream()
        self.hub.route("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)", self._model_info)
        self.upstream = FakeUpstream()
        self.served: list[bytes] = []
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self.upstream.route("POST", r"/hf-inference/models/(?P<repo>[^/]+(/[^/]+)?)", self._hf)
        self.upstream.route(
            "POST", r"/(?P<provider>together|nebius)/v1/images/generations", self._openai_style
        )

    @property
    def hub_url(self) -> str:
        return self.hub.url

    @property
    def hub_requests(self) -> list[FakeRequest]:
        return self.hub.requests

    def __enter__(self) -> Self:
        self.hub.__enter__()
        return super().__enter__()

    def close(self) -> None:
        super().close()
        self.hub.close()

    def _model_info(self, req: FakeRequest) -> FakeResponse:
        assert req.match is not None
        repo = req.match["repo"]
        if repo not in self.mappings:
            return FakeResponse(404, {"error": "Repository not found"})
        body: dict[str, Any] = {"id": repo, "_id": "0" * 24}
        if req.query.get("expand[]") == ["inferenceProviderMapping"]:
            body["inferenceProviderMapping"] = self.mappings[repo]
        return FakeResponse(200, body)

    def _next_image(self) -> bytes:
        with self._lock:
            data = png_bytes(next(self._counter))
            self.served.append(data)
        return data

    def _denied(self, req: FakeRequest) -> FakeResponse | None:
        if self.token is None or req.headers.get("authorization") == f"Bearer {self.token}":
            return None
        return FakeResponse(401, {"error": "Invalid credentials in Authorization header"})

    def _hf(self, req: FakeRequest) -> FakeResponse:
        denied = self._denied(req)
        if denied:
            return denied
        try:
            body = req.json()
        except ValueError:
            return FakeResponse(400, {"error": "Malformed JSON"})
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, str) or not inputs:
            return FakeResponse(400, {"error": "`inputs` is required"})
        if "prompt" in (body.get("parameters") or {}):  # image-to-image: inputs is the image
            try:
                base64.b64decode(inputs, validate=True)
            except (binascii.Error, ValueError):
                return FakeResponse(400, {"error": "inputs is not a base64 image"})
        return FakeResponse(200, self._next_image(), headers={"Content-Type": "image/png"})

    def _openai_style(self, req: FakeRequest) -> FakeResponse:
        denied = self._denied(req)
        if denied:
            return denied
        try:
            body = req.json()
        except ValueError:
            return FakeResponse(400, {"error": {"message": "invalid JSON"}})
        if not isinstance(body, dict) or not body.get("prompt") or not body.get("model"):
            return FakeResponse(400, {"error": {"message": "prompt and model are required"}})
        image = base64.b64encode(self._next_image()).decode()
        return FakeResponse(200, {"data": [{"b64_json": image, "index": 0}]})
