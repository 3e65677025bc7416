"""The HTTP output: routes, token, hostile clients, and the page in a real headless Chromium (Debian's `chromium`,
driven by Playwright through that system browser; `playwright install` is never run)."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.data import scene_images
from support.labelling import publish_screenshot
from support.sources import PacedScenes
from support.wait import wait_for

from appliance import __version__, config
from appliance.config import ConfigError
from appliance.reporting import web, web_http, web_page
from appliance.reporting.events import EventLog
from appliance.reporting.web_view import StatusView
from appliance.vocab import Door, Fault, Kind, Recovery

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHA = "3f" * 32
STATUS = {"pid": 4242, "started": time.time() - 3600, "uptime": 3600.0, "frames": 51234, "skipped": 0, "fps": 14.6,
          "decision": "idle", "door": "released", "model": "/var/lib/mask-appliance/mask_classifier.tflite",
          "model_sha256": SHA, "camera_lost": False, "running": True}


def get(server: web.StatusServer, path: str, method: str = "GET", headers: dict | None = None):
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


@pytest.fixture
def served(tmp_path):
    log = EventLog(tmp_path / "events.db")
    server = web.from_config(web.HttpConfig(listen="127.0.0.1:0"), log)
    assert server is not None
    log.subscribe(server)
    yield log, server
    log.close()  # closes the server too, as the service's shutdown does
    server.close()


def test_off_by_default_and_listen_checks(tmp_path):
    assert web.from_config(web.HttpConfig()) is None
    assert web.parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert web.parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8080", "localhost", "host:http", ":80", "1.2.3.4:70000"):
        with pytest.raises(ConfigError, match=r"cfg.toml: \[http\] listen = .* is not address:port"):
            web.HttpConfig(listen=bad).check("cfg.toml")
    with pytest.raises(ConfigError, match=r"\[http\] token_file = '.*missing' does not exist"):
        web.HttpConfig(listen="127.0.0.1:8080", token_file=tmp_path / "missing").check_files("cfg.toml")


def test_a_taken_port_is_one_line(served):
    _, server = served
    taken = f"127.0.0.1:{server.httpd.server_address[1]}"
    with pytest.raises(ConfigError, match=rf"\[http\] listen = '{taken}': cannot listen there \(Address already"):
        web.from_config(web.HttpConfig(listen=taken))


def test_the_section_validates_like_every_other():
    def section(table):
        return config.parse({"http": table}, "cfg.toml").http

    assert section({"listen": "0.0.0.0:8080", "snapshot": True}).snapshot is True
    with pytest.raises(ConfigError, match=r"^cfg.toml: \[http\] snapshot = 1 is not true or false$"):
        section({"snapshot": 1})
    with pytest.raises(ConfigError, match=r"^cfg.toml: \[http\] listen = 8080 is not a string$"):
        section({"listen": 8080})


def test_routes(served):
    log, server = served
    status, _, body = get(server, "/status.json")
    assert status == 503  # nothing to say before the service's first status
    log.record("decision", "deny", masked=0, unmasked=1, incorrect=0, door="locked")
    log.status(STATUS)
    log.frame({"t": 1.0, "stages": {"capture": 0.002, "detect": 0.04, "classify": 0.01, "decide": 0.0001},
               "faces": {"with_mask": 0, "without_mask": 1, "incorrect_mask": 0}})
    assert log.flush()
    status, headers, body = get(server, "/status.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert {k: v for k, v in json.loads(body).items() if k in STATUS} == STATUS  # what status.json holds
    status, headers, body = get(server, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
             if not s.labels or s.labels.get("decision") == "deny"}
    assert names["mask_appliance_decisions_total"] == 1 and names["mask_appliance_frames_total"] == 51234
    status, headers, body = get(server, "/")
    assert status == 200 and b'id="door"' in body and "script-src 'sha256-" in headers["Content-Security-Policy"]
    view = json.loads(get(server, "/view.json")[2])
    assert (view["door"], view["today"]["deny"], view["recent"][0]["decision"]) == ("released", 1, "deny")
    assert get(server, "/snapshot.jpg")[0] == 404  # no face image unless [http] snapshot is on
    assert get(server, "/nope")[0] == 404
    assert get(server, "/metrics", method="HEAD")[2] == b""
    status, headers, _ = get(server, "/", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"  # read-only
    assert get(server, "/%zz?a=%%%")[0] == 404


def csp_hash(text: str) -> str:
    import base64
    import hashlib

    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_page_is_package_data_pinned_by_its_csp():
    """The page is reporting/static/status.html as shipped; the CSP names the hash of its one script and its one
    style (cut out here by plain string search, not by the server's parser) and nothing else may run."""
    from importlib import resources

    page = (resources.files("appliance.reporting") / "static" / "status.html").read_bytes()
    served, csp = web_page.load_page()
    assert page.replace(b"\r\n", b"\n") == served and b'id="door"' in page
    text = page.decode()
    script = text[text.rindex("<script>") + len("<script>"):text.rindex("</script>")]
    style = text[text.rindex("<style>") + len("<style>"):text.rindex("</style>")]
    assert "fetch('/view.json'" in script and "#door" in style
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == csp_hash(script) and directives["style-src"] == csp_hash(style)
    assert directives["default-src"] == "'none'" and directives["connect-src"] == "'self'"


def test_the_camera_flag_follows_faults_and_recoveries():
    """No frames puts the page's camera down; the "frames back" recovery puts it up, in its new kind and in the
    older logs' form (a fault); the guard's own recovery and a config reload leave it as it is."""
    view = StatusView()

    def record(kind, what, **detail):
        view.on_record({"id": 1, "time": time.time(), "kind": kind, "state": None, "detail": {"what": what, **detail}})
        return view.view()["camera_up"]

    assert view.view()["camera_up"] is True
    assert record(Kind.FAULT, Fault.NO_FRAMES, seconds=3.0, door=Door.LOCKED) is False
    assert view.view()["door"] == "locked"
    assert record(Kind.RECOVERY, Recovery.GUARD_BACK) is False
    assert record(Kind.CONFIG, "config reloaded") is False
    assert record(Kind.RECOVERY, Recovery.FRAMES_BACK) is True
    assert record("fault", "no frames") is False
    assert record("fault", "frames back") is True  # an older log's way of saying it
    assert record(Kind.FAULT, Fault.GUARD_FAILED, door=Door.LOCKED) is True  # the camera still sends frames
    view.on_status({**STATUS, "camera_lost": True})
    assert view.view()["camera_up"] is False  # a status says it too


def test_token(tmp_path):
    (tmp_path / "token").write_text("s3cret-token\n")
    server = web.from_config(web.HttpConfig(listen="127.0.0.1:0", token_file=tmp_path / "token"))
    try:
        status, headers, _ = get(server, "/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert get(server, "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert get(server, "/metrics", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert get(server, "/?token=s3cret-token")[0] == 200  # the page's own address, for a browser
    finally:
        server.close()


def turned_away(addr) -> bool:
    """A fresh connection with a whole request: True when the server closes it unanswered (every handler taken)."""
    with socket.create_connection(addr, timeout=30) as c:
        try:
            c.sendall(b"GET /status.json HTTP/1.1\r\nHost: door\r\n\r\n")
            return c.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):  # closed before the request was read
            return True


def answers(server: web.StatusServer) -> int | None:
    try:
        return get(server, "/status.json")[0]
    except (ConnectionError, http.client.HTTPException):
        return None


def test_bad_and_hostile_clients_stall_nothing(served, monkeypatch):
    """No clock decides it: while idle clients hold every handler, the event writer still hands the server every
    record and flushes (a writer that waited on a client would wait for as long as the clients hold out), and
    clients that never speak are dropped by the server itself, which then answers again."""
    log, server = served
    addr = server.httpd.server_address[:2]
    # Garbage gets a 400 and no traceback.
    with socket.create_connection(addr, timeout=30) as c:
        c.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        reply = c.recv(4096)
    assert reply.split(b" ")[1] == b"400" and b"Traceback" not in reply
    with socket.create_connection(addr, timeout=30) as c:
        c.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
        assert c.recv(100).split(b" ")[1] == b"414"
    # Connections that open and never speak, more than the server keeps, each handler waiting a minute for its
    # request (far longer than this part takes): every handler is taken, and a further client is turned away.
    monkeypatch.setattr(web_http.Handler, "timeout", 60.0)
    idle = [socket.create_connection(addr, timeout=30) for _ in range(web.MAX_CONNECTIONS + 8)]
    try:
        assert turned_away(addr), "the idle clients did not take every handler"
        for i in range(40):
            state, door = ("deny", "locked") if i % 4 == 3 else ("allow", "released")
            log.record("decision", state, masked=int(state == "allow"), unmasked=int(state == "deny"), incorrect=0,
                       door=door)
        log.status({**STATUS, "frames": 60000})
        assert log.flush(timeout=30), "the event writer waited on a client"  # a hang detector, not a speed limit
        assert turned_away(addr), "the handlers were let go before the records went through"
        view = server.view()
        assert (view["today"]["allow"], view["today"]["deny"], view["door"]) == (30, 10, "released")
        assert server.status_json()["frames"] == 60000
    finally:
        for c in idle:
            c.close()
    # Clients that never speak, with the handlers' timeout at 1 s: the server closes every one of them itself
    # (a server without a timeout would leave these reads waiting for their 30 s), then answers again.
    monkeypatch.setattr(web_http.Handler, "timeout", 1.0)
    idle = [socket.create_connection(addr, timeout=30) for _ in range(web.MAX_CONNECTIONS + 8)]
    try:
        for c in idle:
            with contextlib.suppress(ConnectionResetError):  # turned away at once: closed before it was read
                assert c.recv(100) == b""
    finally:
        for c in idle:
            c.close()
    assert wait_for(lambda: answers(server), what="an answer after the idle clients were dropped") == 200


def test_snapshot_blurs_faces(tmp_path):
    import cv2

    server = web.StatusServer("127.0.0.1", 0, snapshot=True, blur_faces=True).start()
    try:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        server.on_frame({"t": 0.0, "stages": {}, "faces": {}, "image": image, "boxes": [(40, 20, 100, 80)]})
        status, headers, body = get(server, "/snapshot.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        shown = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        face, rest = shown[20:80, 40:100].astype(float), shown[0:20].astype(float)
        # The face is pixelated to 6x6 blocks: its detail (neighbour differences) is nearly gone, the rest keeps it.
        assert np.abs(np.diff(face, axis=1)).mean() < 0.3 * np.abs(np.diff(rest, axis=1)).mean()
    finally:
        server.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (scripts/test does)")
def test_page_in_chromium_follows_the_door_without_reload(tmp_path):
    import cv2
    from playwright.sync_api import expect, sync_playwright

    # A morning's decisions already in the log: the page reads today's counts and the last decisions at start.
    db = tmp_path / "events.db"
    log = EventLog(db)
    for state, door in [("allow", "released"), ("idle", "released"), ("allow", "released"), ("idle", "released"),
                        ("deny", "locked"), ("idle", "released"), ("allow", "released"), ("idle", "released")]:
        log.record("decision", state, masked=int(state == "allow"), unmasked=int(state == "deny"), incorrect=0,
                   door=door)
    assert log.flush()
    server = web.from_config(web.HttpConfig(listen="127.0.0.1:0"), log)
    log.subscribe(server)
    log.status(STATUS)
    assert log.flush()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            page = browser.new_page(viewport={"width": 900, "height": 760})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server.url + "/")
            door = page.locator("#door")
            # Selectors, not wait_for_function: the page's CSP forbids the eval() that one would need.
            expect(door).to_have_attribute("data-state", "released", timeout=5000)
            assert "door released" in door.inner_text().lower()
            assert page.locator("#allowed").inner_text() == "3" and page.locator("#denied").inner_text() == "1"
            assert page.locator("#recent tr").count() == 8
            assert page.locator("#fps").inner_text() == "14.6"
            assert page.locator("footer").inner_text() == f"mask-appliance {__version__}"  # the release it runs
            page.evaluate("window.sameDocument = true")  # gone if the page reloads
            green = door.evaluate("e => getComputedStyle(e).backgroundColor")

            log.record("decision", "deny", masked=0, unmasked=1, incorrect=0, door="locked")
            log.status({**STATUS, "decision": "deny", "door": "locked", "frames": 51250})
            expect(door).to_have_attribute("data-state", "locked", timeout=5000)
            assert "door locked" in door.inner_text().lower()
            assert page.evaluate("window.sameDocument") is True
            assert door.evaluate("e => getComputedStyle(e).backgroundColor") != green
            assert page.locator("#denied").inner_text() == "2"
            assert page.locator("#recent tr").first.locator("td").nth(1).inner_text() == "deny"
            assert page.locator("img:visible").count() == 0  # no face image by default
            assert not errors, errors  # the CSP let our own script and style run, and nothing else failed
            out = tmp_path / "shots" / "status-page.png"  # docs/results/status-page.png, by scripts/screenshots
            out.parent.mkdir()
            page.screenshot(path=str(out), full_page=True)
            # The camera flag follows a lost camera and its recovery, without a reload.
            log.record(Kind.FAULT, None, what=Fault.NO_FRAMES, seconds=3.0, door=Door.LOCKED)
            expect(page.locator("#camera")).to_have_text("NO FRAMES", timeout=5000)
            log.record(Kind.RECOVERY, None, what=Recovery.FRAMES_BACK)
            expect(page.locator("#camera")).to_have_text("OK", timeout=5000)
            assert page.evaluate("window.sameDocument") is True and not errors, errors
            browser.close()
        shot = cv2.imread(str(out))
        assert shot is not None and shot.shape[1] == 900 and shot.shape[0] >= 760  # the whole page, 900 px wide
        # taken with the door locked: its red, in large type, fills a good part of the picture
        b, g, r = (shot[..., i].astype(int) for i in range(3))
        red = float(((r > g + 80) & (r > b + 80)).mean())
        assert red > 0.1, f"{red:.1%} of the screenshot is the locked door's red"
        publish_screenshot(out)
        ids = [i for (i,) in sqlite3.connect(db).execute("SELECT id FROM events")]
        assert len(ids) == 11
    finally:
        log.close()
        server.close()


# -- the service end to end: [http] in Config, the server subscribed to the service's event log -----------------
def test_http_is_a_section_of_the_config():
    assert "http" in {f.name for f in dataclasses.fields(config.Config)}
    assert config.parse({}, "<defaults>").http == web.HttpConfig()  # off unless listen is given


def test_the_service_serves_metrics_that_match_its_event_log(model_dir, tmp_path):

    from appliance.service import Service

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    table = {"classifier": {"model": str(model_dir / "mask_classifier.tflite")},
             "events": {"database": str(tmp_path / "events.db")},
             "service": {"status_interval": 0.5, "camera_timeout": 600},
             "http": {"listen": f"127.0.0.1:{port}"}}
    service = Service(config.parse(table))
    masked, unmasked = scene_images("with_mask", limit=1), scene_images("without_mask", limit=1)
    source = PacedScenes((masked + unmasked) * 2, still_frames=12, fps=15)
    thread = threading.Thread(target=service.run, args=(source,), daemon=True)
    thread.start()
    try:
        assert source.done.wait(60), "the scenes did not end"
        assert service.events.flush()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.request("GET", "/status.json")
        status = json.loads(conn.getresponse().read())
        conn.close()
    finally:
        service.stop()
        thread.join(30)
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(body)
         for s in f.samples}
    db = sqlite3.connect(tmp_path / "events.db")
    decisions = dict(db.execute("SELECT state, COUNT(*) FROM events WHERE kind = 'decision' GROUP BY state"))
    assert decisions.get("deny", 0) >= 2 and decisions.get("allow", 0) >= 1  # the scenes were decided
    for state in ("idle", "allow", "deny"):
        assert m[("mask_appliance_decisions_total", (("decision", state),))] == decisions.get(state, 0)
    assert m[("mask_appliance_frames_total", ())] == service.frames == 48
    for stage in ("detect", "classify"):  # every frame here has a face: classification is timed on each
        assert m[("mask_appliance_stage_seconds_count", (("stage", stage),))] == 48
        assert m[("mask_appliance_stage_seconds_sum", (("stage", stage),))] > 0
    assert m[("mask_appliance_model_info", (("model", str(model_dir / "mask_classifier.tflite")),
                                            ("sha256", service.pipeline.classifier.sha256)))] == 1
    assert status["model_sha256"] == service.pipeline.classifier.sha256 and status["frames"] <= 48
    assert status["skipped"] == 0 and status["status_interval"] == 0.5 and status["model_fallback"] is None
    assert m[("mask_appliance_collect_faces", (("outcome", "collected"),))] == status["collect"]["collected"] == 0
