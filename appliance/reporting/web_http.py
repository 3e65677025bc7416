"""The status server's HTTP side: the guarded stdlib server, the request handler, its routes and the page.

The server guards itself: a socket timeout drops slow clients, a cap on open connections turns a flood away, bad
requests get a 4xx and nothing a client sends can make it print a traceback. Everything is read-only (GET, HEAD).
The page and its Content-Security-Policy come from appliance.reporting.web_page, through the StatusServer.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from appliance.reporting.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("appliance.reporting.web")

MAX_CONNECTIONS = 32  # open connections at once; more are closed at once (a Pi has little memory for threads)
CLIENT_TIMEOUT = 10.0  # seconds a client may take to send its request or read the answer
TEXT = "text/plain; charset=utf-8"


class App(Protocol):
    """What the routes read: web.StatusServer is the one App."""

    token: str | None
    metrics: Metrics
    page: tuple[bytes, str]

    def status_json(self) -> dict[str, Any] | None: ...

    def view(self) -> dict[str, Any]: ...

    def snapshot_jpeg(self) -> bytes | None: ...


class Server(ThreadingHTTPServer):
    """A threading HTTP server that keeps at most MAX_CONNECTIONS open and never prints a client's failure.
    `app` is the StatusServer (an App) its handlers read."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 16
    app: App

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kw)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("http: %s turned away: %d connections open", client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished or sent garbage is not the service's problem: one debug line, no traceback.
        log.debug("http: request from %s failed", client_address[0], exc_info=True)


class Handler(BaseHTTPRequestHandler):
    """One request: the bearer token checked, then a route of ROUTES; anything but GET and HEAD is refused."""

    timeout = CLIENT_TIMEOUT
    server_version = "mask-appliance"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # a garbled request line still gets a status line with its 400
    server: Server

    @property
    def app(self) -> App:
        return self.server.app

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        log.debug("http: %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _reject(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only\n", TEXT, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _reject

    def _serve(self, body: bool) -> None:
        self._body = body
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query, max_num_fields=8)
        except ValueError:
            self._send(HTTPStatus.BAD_REQUEST, b"bad request\n", TEXT)
            return
        if not self._authorized(query):
            self._send(HTTPStatus.UNAUTHORIZED, b"a bearer token is needed\n", TEXT,
                       extra={"WWW-Authenticate": 'Bearer realm="mask-appliance"'})
            return
        try:
            route = ROUTES.get(url.path)
            if route is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", TEXT)
                return
            route(self)
        except (ConnectionError, TimeoutError):
            raise  # the client went away: handle_error notes it
        except Exception:
            log.exception("http: %s failed", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error (see the service's log)\n", TEXT)

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        token = self.app.token
        if not token:
            return True
        header = self.headers.get("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def _send(self, status: HTTPStatus, payload: bytes, content_type: str, extra: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if getattr(self, "_body", True):
            self.wfile.write(payload)

    # -- the routes ----------------------------------------------------------------------------------------------
    def metrics(self) -> None:
        self._send(HTTPStatus.OK, self.app.metrics.render(), CONTENT_TYPE)

    def status(self) -> None:
        status = self.app.status_json()
        if status is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b'{"error": "no status yet"}\n', "application/json")
        else:
            self._send(HTTPStatus.OK, json.dumps(status, default=str).encode(), "application/json")

    def view(self) -> None:
        self._send(HTTPStatus.OK, json.dumps(self.app.view(), default=str).encode(), "application/json")

    def page(self) -> None:
        page, csp = self.app.page
        self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", extra={
            "Content-Security-Policy": csp, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})

    def snapshot(self) -> None:
        jpeg = self.app.snapshot_jpeg()
        if jpeg is None:
            self._send(HTTPStatus.NOT_FOUND, b"no snapshot\n", TEXT)
        else:
            self._send(HTTPStatus.OK, jpeg, "image/jpeg")

    def no_icon(self) -> None:
        self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")  # browsers ask; a 404 would be an error each time


ROUTES = {"/metrics": Handler.metrics, "/status.json": Handler.status, "/view.json": Handler.view,
          "/": Handler.page, "/snapshot.jpg": Handler.snapshot, "/favicon.ico": Handler.no_icon}
