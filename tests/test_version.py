"""The release a user can see: on the status page (its /view.json; the page's foot, in real headless Chromium, is
checked by test_web.py's browser test) and in the Home Assistant device the MQTT output announces. `--version` of
the three commands is in test_cli.py."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import time
import tomllib
from pathlib import Path

from appliance import __version__, config
from appliance.reporting import web
from appliance.reporting.events import EventLog
from appliance.reporting.mqtt import MqttOutput

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STATUS = {"pid": 4242, "started": time.time() - 60, "uptime": 60.0, "frames": 900, "skipped": 0, "fps": 15.0,
          "decision": "idle", "door": "released", "model": "/var/lib/mask-appliance/mask_classifier.tflite",
          "model_sha256": "3f" * 32, "camera_lost": False, "running": True}


def view_json(server: web.StatusServer) -> dict:
    host, port = server.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/view.json")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200
    return json.loads(body)


def test_the_release_is_a_plain_version_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_the_status_page_is_told_the_release(tmp_path):
    log = EventLog(tmp_path / "events.db")
    server = web.from_config(web.HttpConfig(listen="127.0.0.1:0"), log)
    assert server is not None
    try:
        assert view_json(server)["version"] == __version__
    finally:
        log.close()
        server.close()


def test_the_home_assistant_device_names_the_release_and_the_model(tmp_path):
    cfg = config.parse({"mqtt": {"host": "broker.lan", "client_id": "door-1"}}, "<test>").mqtt
    output = MqttOutput(cfg, hostname="door-1")  # not started: nothing connects
    try:
        before = {c["device"]["sw_version"] for c in output.discovery().values()}
        assert before == {f"{__version__} (model unknown)"}
        output.on_status(STATUS)
        configs = output.discovery().values()
        assert {c["device"]["sw_version"] for c in configs} == {f"{__version__} (model 3f3f3f3f3f3f)"}
        assert {c["origin"]["sw"] for c in configs} == {__version__}
    finally:
        output.close()


def test_the_changelog_starts_with_this_release():
    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\]", changelog, re.MULTILINE)
    assert releases and releases[0] == __version__ and "Unreleased" not in releases
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.MULTILINE)


def test_pyproject_reads_the_release_from_the_package():
    """One place spells the release (appliance/__init__.py): pyproject.toml reads it from there."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "appliance.__version__"}
