"""A fake Black Forest Labs API: FLUX tasks that stay `Pending` for a few polls.

- `POST /v1/{model}` (any endpoint name) answers `{"id", "polling_url"}`, the polling
  URL being `GET /v1/get_result?id=<id>` on this fake;
- `GET /v1/get_result?id=` answers `Pending` for the first `polls` reads, then `final`
  (default `Ready`, with `result.sample` = `GET /delivery/<id>.png`; any other status,
  e.g. `Content Moderated` or `Error`, is answered as is);
- `GET /delivery/<id>.png` serves the task's image (a valid PNG, listed in `served`),
  without a key, like BFL's signed delivery URLs.

With `key` set, API calls without `x-key: <key>` get a 403 `{"detail": ...}`.

    with FakeBFL(key="bfl-test", polls=2) as fake:
        ... ProviderConfig(name="bfl", base_url=fake.url, keys=(WeightedKey("bfl-test"),))
"""

from __future__ import annotations

import io
import itertools
import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake


def png(index: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    """A small valid PNG whose colour depends on `index`."""
    colour = ((20 + 50 * index) % 256, (220 - 40 * index) % 256, (70 * index) % 256)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Task:
    id: str
    model: str
    body: dict[str, Any]
    reads: int = 0
    image: bytes | None = None


class FakeBFL(VendorFake):
    """BFL's task API on 127.0.0.1 (see the module doc)."""

    def __init__(self, *, key: str | None = None, polls: int = 2, final: str = "Ready") -> None:
        self.key = key
        self.polls = polls
        self.final = final
        self.tasks: dict[str, Task] = {}
        self.served: list[bytes] = []
        self.upstream = FakeUpstream()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.upstream.route("GET", r"/v1/get_result", self._result)
        self.upstream.route("GET", r"/delivery/(?P<id>[^/]+)\.png", self._delivery)
        self.upstream.route("POST", r"/v1/(?P<model>[^/]+)", self._create)

    # --- the API ----------------------------------------------------------------------

    def _forbidden(self, req: FakeRequest) -> FakeResponse | None:
        if self.key is None or req.headers.get("x-key") == self.key:
            return None
        return FakeResponse(403, {"detail": "Not authenticated - Invalid Authentication"})

    def _create(self, req: FakeRequest) -> FakeResponse:
        denied = self._forbidden(req)
        if denied is not None:
            return denied
        body = req.json()
        if not isinstance(body, dict) or (not body.get("prompt") and "image" not in body):
            return FakeResponse(
                422,
                {
                    "detail": [
                        {"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}
                    ]
                },
            )
        with self._lock:
            tid = f"task-{next(self._ids)}"
            self.tasks[tid] = Task(id=tid, model=req.match["model"] if req.match else "", body=body)
        return FakeResponse(200, {"id": tid, "polling_url": f"{self.url}/v1/get_result?id={tid}"})

    def _result(self, req: FakeRequest) -> FakeResponse:
        denied = self._forbidden(req)
        if denied is not None:
            return denied
        tid = (req.query.get("id") or [""])[0]
        task = self.tasks.get(tid)
        if task is None:
            return FakeResponse(200, {"id": tid, "status": "Task not found"})
        with self._lock:
            task.reads += 1
            if task.reads <= self.polls:
                return FakeResponse(200, {"id": tid, "status": "Pending", "progress": 0.5})
            if self.final != "Ready":
                details = {"reason": "flagged by the fake"} if "Moderated" in self.final else None
                return FakeResponse(200, {"id": tid, "status": self.final, "details": details})
            if task.image is None:
                task.image = png(len(self.served))
                self.served.append(task.image)
        return FakeResponse(
            200,
            {
                "id": tid,
                "status": "Ready",
                "result": {
                    "sample": f"{self.url}/delivery/{tid}.png",
                    "prompt": task.body.get("prompt"),
                    "seed": task.body.get("seed", 1),
                },
            },
        )

    def _delivery(self, req: FakeRequest) -> FakeResponse:
        task = self.tasks.get(req.match["id"] if req.match else "")
        if task is None or task.image is None:
            return FakeResponse(404, "not found")
        return FakeResponse(200, task.image, headers={"Content-Type": "image/png"})
