"""One small HTTP server: Prometheus metrics, status.json and a live, read-only status page for the shop.

An event-log output (see appliance.events): `on_record`, `on_status` and `on_frame` update a small in-memory view
under a lock and return. The server runs in threads of its own (stdlib ThreadingHTTPServer), never touches the frame
loop, and guards itself: a socket timeout drops slow clients, a cap on open connections turns a flood away, bad
requests get a 4xx and nothing a client sends can make it print a traceback.

GET /metrics      Prometheus text format (appliance.metrics; a registry of our own)
GET /status.json  what status.json holds
GET /             the page: door state in large type and colour, today's counts, the last decisions, fps, camera
                  and model; it polls /view.json every second, with no reload. No face image unless
                  `[http] snapshot = true` (and then faces are blurred unless `[events] save_faces` is on).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections import deque
from datetime import date, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from appliance import events as events_mod
from appliance.config import ConfigError, HttpConfig
from appliance.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)





MAX_CONNECTIONS = 32  # open connections at once; more are closed at once (a Pi has little memory for threads)
CLIENT_TIMEOUT = 10.0  # seconds a client may take to send its request or read the answer
RECENT = 12  # decisions shown on the page
SNAPSHOT_EVERY = 1.0  # seconds between frames kept for /snapshot.jpg


def parse_listen(value: str, origin: str = "<config>") -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ConfigError naming the key otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or any(c.isspace() for c in host):
        raise ConfigError(f"{origin}: [http] listen = {value!r} is not address:port (e.g. \"127.0.0.1:8080\")")
    return host, int(port)


def check(cfg: HttpConfig, origin: str) -> None:
    if not cfg.listen:
        return
    parse_listen(cfg.listen, origin)
    if cfg.token_file is not None:
        if not Path(cfg.token_file).is_file():
            raise ConfigError(f"{origin}: [http] token_file = '{cfg.token_file}' does not exist")
        if not _read_token(cfg.token_file):
            raise ConfigError(f"{origin}: [http] token_file = '{cfg.token_file}' is empty")


def _read_token(path: Path) -> str:
    return next(iter(Path(path).read_text().splitlines()), "").strip()


class StatusServer:
    """The HTTP output. Build it with `from_config`; `url` is where it listens; `close()` stops it."""

    def __init__(self, host: str, port: int, *, token: str | None = None, database: Path | None = None,
                 snapshot: bool = False, blur_faces: bool = True) -> None:
        self.metrics = Metrics()
        self.token = token
        self.snapshot = snapshot
        self.blur_faces = blur_faces
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._day = date.today()
        self._today = {"allow": 0, "deny": 0, "idle": 0}
        self._door: str | None = None
        self._decision: str | None = None
        self._camera_up = True
        self._frame: dict[str, Any] | None = None
        self._frame_at = 0.0
        if database is not None:
            self._prime(Path(database))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_Server", (_Server,), {"address_family": family})
        self.httpd = server_cls((host, port), _Handler)
        self.httpd.app = self  # type: ignore[attr-defined]
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

    def _prime(self, database: Path) -> None:
        """Today's counts and the last decisions from the log, so a restart does not blank the page."""
        midnight = datetime.combine(date.today(), datetime.min.time()).timestamp()
        for state, n in events_mod.decision_counts(database, since=midnight).items():
            if state in self._today:
                self._today[state] = n
        for record in events_mod.recent_decisions(database, RECENT):  # none yet: an empty page is right
            self._recent.append(_decision_row(record))

    # -- the Output protocol (event writer thread: quick, never blocks on a client) ------------------------------
    def on_record(self, record: dict) -> None:
        self.metrics.on_record(record)
        kind, detail = record.get("kind"), record.get("detail") or {}
        with self._lock:
            self._roll_day()
            if kind == "decision":
                self._decision = record.get("state")
                if self._decision in self._today:
                    self._today[self._decision] += 1
                if detail.get("door"):
                    self._door = detail["door"]
                self._recent.append(_decision_row(record))
            elif kind == "fault" and detail.get("what") == "no frames":
                self._camera_up = False
                self._door = detail.get("door") or self._door
            elif kind == "fault" and detail.get("what") == "frames back":
                self._camera_up = True

    def on_status(self, status: dict) -> None:
        self.metrics.on_status(status)
        with self._lock:
            self._status = dict(status)
            self._door = status.get("door") or self._door
            self._decision = status.get("decision") or self._decision
            if "camera_lost" in status:
                self._camera_up = not status["camera_lost"]

    def on_frame(self, frame: dict) -> None:
        self.metrics.on_frame(frame)
        if self.snapshot and frame.get("image") is not None:
            now = time.monotonic()
            if now - self._frame_at >= SNAPSHOT_EVERY:  # keep a reference only; encoding is the client's thread's
                self._frame_at = now
                self._frame = {"image": frame["image"], "boxes": list(frame.get("boxes") or [])}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    # -- what the handlers read ----------------------------------------------------------------------------------
    def _roll_day(self) -> None:
        if date.today() != self._day:
            self._day = date.today()
            self._today = dict.fromkeys(self._today, 0)

    def status_json(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._status is None else dict(self._status)

    def view(self) -> dict[str, Any]:
        with self._lock:
            self._roll_day()
            s = self._status or {}
            return {
                "door": self._door, "decision": self._decision, "camera_up": self._camera_up,
                "fps": s.get("fps"), "frames": s.get("frames"), "uptime": s.get("uptime"),
                "model": Path(str(s.get("model") or "")).name or None, "model_sha256": s.get("model_sha256"),
                "running": s.get("running"), "today": dict(self._today), "recent": list(reversed(self._recent)),
                "snapshot": self.snapshot and self._frame is not None, "time": time.time(),
            }

    def snapshot_jpeg(self) -> bytes | None:
        frame = self._frame
        if frame is None:
            return None
        import cv2  # the appliance has OpenCV anyway; only this endpoint needs it here

        image = frame["image"].copy()
        if self.blur_faces:
            for box in frame["boxes"]:
                x1, y1, x2, y2 = (max(0, int(v)) for v in box[:4])
                face = image[y1:y2, x1:x2]
                if face.size:  # pixelate: nothing of the face survives, unlike a light Gaussian
                    small = cv2.resize(face, (6, 6), interpolation=cv2.INTER_AREA)
                    image[y1:y2, x1:x2] = cv2.resize(small, (face.shape[1], face.shape[0]),
                                                     interpolation=cv2.INTER_NEAREST)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
        return jpeg.tobytes() if ok else None


def _decision_row(record: dict) -> dict[str, Any]:
    detail = record.get("detail") or {}
    return {"id": record.get("id"), "time": record.get("time"), "decision": record.get("state"),
            "door": detail.get("door"), "masked": detail.get("masked"),
            "unmasked": (detail.get("unmasked") or 0) + (detail.get("incorrect") or 0)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 16

    def __init__(self, *args, **kw) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kw)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("http: %s turned away: %d connections open", client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # A client that vanished or sent garbage is not the service's problem: one debug line, no traceback.
        log.debug("http: request from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    timeout = CLIENT_TIMEOUT
    server_version = "mask-appliance"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # a garbled request line still gets a status line with its 400

    @property
    def app(self) -> StatusServer:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        log.debug("http: %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _reject(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only\n", "text/plain; charset=utf-8",
                   extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _reject

    def _serve(self, body: bool) -> None:
        self._body = body
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query, max_num_fields=8)
        except ValueError:
            self._send(HTTPStatus.BAD_REQUEST, b"bad request\n", "text/plain; charset=utf-8")
            return
        if not self._authorized(query):
            self._send(HTTPStatus.UNAUTHORIZED, b"a bearer token is needed\n", "text/plain; charset=utf-8",
                       extra={"WWW-Authenticate": 'Bearer realm="mask-appliance"'})
            return
        try:
            route = ROUTES.get(url.path)
            if route is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
                return
            route(self)
        except (ConnectionError, TimeoutError):
            raise  # the client went away: handle_error notes it
        except Exception:
            log.exception("http: %s failed", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error (see the service's log)\n",
                       "text/plain; charset=utf-8")

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
        self._send(HTTPStatus.OK, PAGE, "text/html; charset=utf-8", extra={
            "Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"})

    def snapshot(self) -> None:
        jpeg = self.app.snapshot_jpeg() if self.app.snapshot else None
        if jpeg is None:
            self._send(HTTPStatus.NOT_FOUND, b"no snapshot\n", "text/plain; charset=utf-8")
        else:
            self._send(HTTPStatus.OK, jpeg, "image/jpeg")


    def no_icon(self) -> None:
        self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")  # browsers ask; a 404 would be an error each time


ROUTES = {"/metrics": _Handler.metrics, "/status.json": _Handler.status, "/view.json": _Handler.view,
          "/": _Handler.page, "/snapshot.jpg": _Handler.snapshot, "/favicon.ico": _Handler.no_icon}

_STYLE = """
body{margin:0;font:18px system-ui,sans-serif;background:#111;color:#eee}
main{max-width:900px;margin:auto;padding:16px}
#door{border-radius:16px;padding:28px 16px;text-align:center;font-size:64px;font-weight:700;background:#555}
#door[data-state=locked]{background:#c62828}#door[data-state=released]{background:#2e7d32}
#door small{display:block;font-size:22px;font-weight:400;opacity:.9}
.row{display:flex;gap:12px;margin:14px 0;flex-wrap:wrap}.row div{flex:1;background:#222;border-radius:10px;padding:10px}
.row b{display:block;font-size:30px}.bad{color:#ff8a80}.ok{color:#b9f6ca}
table{width:100%;border-collapse:collapse}td{padding:4px 6px;border-bottom:1px solid #333}
td.deny{color:#ff8a80}td.allow{color:#b9f6ca}#stale{color:#ffab40}img{max-width:100%;border-radius:10px}
"""

_SCRIPT = """
const q = new URLSearchParams(location.search), token = q.get('token');
const opts = token ? {headers: {Authorization: 'Bearer ' + token}} : {};
const $ = id => document.getElementById(id);
const words = {locked: 'LOCKED', released: 'OPEN'}, says = {deny: 'please wear a mask', allow: 'mask seen: welcome',
  idle: 'waiting for a visitor'};
function hhmm(t) { return new Date(t * 1000).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit',
  second: '2-digit'}); }
function show(v) {
  const door = $('door');
  door.dataset.state = v.door || 'unknown';
  door.firstChild.textContent = 'Door ' + (v.door || 'unknown');
  $('says').textContent = says[v.decision] || '';
  $('fps').textContent = v.fps == null ? '-' : v.fps.toFixed(1);
  $('camera').textContent = v.camera_up ? 'OK' : 'NO FRAMES';
  $('camera').className = v.camera_up ? 'ok' : 'bad';
  $('model').textContent = (v.model_sha256 || '-').slice(0, 12);
  $('allowed').textContent = v.today.allow; $('denied').textContent = v.today.deny;
  const rows = v.recent.map(r => {
    const tr = document.createElement('tr');
    for (const [text, cls] of [[hhmm(r.time), ''], [r.decision, r.decision], ['door ' + (r.door || '-'), ''],
                               [(r.unmasked || 0) + ' unmasked, ' + (r.masked || 0) + ' masked', '']]) {
      const td = document.createElement('td'); td.textContent = text; td.className = cls; tr.appendChild(td);
    }
    return tr;
  });
  $('recent').replaceChildren(...rows);
  $('stale').textContent = '';
  if (v.snapshot) { $('snap').hidden = false; $('snap').src = '/snapshot.jpg?' + Date.now() +
    (token ? '&token=' + encodeURIComponent(token) : ''); }
}
async function tick() {
  try {
    const r = await fetch('/view.json', opts);
    if (!r.ok) throw new Error(r.status);
    show(await r.json());
  } catch (e) { $('stale').textContent = 'no answer from the appliance (' + e.message + ')'; }
  setTimeout(tick, 1000);
}
tick();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only our own inline script and style may run: the hashes pin them, so nothing injected can.
CSP = (f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Mask door</title><style>{_STYLE}</style></head>
<body><main>
<div id="door" data-state="unknown">Door unknown<small id="says"></small></div>
<div class="row"><div>Allowed today<b id="allowed">-</b></div><div>Denied today<b id="denied">-</b></div>
<div>Frames/s<b id="fps">-</b></div><div>Camera<b id="camera">-</b></div><div>Model<b id="model">-</b></div></div>
<p id="stale"></p><img id="snap" alt="latest frame, faces blurred" hidden>
<h3>Last decisions</h3><table><tbody id="recent"></tbody></table>
</main><script>{_SCRIPT}</script></body></html>
""".encode()


def from_config(cfg: HttpConfig, events: Any = None, *, save_faces: bool = False) -> StatusServer | None:
    """A started status server, or None when `[http] listen` is empty (nothing listens).

    `events` is the service's EventLog (today's counts and the last decisions are read from its file at start);
    `save_faces` is `[events] save_faces`: faces on the snapshot are blurred unless it is on.
    """
    if not cfg.listen:
        return None
    host, port = parse_listen(cfg.listen)
    try:
        token = _read_token(cfg.token_file) if cfg.token_file is not None else None
    except OSError as exc:
        raise ConfigError(f"[http] token_file = '{cfg.token_file}': cannot read ({exc.strerror})") from None
    if token == "":
        raise ConfigError(f"[http] token_file = '{cfg.token_file}' is empty")
    database = getattr(events, "path", None)
    try:
        server = StatusServer(host, port, token=token, database=database, snapshot=cfg.snapshot,
                              blur_faces=not save_faces)
    except OSError as exc:  # port taken, address not on this machine, a port under 1024 without the right
        raise ConfigError(f"[http] listen = {cfg.listen!r}: cannot listen there ({exc.strerror or exc})") from None
    return server.start()
