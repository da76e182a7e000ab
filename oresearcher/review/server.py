"""The review page: `oresearcher review` serves the spot-check queue to reviewers' browsers.

    oresearcher review                       # http://127.0.0.1:8765/?token=... (printed)
    ORESEARCHER_REVIEW_TOKEN=... oresearcher review --set review.host=0.0.0.0   # a team's reviewers

Every request needs the token: `?token=` once (the page then keeps it in a same-site, HTTP-only cookie and
drops it from the address bar), a `Bearer` header, or the cookie; anything else is 401. It listens on
localhost unless `review.host` says otherwise, and on localhost it answers only requests addressed to a local
host name (a web page elsewhere cannot reach it through DNS rebinding). Trace text is untrusted (it holds web
pages): the page's script puts it in the document only as text nodes, and the Content-Security-Policy allows
no script but the page's own, so a `<script>` in an observation is shown, never run.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from oresearcher.config import ReviewConfig
from oresearcher.review.queue import ReviewError, ReviewQueue

STATIC = Path(__file__).parent / "static"
COOKIE = "oresearcher_review"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
_STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a source link clicked on the page learns nothing about it
    "Cache-Control": "no-store",
}


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS or host.startswith("127.")


class ReviewServer:
    """The page and its JSON API over a `ReviewQueue`; `start()` serves from a thread, `serve_forever()` blocks."""

    def __init__(self, queue: ReviewQueue, cfg: ReviewConfig, token: str, port: int | None = None):
        if len(token) < 16:
            raise ValueError("the review token must be at least 16 characters")
        self.queue, self.cfg, self.token = queue, cfg, token
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = ThreadingHTTPServer((cfg.host, cfg.port if port is None else port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{port}/"

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="review-page")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorized(self, handler: BaseHTTPRequestHandler, query_token: str | None) -> bool:
        offered = [query_token or ""]
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            offered.append(auth[7:].strip())
        cookie = SimpleCookie(handler.headers.get("Cookie", ""))
        if COOKIE in cookie:
            offered.append(cookie[COOKIE].value)
        return any(hmac.compare_digest(t.encode(), self.token.encode()) for t in offered if t)


class _Handler(BaseHTTPRequestHandler):
    app: ReviewServer
    server_version = "oresearcher-review"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - the base class's name; the token never reaches a log
        pass

    # ---------------------------------------------------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {**_HEADERS, "Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})
                     }.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data) -> None:
        self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._send(status, f"{status}: {message}\n".encode(), "text/plain; charset=utf-8")

    def _guard(self) -> tuple[str, dict] | None:
        """(path, query) of an allowed request; None once an error was sent."""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if is_local(self.app.cfg.host) and not is_local(_host_name(self.headers.get("Host") or "")):
            self._error(HTTPStatus.FORBIDDEN, "this page answers only requests to a local address")
            return None
        if not self.app.authorized(self, (query.get("token") or [None])[0]):
            self._error(HTTPStatus.UNAUTHORIZED, "a token is required: open the address `oresearcher review` printed")
            return None
        return parts.path, query

    # ---------------------------------------------------------------------------------------------- routes
    def do_GET(self):  # noqa: N802 - the base class's name
        guarded = self._guard()
        if guarded is None:
            return
        path, query = guarded
        if "token" in query:  # keep it in a cookie, out of the address bar and the history
            cookie = f"{COOKIE}={self.app.token}; HttpOnly; SameSite=Strict; Path=/"
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": path or "/", "Set-Cookie": cookie})
        elif path == "/":
            self._send(HTTPStatus.OK, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
        elif path.startswith("/static/") and path[8:] in _STATIC_TYPES:
            self._send(HTTPStatus.OK, (STATIC / path[8:]).read_bytes(), _STATIC_TYPES[path[8:]])
        elif path == "/api/config":
            self._json(HTTPStatus.OK, {"reason_codes": self.app.cfg.reason_codes})
        elif path == "/api/progress":
            self._json(HTTPStatus.OK, vars(self.app.queue.progress()))
        elif path == "/api/next":
            reviewer = (query.get("reviewer") or [""])[0].strip()
            if not reviewer:
                self._error(HTTPStatus.BAD_REQUEST, "say who is reviewing (?reviewer=NAME)")
                return
            item = self.app.queue.claim(reviewer[:80], self.app.cfg.lease_s)
            progress = self.app.queue.progress(item["batch"] if item else None)  # the batch in hand, else all
            self._json(HTTPStatus.OK, {"item": _public(item), "progress": vars(progress)})
        else:
            self._error(HTTPStatus.NOT_FOUND, "no such page")

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        guarded = self._guard()
        if guarded is None:
            return
        path, _ = guarded
        m = re.fullmatch(r"/api/items/(\d+)/verdict", path)
        if not m:
            self._error(HTTPStatus.NOT_FOUND, "no such endpoint")
            return
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")  # a cross-site form cannot
            return
        try:
            body = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 100_000)))
            reviewer = str(body.get("reviewer", "")).strip()[:80]
            reason = body.get("reason_code")
            if not reviewer:
                raise ReviewError("a verdict needs the reviewer's name")
            if body.get("verdict") == "reject" and reason not in self.app.cfg.reason_codes:
                raise ReviewError(f"a rejection needs a reason code, one of {self.app.cfg.reason_codes}")
            self.app.queue.decide(int(m.group(1)), reviewer, str(body.get("verdict")), reason,
                                  str(body.get("comment", ""))[:2000], self.app.cfg.lease_s)
        except (ValueError, AttributeError) as e:  # ReviewError is a ValueError, as is bad JSON
            self._error(HTTPStatus.CONFLICT if isinstance(e, ReviewError) else HTTPStatus.BAD_REQUEST, str(e))
            return
        batch = self.app.queue.item(int(m.group(1)))["batch"]
        self._json(HTTPStatus.OK, {"progress": vars(self.app.queue.progress(batch))})


def _host_name(header: str) -> str:
    """The host part of a Host header: `127.0.0.1:8765` -> `127.0.0.1`, `[::1]:8765` -> `[::1]`."""
    return header.split("]")[0] + "]" if header.startswith("[") else header.rsplit(":", 1)[0]


def _public(item: dict | None) -> dict | None:
    if item is None:
        return None
    return {"id": item["id"], "batch": item["batch"], "trace_id": item["trace_id"], "topic": item["topic"],
            **item["payload"]}
