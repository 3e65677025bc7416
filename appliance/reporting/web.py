"""One small HTTP server: Prometheus metrics, status.json and a live, read-only status page for the shop.

An event-log output (see events.py): `on_record`, `on_status` and `on_frame` update a small in-memory view
under a lock and return. The server runs in threads of its own (stdlib ThreadingHTTPServer), never touches the frame
loop, and guards itself (web_http.py). This module is the output and its life: built from `[http]`, started,
closed. What the page shows is web_view.py; the page itself is static/status.html.

GET /metrics      Prometheus text format (appliance.reporting.metrics; a registry of our own)
GET /status.json  what status.json holds
GET /             the page: door state in large type and colour, today's counts, the last decisions, fps, camera
                  and model; it polls /view.json every second, with no reload. No face image unless
                  `[http] snapshot = true` (and then faces are blurred unless `[events] save_faces` is on).
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

from appliance.config import ConfigError, HttpConfig, parse_listen, read_token
from appliance.reporting.metrics import Metrics
from appliance.reporting.web_http import MAX_CONNECTIONS, Handler, Server
from appliance.reporting.web_page import load_page
from appliance.reporting.web_view import Snapshot, StatusView

__all__ = ["MAX_CONNECTIONS", "Handler", "HttpConfig", "StatusServer", "from_config", "parse_listen"]

log = logging.getLogger(__name__)


class StatusServer:
    """The HTTP output. Build it with `from_config`; `url` is where it listens; `close()` stops it."""

    def __init__(self, host: str, port: int, *, token: str | None = None, database: Path | None = None,
                 snapshot: bool = False, blur_faces: bool = True) -> None:
        self.page = load_page()  # (the page, its CSP): appliance/reporting/static/status.html, the package's data
        self.metrics = Metrics()
        self.token = token
        self.snapshot = snapshot
        self.status_view = StatusView()
        self.snapshots = Snapshot(blur_faces)
        if database is not None:
            self.status_view.prime(Path(database))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_Server", (Server,), {"address_family": family})
        self.httpd = server_cls((host, port), Handler)
        self.httpd.app = self
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="http", daemon=True)
        self._closed = False

    def start(self) -> StatusServer:
        self._thread.start()
        log.info("http: serving /, /status.json and /metrics on %s%s", self.url,
                 " (bearer token required)" if self.token else "")
        return self

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    # -- the Output protocol (event writer thread: quick, never blocks on a client) ------------------------------
    def on_record(self, record: dict) -> None:
        self.metrics.on_record(record)
        self.status_view.on_record(record)

    def on_status(self, status: dict) -> None:
        self.metrics.on_status(status)
        self.status_view.on_status(status)

    def on_frame(self, frame: dict) -> None:
        self.metrics.on_frame(frame)
        if self.snapshot:
            self.snapshots.on_frame(frame)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    # -- what the handlers read ----------------------------------------------------------------------------------
    def status_json(self) -> dict[str, Any] | None:
        return self.status_view.status_json()

    def view(self) -> dict[str, Any]:
        return {**self.status_view.view(), "snapshot": self.snapshot and self.snapshots.ready}

    def snapshot_jpeg(self) -> bytes | None:
        """The latest frame as JPEG, faces pixelated unless allowed; None while [http] snapshot is off."""
        return self.snapshots.jpeg() if self.snapshot else None


def from_config(cfg: HttpConfig, events: Any = None, *, save_faces: bool = False) -> StatusServer | None:
    """A started status server, or None when `[http] listen` is empty (nothing listens).

    `events` is the service's EventLog (today's counts and the last decisions are read from its file at start);
    `save_faces` is `[events] save_faces`: faces on the snapshot are blurred unless it is on.
    """
    if not cfg.listen:
        return None
    host, port = parse_listen(cfg.listen)
    try:
        token = read_token(cfg.token_file) if cfg.token_file is not None else None
    except OSError as exc:
        raise ConfigError(f"[http] token_file = '{cfg.token_file}': cannot read ({exc.strerror})") from None
    if token == "":
        raise ConfigError(f"[http] token_file = '{cfg.token_file}' is empty")
    database = getattr(events, "path", None)
    load_page()  # before the socket: a missing page is a broken install, not a port that cannot be listened on
    try:
        server = StatusServer(host, port, token=token, database=database, snapshot=cfg.snapshot,
                              blur_faces=not save_faces)
    except OSError as exc:  # port taken, address not on this machine, a port under 1024 without the right
        raise ConfigError(f"[http] listen = {cfg.listen!r}: cannot listen there ({exc.strerror or exc})") from None
    return server.start()
