"""A fake Replicate API: predictions that run for a few polls, then succeed or fail.

- `POST /v1/models/{owner}/{name}/predictions` and `POST /v1/predictions` (with
  `version`) create a prediction (`status: starting`, `urls.get` on this fake);
- `GET /v1/predictions/{id}` answers `processing` for the first `polls` reads, then the
  outcome: `succeeded` with `output` = one URL per image (`num_outputs`, default 1; a
  bare string instead of a list with `output_as_string`), or `failed` with `error`
  when `fail_with` is set; `fail_polls(...)` scripts failures of the reads only;
- `GET /files/{id}/{index}.png` serves the images (valid PNGs, listed in `served`).

With `token` set, API calls without `Authorization: Bearer <token>` get Replicate's 401
(problem+json). The file URLs need no token, like replicate.delivery.

    with FakeReplicate(token="r8_test", polls=3) as fake:
        ... ProviderConfig(name="replicate", base_url=fake.url, keys=(WeightedKey("r8_test"),))
"""

from __future__ import annotations

import io
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake


def png(index: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    """A small valid PNG whose colour depends on `index`."""
    colour = ((60 * index + 10) % 256, (30 * index) % 256, (250 - 20 * index) % 256)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Prediction:
    id: str
    input: dict[str, Any]
    version: str | None
    model: str | None
    reads: int = 0
    images: list[bytes] = field(default_factory=list)


class FakeReplicate(VendorFake):
    """Replicate's prediction API on 127.0.0.1 (see the module doc)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        polls: int = 2,
        fail_with: str | None = None,
        output_as_string: bool = False,
    ) -> None:
        self.token = token
        self.polls = polls
        self.fail_with = fail_with
        self.output_as_string = output_as_string
        self.predictions: dict[str, Prediction] = {}
        self.served: list[bytes] = []
        self._poll_failures: list[FakeResponse] = []
        self.upstream = FakeUpstream()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        up = self.upstream
        up.route("POST", r"/v1/models/(?P<owner>[^/]+)/(?P<name>[^/]+)/predictions", self._create)
        up.route("POST", r"/v1/predictions", self._create)
        up.route("GET", r"/v1/predictions/(?P<id>[^/]+)", self._get)
        up.route("GET", r"/files/(?P<id>[^/]+)/(?P<index>\d+)\.png", self._file)

    def fail_polls(self, *responses: FakeResponse) -> None:
        """Answer the next prediction reads with these (e.g. a 503) before the real ones;
        they do not count as polls of the prediction."""
        with self._lock:
            self._poll_failures.extend(responses)

    # --- the API ----------------------------------------------------------------------

    def _unauthorized(self, req: FakeRequest) -> FakeResponse | None:
        if self.token is None or req.headers.get("authorization") == f"Bearer {self.token}":
            return None
        return FakeResponse(
            401,
            {
                "title": "Unauthenticated",
                "detail": "You did not pass a valid authentication token",
                "status": 401,
            },
            headers={"Content-Type": "application/problem+json"},
        )

    def _doc(self, p: Prediction, status: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": p.id,
            "model": p.model,
            "version": p.version,
            "input": p.input,
            "status": status,
            "output": None,
            "error": None,
            "logs": "",
            "urls": {
                "get": f"{self.url}/v1/predictions/{p.id}",
                "cancel": f"{self.url}/v1/predictions/{p.id}/cancel",
            },
        }
        if status == "succeeded":
            urls = [f"{self.url}/files/{p.id}/{i}.png" for i in range(len(p.images))]
            doc["output"] = urls[0] if self.output_as_string else urls
            doc["metrics"] = {"predict_time": 0.01}
        elif status == "failed":
            doc["error"] = self.fail_with
        return doc

    def _create(self, req: FakeRequest) -> FakeResponse:
        denied = self._unauthorized(req)
        if denied is not None:
            return denied
        body = req.json()
        model_input = body.get("input")
        if not isinstance(model_input, dict):
            return FakeResponse(
                422,
                {"title": "Input validation failed", "detail": "input is required", "status": 422},
            )
        match = req.match
        model = (
            f"{match['owner']}/{match['name']}"
            if match and "owner" in match.re.groupindex
            else None
        )
        with self._lock:
            pid = f"pred{next(self._ids)}"
            prediction = Prediction(
                id=pid, input=model_input, version=body.get("version"), model=model
            )
            self.predictions[pid] = prediction
        return FakeResponse(201, self._doc(prediction, "starting"))

    def _get(self, req: FakeRequest) -> FakeResponse:
        denied = self._unauthorized(req)
        if denied is not None:
            return denied
        with self._lock:
            failure = self._poll_failures.pop(0) if self._poll_failures else None
        if failure is not None:
            return failure
        pid = req.match["id"] if req.match else ""
        prediction = self.predictions.get(pid)
        if prediction is None:
            return FakeResponse(404, {"title": "Not found", "detail": "Not found.", "status": 404})
        with self._lock:
            prediction.reads += 1
            if prediction.reads <= self.polls:
                return FakeResponse(200, self._doc(prediction, "processing"))
            if self.fail_with is not None:
                return FakeResponse(200, self._doc(prediction, "failed"))
            if not prediction.images:
                count = int(prediction.input.get("num_outputs", 1))
                start = len(self.served)
                prediction.images = [png(start + i) for i in range(count)]
                self.served.extend(prediction.images)
        return FakeResponse(200, self._doc(prediction, "succeeded"))

    def _file(self, req: FakeRequest) -> FakeResponse:
        assert req.match is not None
        prediction = self.predictions.get(req.match["id"])
        index = int(req.match["index"])
        if prediction is None or index >= len(prediction.images):
            return FakeResponse(404, "not found")
        return FakeResponse(200, prediction.images[index], headers={"Content-Type": "image/png"})
