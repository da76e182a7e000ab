"""A real HTTP server on loopback for tests: routes map a path to (status, headers, body) or a callable."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = tuple[int, dict[str, str], bytes] | Callable[["Handler"], tuple[int, dict[str, str], bytes]]


class Handler(BaseHTTPRequestHandler):
    server: LocalServer

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, dict(self.headers), self.body))
        route = self.server.routes.get(self.path.split("?")[0])
        status, headers, body = (404, {"content-type": "text/plain"}, b"not found") if route is None else (
            route(self) if callable(route) else route)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _serve

    def log_message(self, *args) -> None:  # keep test output clean
        pass


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1"):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (a crawler or search client that timed out) is expected here, not news."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def html(body: str, title: str = "Test page") -> tuple[int, dict[str, str], bytes]:
    page = f"<html><head><title>{title}</title></head><body>{body}</body></html>"
    return 200, {"content-type": "text/html; charset=utf-8"}, page.encode()


def as_json(obj, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "application/json"}, json.dumps(obj).encode()
