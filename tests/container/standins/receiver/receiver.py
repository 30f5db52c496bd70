"""The container tests' receiver of alerts and pings, a service of their compose stack.

It answers every request with 200 after RECEIVER_DELAY seconds (so that the sender is seen
running) and records it: method, path, Authorization header and body. ``GET /received`` lists
what it recorded, oldest first, as JSON (that request is not recorded).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDED: list[dict[str, str]] = []
LOCK = threading.Lock()
DELAY = float(os.environ.get("RECEIVER_DELAY") or 0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/received":
            with LOCK:
                listing = json.dumps(RECORDED).encode()
            self.answer(listing)
            return
        self.record()

    def do_POST(self) -> None:
        self.record()

    def record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with LOCK:
            RECORDED.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization") or "",
                    "body": body.decode("utf-8", "replace"),
                }
            )
        time.sleep(DELAY)
        self.answer(b"")

    def answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    # PID 1 gets no default SIGTERM action: stop at once on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("0.0.0.0", 8080), Handler)  # noqa: S104 - the container's port
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
