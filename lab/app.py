"""The lab's HTTP app: a threaded HTTP/1.1 server that sits behind the sidecar in a server pod.

Run as a script (``python app.py --port 8080 --name server1 --log app.jsonl``), standalone: it
imports nothing from hopscope, so it runs in a namespace with any Python 3.

Paths:
  ``/`` and ``/ok``          200, a short body
  ``/status/<code>``         that status (500, 503 ...)
  ``/bytes/<n>``             200 with an n-byte body (the long transfer)
  ``/delay/<ms>``            200 after sleeping ms milliseconds (server-side delay)
Every response carries what the app received on the sidecar's upstream leg, so the client's ground
truth covers both legs: ``x-hs-upstream-request-id`` (the x-request-id: envoy's when the client sent
none, nginx's and haproxy's always), ``x-hs-upstream-path`` (the path after the sidecar's rewrite)
and ``x-hs-upstream-host`` (the Host header, which nginx rewrites). The app logs one JSON line per
request with them.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

CHUNK = bytes(range(256)) * 256  # 64 KiB of a recognisable pattern


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without it the body waits for an ACK
    server_version = "hopscope-lab-app/1"
    log_lock = threading.Lock()
    log_file: TextIO | None = None
    name = "app"

    def do_GET(self) -> None:
        status, body, delay_ms = self._route(self.path)
        if delay_ms:
            time.sleep(delay_ms / 1000)
        rid = self.headers.get("x-request-id", "")
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if len(body) > 1024 else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-hs-upstream-request-id", rid)
        self.send_header("x-hs-upstream-path", self.path)
        self.send_header("x-hs-upstream-host", self.headers.get("host", ""))
        self.send_header("x-hs-server", self.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._log(status, len(body), rid)

    do_POST = do_GET
    do_HEAD = do_GET

    def _route(self, path: str) -> tuple[int, bytes, int]:
        if self.command == "POST":
            length = int(self.headers.get("Content-Length", "0") or 0)
            if length:
                self.rfile.read(length)
        parts = path.split("?")[0].strip("/").split("/")
        try:
            if parts[0] in ("", "ok"):
                return 200, f"ok from {self.name}\n".encode(), 0
            if parts[0] == "status" and len(parts) == 2:
                code = int(parts[1])
                return code, f"status {code} from {self.name}\n".encode(), 0
            if parts[0] == "bytes" and len(parts) == 2:
                n = int(parts[1])
                reps = n // len(CHUNK) + 1
                return 200, (CHUNK * reps)[:n], 0
            if parts[0] == "delay" and len(parts) == 2:
                return 200, f"delayed from {self.name}\n".encode(), int(parts[1])
        except ValueError:
            return 400, b"bad number\n", 0
        return 404, b"not found\n", 0

    def _log(self, status: int, nbytes: int, rid: str) -> None:
        if self.log_file is None:
            return
        rec = {
            "time_ns": time.time_ns(),
            "server": self.name,
            "method": self.command,
            "path": self.path,
            "status": status,
            "bytes": nbytes,
            "x_request_id": rid,
            "host": self.headers.get("host", ""),
            "peer": f"{self.client_address[0]}:{self.client_address[1]}",
        }
        with self.log_lock:
            self.log_file.write(json.dumps(rec) + "\n")
            self.log_file.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="app")
    parser.add_argument("--log", help="JSON-lines request log")
    args = parser.parse_args()
    Handler.name = args.name
    if args.log:
        Handler.log_file = open(args.log, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the server
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
