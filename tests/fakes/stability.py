"""A fake Stability AI REST v2beta: `stable-image/generate/{core,ultra,sd3}` and
`stable-image/edit/{inpaint,outpaint,remove-background}`.

Every endpoint takes multipart/form-data and, with `Accept: image/*`, answers one valid
PNG as raw bytes with the `finish-reason` and `seed` headers (listed in `served`). It
checks what Stability checks first: a multipart body (else 400), a `prompt` where one is
required, an `image` file for edits, and `Authorization: Bearer <key>` when `key` is set
(else 401). Errors are Stability's `{"id", "name", "errors": [...]}`. With
`content_filtered=True` it answers `finish-reason: CONTENT_FILTERED` (and a blurred PNG).

    with FakeStability(key="sk-stab") as fake:
        ... ProviderConfig(name="stability", base_url=fake.url, keys=(WeightedKey("sk-stab"),))
"""

from __future__ import annotations

import io
import threading
import uuid

from PIL import Image

from .upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake


def png(index: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    """A small valid PNG whose colour depends on `index`."""
    colour = ((100 + 45 * index) % 256, (15 * index) % 256, (180 + 25 * index) % 256)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _error(status: int, name: str, *errors: str) -> FakeResponse:
    return FakeResponse(status, {"id": uuid.uuid4().hex, "name": name, "errors": list(errors)})


class FakeStability(VendorFake):
    """Stability's Stable Image API on 127.0.0.1 (see the module doc)."""

    def __init__(self, *, key: str | None = None, content_filtered: bool = False) -> None:
        self.key = key
        self.content_filtered = content_filtered
        self.served: list[bytes] = []
        self.upstream = FakeUpstream()
        self._lock = threading.Lock()
        self.upstream.route(
            "POST", r"/v2beta/stable-image/(?P<group>generate|edit)/(?P<op>[a-z0-9-]+)", self._serve
        )

    def _serve(self, req: FakeRequest) -> FakeResponse:
        if self.key is not None and req.headers.get("authorization") != f"Bearer {self.key}":
            return _error(401, "unauthorized", "authorization: invalid or missing API key")
        assert req.match is not None
        group, op = req.match["group"], req.match["op"]
        known = {
            "generate": {"core", "ultra", "sd3"},
            "edit": {"inpaint", "outpaint", "remove-background"},
        }
        if op not in known[group]:
            return _error(404, "not_found", f"unknown endpoint {group}/{op}")
        if not req.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(400, "bad_request", "content-type: must be multipart/form-data")
        fields, files = req.multipart()
        needs_prompt = group == "generate" or op == "inpaint"
        if needs_prompt and not (fields.get("prompt") or [""])[0]:
            return _error(400, "bad_request", "prompt: cannot be empty")
        if group == "edit" and "image" not in files:
            return _error(400, "bad_request", "image: required")
        with self._lock:
            data = png(len(self.served))
            self.served.append(data)
        seed = (fields.get("seed") or ["1234"])[0]
        reason = "CONTENT_FILTERED" if self.content_filtered else "SUCCESS"
        return FakeResponse(
            200,
            data,
            headers={"Content-Type": "image/png", "finish-reason": reason, "seed": seed},
        )
