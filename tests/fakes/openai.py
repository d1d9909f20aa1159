"""Fake OpenAI-shaped image APIs on FakeUpstream, for adapter and end-to-end tests.

- `FakeOpenAI`: `POST /v1/images/generations` (JSON), `/v1/images/edits` and
  `/v1/images/variations` (multipart), as OpenAI (and any OpenAI-compatible server) has
  them. Each answers `n` small valid PNGs as `b64_json`, or — `response_format=url` — as
  URLs to `GET /files/<token>.png` on the same fake. gpt-image models also echo
  `background`/`output_format`/`quality`/`size` and report `usage`; dall-e-3 revises the
  prompt.
- `FakeAzureOpenAI`: `POST /openai/deployments/<deployment>/images/{generations,edits}`
  with a required `api-version` query and `api-key` auth (or an Entra `Bearer` token).
- `FakeXAI`: generations only; rejects `size` and `style` as xAI does, answers URLs by
  default, with `mime_type` and `usage.cost_in_usd_ticks`.
- `FakeNebius`: generations only; one image per call whatever `n`, `width`/`height`
  validated (64-2048), `response_extension` honoured, errors as `{"detail": [...]}`.

Every fake records each request (`requests`, `requests_to`) and can script failures
(`fail_next`). `served` lists the image bytes it answered with, in order.
With `api_key` set, requests without that key get OpenAI's 401.

    with FakeOpenAI(api_key="sk-test") as fake:
        ... ProviderConfig(name="openai", base_url=fake.url, keys=(WeightedKey("sk-test"),))
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
import uuid
from typing import Any

from PIL import Image

from .upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake

PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


def image_bytes(index: int, fmt: str = "png", size: tuple[int, int] = (8, 8)) -> bytes:
    """A small valid image whose colour depends on `index`."""
    colour = ((index * 53) % 256, (index * 97 + 40) % 256, (index * 29 + 80) % 256)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=PIL_FORMATS.get(fmt, "PNG"))
    return buf.getvalue()


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> FakeResponse:
    """An error response in OpenAI's shape."""
    body = {"error": {"message": message, "type": type, "code": code, "param": param}}
    return FakeResponse(status, body, headers=dict(headers or {}))


class FakeOpenAI(VendorFake):
    """The OpenAI Images API. Start with `with FakeOpenAI() as fake:`."""

    prefix = "/v1"
    default_response_format = "b64_json"

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.upstream = FakeUpstream()
        self.served: list[bytes] = []
        self._files: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self.upstream.route("GET", r"/files/(?P<token>\w+)\.\w+", self._file)
        self.install()

    def install(self) -> None:
        """Install this API's routes."""
        self.upstream.route("POST", rf"{self.prefix}/images/generations", self._generations)
        self.upstream.route("POST", rf"{self.prefix}/images/edits", self._edits)
        self.upstream.route("POST", rf"{self.prefix}/images/variations", self._variations)

    # --- handlers --------------------------------------------------------------------------

    def authorized(self, req: FakeRequest) -> bool:
        return self.api_key is None or req.headers.get("authorization") == f"Bearer {self.api_key}"

    def unauthorized(self) -> FakeResponse:
        return openai_error(
            401, "Incorrect API key provided.", code="invalid_api_key", type="invalid_request_error"
        )

    def _generations(self, req: FakeRequest) -> FakeResponse:
        if not self.authorized(req):
            return self.unauthorized()
        try:
            body = req.json()
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict) or not body.get("prompt"):
            return openai_error(400, "Missing required parameter: 'prompt'.", param="prompt")
        return self.answer(body, int(body.get("n") or 1))

    def _edits(self, req: FakeRequest) -> FakeResponse:
        if not self.authorized(req):
            return self.unauthorized()
        fields, files = req.multipart()
        if not files.get("image") and not files.get("image[]"):
            return openai_error(400, "Missing required parameter: 'image'.", param="image")
        if not fields.get("prompt"):
            return openai_error(400, "Missing required parameter: 'prompt'.", param="prompt")
        params = {key: values[0] for key, values in fields.items()}
        return self.answer(params, int(params.get("n") or 1))

    def _variations(self, req: FakeRequest) -> FakeResponse:
        if not self.authorized(req):
            return self.unauthorized()
        fields, files = req.multipart()
        if len(files.get("image", [])) != 1:
            return openai_error(400, "Expected exactly one 'image' file.", param="image")
        params = {key: values[0] for key, values in fields.items()}
        return self.answer(params, int(params.get("n") or 1))

    def _file(self, req: FakeRequest) -> FakeResponse:
        token = req.match.group("token") if req.match else ""
        with self._lock:
            found = self._files.get(token)
        if found is None:
            return FakeResponse(404, "not found")
        data, ctype = found
        return FakeResponse(200, data, headers={"Content-Type": ctype})

    # --- answers ---------------------------------------------------------------------------

    def new_image(self, fmt: str = "png") -> bytes:
        data = image_bytes(next(self._counter), fmt)
        with self._lock:
            self.served.append(data)
        return data

    def image_item(self, data: bytes, response_format: str, fmt: str = "png") -> dict[str, Any]:
        if response_format == "url":
            token = uuid.uuid4().hex
            with self._lock:
                self._files[token] = (data, CONTENT_TYPES.get(fmt, "image/png"))
            return {"url": f"{self.url}/files/{token}.{fmt}"}
        return {"b64_json": base64.b64encode(data).decode()}

    def answer(self, params: dict[str, Any], n: int) -> FakeResponse:
        """`n` images in OpenAI's response shape."""
        model = str(params.get("model") or "")
        response_format = str(params.get("response_format") or self.default_response_format)
        data = [self.image_item(self.new_image(), response_format) for _ in range(n)]
        if model.startswith("dall-e-3"):
            for item in data:
                item["revised_prompt"] = f"A revised {params.get('prompt')}"
        body: dict[str, Any] = {"created": 1_700_000_000, "data": data}
        if model.startswith("gpt-image"):
            body.update(
                background=params.get("background") or "opaque",
                output_format=params.get("output_format") or "png",
                quality=params.get("quality") or "medium",
                size=params.get("size") or "1024x1024",
                usage={
                    "input_tokens": 50,
                    "input_tokens_details": {"image_tokens": 40, "text_tokens": 10},
                    "output_tokens": 1056 * n,
                    "total_tokens": 50 + 1056 * n,
                },
            )
        return FakeResponse(200, body)


class FakeAzureOpenAI(FakeOpenAI):
    """Azure OpenAI deployments: `.../openai/deployments/<name>/images/...?api-version=`."""

    def install(self) -> None:
        base = r"/openai/deployments/(?P<deployment>[^/]+)/images"
        self.upstream.route("POST", rf"{base}/generations", self._azure(self._generations))
        self.upstream.route("POST", rf"{base}/edits", self._azure(self._edits))

    def authorized(self, req: FakeRequest) -> bool:
        if self.api_key is None:
            return True
        return self.api_key in (req.headers.get("api-key"), req.headers.get("authorization"))

    def _azure(self, handler: Any) -> Any:
        def check(req: FakeRequest) -> FakeResponse:
            if not req.query.get("api-version"):
                return FakeResponse(
                    404, {"error": {"code": "404", "message": "Resource not found"}}
                )
            response: FakeResponse = handler(req)
            return response

        return check


class FakeXAI(FakeOpenAI):
    """xAI: generations only, `url` by default, `mime_type` per image, cost in usage."""

    default_response_format = "url"

    def install(self) -> None:
        self.upstream.route("POST", rf"{self.prefix}/images/generations", self._generations)

    def answer(self, params: dict[str, Any], n: int) -> FakeResponse:
        for name in ("size", "style"):
            if name in params:
                return FakeResponse(
                    400,
                    {
                        "code": "Client specified an invalid argument",
                        "error": f"{name} is not supported",
                    },
                )
        response_format = str(params.get("response_format") or self.default_response_format)
        data = []
        for _ in range(n):
            item = self.image_item(self.new_image(), response_format)
            item.update(mime_type="image/png", revised_prompt="")
            data.append(item)
        return FakeResponse(200, {"data": data, "usage": {"cost_in_usd_ticks": 700_000_000 * n}})


class FakeNebius(FakeOpenAI):
    """Nebius: generations only, one image per call, `{"detail": ...}` errors."""

    default_response_format = "url"

    def install(self) -> None:
        self.upstream.route("POST", rf"{self.prefix}/images/generations", self._generations)

    def answer(self, params: dict[str, Any], n: int) -> FakeResponse:
        for name in ("width", "height"):
            value = params.get(name, 512)
            if not isinstance(value, int) or not 64 <= value <= 2048:
                detail = [{"loc": ["body", name], "msg": "must be 64-2048", "type": "value_error"}]
                return FakeResponse(422, {"detail": detail})
        fmt = str(params.get("response_extension") or "webp")
        response_format = str(params.get("response_format") or self.default_response_format)
        item = self.image_item(self.new_image(fmt), response_format, fmt)
        return FakeResponse(200, {"data": [item], "id": uuid.uuid4().hex})
