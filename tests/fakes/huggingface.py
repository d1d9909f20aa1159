"""A fake Hugging Face inference router on FakeUpstream.

- `POST /hf-inference/models/<org>/<model>`: text-to-image (`{"inputs": prompt}`) or
  image-to-image (`{"inputs": <base64 image>, "parameters": {"prompt": ...}}`); answers
  the raw PNG bytes with `Content-Type: image/png`, as hf-inference does.
- `POST /together/v1/images/generations` and `POST /nebius/v1/images/generations`:
  OpenAI-style; answer `{"data": [{"b64_json": ...}]}`.
- Auth: `Authorization: Bearer <token>` must equal `token` (when set), else the router's
  401 `{"error": "Invalid credentials in Authorization header"}`.

`served` lists the image bytes answered, in order.

    with FakeHuggingFace(token="hf_test") as fake:
        ProviderConfig(name="huggingface", base_url=fake.url, keys=(WeightedKey("hf_test"),))
"""

from __future__ import annotations

import base64
import binascii
import itertools
import threading

from .gemini import png_bytes
from .upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake


class FakeHuggingFace(VendorFake):
    """router.huggingface.co. Start with `with FakeHuggingFace() as fake:`."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.upstream = FakeUpstream()
        self.served: list[bytes] = []
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self.upstream.route("POST", r"/hf-inference/models/(?P<repo>[^/]+(/[^/]+)?)", self._hf)
        self.upstream.route(
            "POST", r"/(?P<provider>together|nebius)/v1/images/generations", self._openai_style
        )

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
