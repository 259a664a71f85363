"""A careless OpenAI-compatible endpoint that echoes the request headers (API key included), for the tests
that the llm judge passes the key on nowhere (imported by unit and integration tests; pytest puts this
folder on sys.path because tests/conftest.py lives here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET_KEY = "sk-SECRET-0123456789abcdef0123456789abcdef"


class EchoHeaders(BaseHTTPRequestHandler):
    """Echoes the headers in a 500 body (after padding that puts the key across byte 300, where error bodies
    used to be cut), in a 401 body, or as a 200 reply's content (with the bare token too); the path's first
    part picks which: /err500/..., /err401/..., anything else."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        echoed = str(self.headers)
        auth = self.headers.get("Authorization", "")
        if self.path.startswith("/err500/"):
            body = "x" * (275 - len("Authorization: Bearer ")) + f"Authorization: {auth}\n{echoed}"
            return self._send(500, body.encode(), "text/plain")
        if self.path.startswith("/err401/"):
            return self._send(401, json.dumps({"error": "bad key", "headers": dict(self.headers)}).encode())
        content = f"safe. You sent {auth.split()[-1]} with these headers:\n{echoed}"
        reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        self._send(200, json.dumps(reply).encode())

    def _send(self, status: int, data: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@contextmanager
def serve() -> Iterator[str]:
    """The echoing server on a free local port; yields its base URL (append /err500/v1 etc.)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHeaders)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def leaks(text: str, key: str = SECRET_KEY) -> bool:
    """Whether any 8 characters in a row of the key's secret part appear in `text` (a clipped key too)."""
    secret = key.removeprefix("sk-")
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))
