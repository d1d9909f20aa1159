"""A fake Gemini API on FakeUpstream, for adapter and end-to-end tests.

- `POST /v1beta/models/<gemini model>:generateContent`: answers one PNG as an
  `inlineData` part (after an optional text part) with `usageMetadata`, as Gemini image
  models do. Requests without `responseModalities` containing IMAGE get text only.
- `POST /v1beta/models/<imagen model>:predict`: answers `parameters.sampleCount` PNGs
  as `predictions[].bytesBase64Encoded`.
- Auth: the `x-goog-api-key` header must equal `api_key` (when set), else Google's 400
  `API_KEY_INVALID`. Errors use Google's shape (`google_error`).

`served` lists the image bytes answered, in order. `GoogleImageAPI` holds the handlers
Vertex's fake (`tests/fakes/vertex.py`) reuses.

    with FakeGemini(api_key="k") as fake:
        ProviderConfig(name="gemini", base_url=fake.url, keys=(WeightedKey("k"),))
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
from typing import Any

from PIL import Image

from .upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake

USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302}


def png_bytes(index: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    """A small valid PNG whose colour depends on `index`."""
    colour = ((index * 53) % 256, (index * 97 + 40) % 256, (index * 29 + 80) % 256)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def google_error(
    status: int,
    message: str,
    grpc_status: str,
    headers: dict[str, str] | None = None,
    *,
    retry_delay: str | None = None,
) -> FakeResponse:
    """An error in Google's shape: `{"error": {"code", "message", "status"}}`. With
    `retry_delay` (a JSON Duration such as "2s") the error carries `details` as Google's
    quota errors do: a `QuotaFailure` and a `RetryInfo` with that `retryDelay`."""
    error: dict[str, Any] = {"code": status, "message": message, "status": grpc_status}
    if retry_delay is not None:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ]
    return FakeResponse(status, {"error": error}, headers=dict(headers or {}))


class GoogleImageAPI(VendorFake):
    """The generateContent/predict handlers both Google hosts share."""

    def __init__(self) -> None:
        self.upstream = FakeUpstream()
        self.served: list[bytes] = []
        self.text_part: str | None = "Here is your image."
        self.usage: dict[str, Any] | None = dict(USAGE)
        self._counter = itertools.count()
        self._lock = threading.Lock()

    # --- answers -----------------------------------------------------------------------------

    def next_image(self) -> bytes:
        with self._lock:
            data = png_bytes(next(self._counter))
            self.served.append(data)
        return data

    def generate_content(self, req: FakeRequest) -> FakeResponse:
        try:
            body = req.json()
            parts = body["contents"][0]["parts"]
        except (ValueError, KeyError, IndexError, TypeError):
            return google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        if not isinstance(parts, list) or not parts:
            return google_error(400, "contents.parts must not be empty", "INVALID_ARGUMENT")
        config = body.get("generationConfig") or {}
        answer: list[dict[str, Any]] = []
        if self.text_part:
            answer.append({"text": self.text_part})
        if "IMAGE" in (config.get("responseModalities") or []):
            data = base64.b64encode(self.next_image()).decode()
            answer.append({"inlineData": {"mimeType": "image/png", "data": data}})
        result: dict[str, Any] = {
            "candidates": [
                {"content": {"role": "model", "parts": answer}, "finishReason": "STOP", "index": 0}
            ],
            "modelVersion": req.match.group("model") if req.match else "",
        }
        if self.usage:
            result["usageMetadata"] = self.usage
        return FakeResponse(200, result)

    def predict(self, req: FakeRequest) -> FakeResponse:
        try:
            body = req.json()
            instance = body["instances"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            return google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        if not instance.get("prompt") and not instance.get("referenceImages"):
            return google_error(400, "prompt is required", "INVALID_ARGUMENT")
        count = int((body.get("parameters") or {}).get("sampleCount") or 1)
        if not 1 <= count <= 4:
            return google_error(400, "sampleCount must be in [1, 4]", "INVALID_ARGUMENT")
        predictions = [
            {
                "bytesBase64Encoded": base64.b64encode(self.next_image()).decode(),
                "mimeType": "image/png",
            }
            for _ in range(count)
        ]
        return FakeResponse(200, {"predictions": predictions})


class FakeGemini(GoogleImageAPI):
    """generativelanguage.googleapis.com. Start with `with FakeGemini() as fake:`."""

    def __init__(self, *, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.upstream.route(
            "POST", r"/v1beta/models/(?P<model>[^/:]+):generateContent", self._generate
        )
        self.upstream.route("POST", r"/v1beta/models/(?P<model>[^/:]+):predict", self._predict)

    def _authorized(self, req: FakeRequest) -> FakeResponse | None:
        if self.api_key is None or req.headers.get("x-goog-api-key") == self.api_key:
            return None
        return google_error(
            400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT"
        )

    def _generate(self, req: FakeRequest) -> FakeResponse:
        return self._authorized(req) or self.generate_content(req)

    def _predict(self, req: FakeRequest) -> FakeResponse:
        return self._authorized(req) or self.predict(req)
