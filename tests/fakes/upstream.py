"""A real HTTP server on 127.0.0.1 that plays a provider, records every request it is
sent, and answers from routes the test (or a provider fake built on it) installs.

Routes are (method, path regex) -> handler(FakeRequest) -> FakeResponse. A test can also
queue one-shot overrides (`fail_next(...)`) that answer before the route, to script
429-then-success or 5xx-then-success sequences, and delays to script timeouts.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakeRequest:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    match: re.Match[str] | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    def multipart(self) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, str, bytes]]]]:
        """(fields, files) of a multipart/form-data body; files are (filename, type, bytes)."""
        from email.parser import BytesParser
        from email.policy import HTTP

        ctype = self.headers.get("content-type", "")
        msg = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + self.body
        )
        fields: dict[str, list[str]] = {}
        files: dict[str, list[tuple[str, str, bytes]]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            decoded = part.get_payload(decode=True)  # bytes for a leaf part (None if empty)
            payload = decoded if isinstance(decoded, bytes) else b""
            if filename is not None:
                files.setdefault(str(name), []).append((filename, part.get_content_type(), payload))
            else:
                fields.setdefault(str(name), []).append(payload.decode())
        return fields, files


@dataclass
class FakeResponse:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, dict | list):
            headers.setdefault("Content-Type", "application/json")
            return json.dumps(self.body).encode(), headers
        if isinstance(self.body, str):
            headers.setdefault("Content-Type", "text/plain")
            return self.body.encode(), headers
        return self.body, headers


Handler = Callable[[FakeRequest], FakeResponse]


class FakeUpstream:
    """Start with `with FakeUpstream() as up:`; `up.url` is `http://127.0.0.1:<port>`
    (`port` 0: a free one; a given port lets a test bring a server back where it was)."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[FakeRequest] = []
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._overrides: list[FakeResponse] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Answer `method` requests whose path fully matches `pattern` with `handler`."""
        self._routes.append((method.upper(), re.compile(pattern), handler))

    def fail_next(self, *responses: FakeResponse) -> None:
        """Answer the next requests (any route) with these, in order, before the routes."""
        with self._lock:
            self._overrides.extend(responses)

    def requests_to(self, pattern: str) -> list[FakeRequest]:
        rx = re.compile(pattern)
        return [r for r in list(self.requests) if rx.fullmatch(r.path)]

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _dispatch(self, req: FakeRequest) -> FakeResponse:
        with self._lock:
            self.requests.append(req)
            override = self._overrides.pop(0) if self._overrides else None
        if override is not None:
            return override
        for method, rx, handler in self._routes:
            m = rx.fullmatch(req.path)
            if m and method == req.method:
                req.match = m
                return handler(req)
        return FakeResponse(404, {"error": {"message": f"no fake route for {req.path}"}})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = FakeRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                resp = upstream._dispatch(req)
                if resp.delay_s:
                    time.sleep(resp.delay_s)
                payload, headers = resp.encoded()
                try:
                    self.send_response(resp.status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return _Handler


class VendorFake:
    """Base of the per-vendor fakes: owns a FakeUpstream (`self.upstream`, set in the
    subclass's __init__ before routes are added) and exposes its surface."""

    upstream: FakeUpstream

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def requests(self) -> list[FakeRequest]:
        return self.upstream.requests

    def requests_to(self, pattern: str) -> list[FakeRequest]:
        return self.upstream.requests_to(pattern)

    def fail_next(self, *responses: FakeResponse) -> None:
        self.upstream.fail_next(*responses)

    def close(self) -> None:
        self.upstream.close()

    def __enter__(self) -> Self:
        self.upstream.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
