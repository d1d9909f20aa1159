"""The webhook receiver of tests/e2e/test_compose.py, run in a container of the image
(`python -c` with this file's text): every POST appended to HOOKS as one JSON line
{"headers", "body"} and answered 200; a GET answers 200 (its health check). Nothing is
verified here: the test verifies each delivery's signature itself."""

from __future__ import annotations

import http.server
import json
import threading

HOOKS = "/tmp/hooks.jsonl"
PORT = 8000
_lock = threading.Lock()  # one line at a time from the server's threads


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
        headers = {k.lower(): v for k, v in self.headers.items()}
        with _lock, open(HOOKS, "a") as out:
            out.write(json.dumps({"headers": headers, "body": body}) + "\n")
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per delivery would flood the container's log."""


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Hook).serve_forever()
