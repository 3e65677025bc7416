"""The MQTT output against a real Mosquitto broker (Debian's `mosquitto`, installed by scripts/test), fed by a real
EventLog: discovery, retained availability and state, one event per decision, a broker killed and restarted, a
wrong password, and the last will of a killed appliance."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.data import REPO, scene_images
from support.sources import PacedScenes
from support.wait import wait_for as _wait_for

from appliance import config
from appliance.config import ConfigError
from appliance.reporting import mqtt
from appliance.reporting.events import EventLog
from appliance.reporting.mqtt_discovery import Topics, discovery, slug
from appliance.reporting.mqtt_events import event_payload
from appliance.reporting.mqtt_state import DoorState
from appliance.vocab import Decision, Door, Fault, Kind, Recovery

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
EXAMPLES = REPO / "deploy" / "monitoring" / "mosquitto"
# This file's waits give up after 10 s unless a call says otherwise.
wait_for = functools.partial(_wait_for, timeout=10.0)
NO_BROKER = "Debian's mosquitto is not installed (scripts/test installs it)"


class Broker:
    """A Mosquitto of our own on a free port of 127.0.0.1, with its own config file; no persistence, so a restart
    loses every retained message (the worst case the appliance must recover from)."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, extra: list[str] = ()):
        if not Path(MOSQUITTO).exists():
            pytest.skip(NO_BROKER)  # the payload tests below need no broker and run anyway
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice", "user root"]
        if users:
            pw = folder / "passwd"
            pw.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines += ["allow_anonymous true"]
        lines += extra
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.log = open(self.folder / "mosquitto.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._listening, timeout=10, what="mosquitto to listen")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        if self.proc is not None:
            self.log.close()

    stop = kill


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


class Subscriber:
    """A plain paho client that records every message it sees (topic, payload, retained flag)."""

    def __init__(self, port: int, topics=("#",), client_id: str = "test-sub", user: tuple[str, str] | None = None):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if user:
            self.client.username_pw_set(*user)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: [c.subscribe(t, qos=1) for t in topics]
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        with self._lock:
            return [(p, r) for t, p, r in self.messages if t == topic]

    def newest(self, topic: str) -> dict | None:
        """The JSON of the last message seen on `topic`, or None before the first."""
        seen = self.on(topic)
        return json.loads(seen[-1][0]) if seen else None

    def events(self) -> list[dict]:
        return [json.loads(p) for t, p, _ in list(self.messages) if t.endswith("/event")]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def feed(log: EventLog, outputs):
    """The service's way: outputs subscribe to the event log, whose writer thread hands them every record."""
    for out in outputs:
        log.subscribe(out)
    return log.record


STATUS = {"pid": 1, "started": 0.0, "uptime": 1.0, "frames": 10, "skipped": 0, "fps": 12.5, "decision": "idle",
          "door": "released", "model": "/m/mask_classifier.tflite", "model_sha256": "ab" * 32, "camera_lost": False,
          "running": True}


def make(broker_port: int, tmp_path: Path, **kw) -> tuple[mqtt.MqttOutput, EventLog]:
    log = EventLog(tmp_path / "events.db")
    cfg = mqtt.MqttConfig(host="127.0.0.1", port=broker_port, **kw)
    out = mqtt.from_config(cfg, log, hostname="door-1")
    assert out is not None
    return out, log


def settle(log: EventLog, sub: Subscriber, frames: int) -> None:
    """A status naming `frames`, then its state seen by `sub`. The output publishes from one thread, in order, and
    the broker forwards one client's messages in order: whatever the output sent before that state has reached
    `sub` by then, so "nothing more came" is sure without waiting for a while."""
    log.status({**STATUS, "frames": frames})
    wait_for(lambda: (sub.newest("mask-appliance/door-1/state") or {}).get("frames") == frames,
             what=f"the state of frame {frames}")


def event_ids(db: Path, kinds=mqtt.EVENT_KINDS) -> list[int]:
    q = f"SELECT id FROM events WHERE kind IN ({','.join('?' * len(kinds))}) ORDER BY id"
    return [i for (i,) in sqlite3.connect(db).execute(q, kinds)]


def test_off_by_default_and_config_checks(tmp_path):
    assert mqtt.from_config(mqtt.MqttConfig()) is None  # empty host: nothing connects anywhere
    with pytest.raises(ConfigError, match=r"cfg.toml: \[mqtt\] topic_prefix = 'shop/#' is not a topic prefix"):
        mqtt.MqttConfig(host="b", topic_prefix="shop/#").check("cfg.toml")
    with pytest.raises(ConfigError, match=r"\[mqtt\] password_file = '.*nope' does not exist"):
        mqtt.MqttConfig(host="b", username="u", password_file=tmp_path / "nope").check_files("cfg.toml")
    with pytest.raises(ConfigError, match="username is empty"):
        (tmp_path / "pw").write_text("x\n")
        mqtt.MqttConfig(host="b", password_file=tmp_path / "pw").check("cfg.toml")
    mqtt.MqttConfig(host="broker.local", topic_prefix="shops/12/door").check("cfg.toml")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^\[mqtt\] tls_ca = '.*ca.pem': cannot be used"):
        mqtt.from_config(mqtt.MqttConfig(host="127.0.0.1", tls_ca=tmp_path / "ca.pem"))


def test_the_section_validates_like_every_other(tmp_path):
    """[mqtt] goes through config.py's own checks: types, bounds, one line naming file, key and value."""
    def section(table):
        return config.parse({"mqtt": table}, "cfg.toml").mqtt

    assert section({"host": "broker.lan", "port": 8883}).port == 8883
    with pytest.raises(ConfigError, match=r"^cfg.toml: \[mqtt\] port = 70000 is outside 1..65535$"):
        section({"host": "broker.lan", "port": 70000})
    with pytest.raises(ConfigError, match=r"^cfg.toml: \[mqtt\] retain_state = 'yes' is not true or false$"):
        section({"retain_state": "yes"})
    with pytest.raises(ConfigError, match=r"^cfg.toml: unknown key \[mqtt\] hostname"):
        section({"hostname": "x"})
    assert section({"password_file": str(tmp_path / "pw")}).password_file == tmp_path / "pw"


ENTITIES = [("binary_sensor", "unmasked"), ("sensor", "decision"), ("sensor", "door"), ("sensor", "fps"),
            ("sensor", "model"), ("sensor", "denials"), ("sensor", "allows"), ("binary_sensor", "camera")]


def test_discovery_payloads_are_plain_data():
    """Home Assistant discovery as data, no broker: eight entities on one device, JSON exactly as it goes out."""
    out = discovery("homeassistant", "mask-appliance-door-3", Topics("shop/door-3"), "1.2.3", "cd" * 32)
    assert sorted(out) == sorted(f"homeassistant/{c}/mask-appliance-door-3/{k}/config" for c, k in ENTITIES)
    assert json.loads(json.dumps(out)) == out
    by_key = {t.split("/")[3]: c for t, c in out.items()}
    assert by_key["unmasked"]["value_template"] == "{{ 'ON' if value_json.decision == 'deny' else 'OFF' }}"
    # The vocabulary's members went in as plain strings, in the order Home Assistant shows them.
    assert json.dumps(by_key["decision"]["options"]) == '["idle", "allow", "deny"]'
    assert json.dumps(by_key["door"]["options"]) == '["locked", "released"]'
    assert all(type(o) is str for c in out.values() for o in c.get("options", []))
    assert {(c["state_topic"], c["availability_topic"]) for c in out.values()} == {
        ("shop/door-3/state", "shop/door-3/availability")}
    assert {c["device"]["sw_version"] for c in out.values()} == {"1.2.3 (model cdcdcdcdcdcd)"}
    assert {c["unique_id"] for c in out.values()} == {f"mask-appliance-door-3_{k}" for _, k in ENTITIES}
    unknown = discovery("ha", "n", Topics("p"), "1", None)
    assert unknown["ha/sensor/n/fps/config"]["device"]["sw_version"] == "1 (model unknown)"
    assert slug("mask-appliance-door 3.lan") == "mask-appliance-door_3_lan" and slug("...") == "appliance"


def test_the_state_payload_follows_records_and_status():
    """The retained state as data: the log's totals at start, then each new decision; the door from decisions,
    faults and statuses; a recovery names no door (the next frame's decision does)."""
    state = DoorState({"allow": 4, "deny": 7, "idle": 9}, base_id=20)
    first = state.payload()
    assert (first["decision"], first["door"], first["allows"], first["denials"], first["camera_up"]) == (
        "idle", None, 4, 7, True)
    state.changed = False
    # id 20 is in the log's totals already: it moves the door, not the count
    state.on_record({"id": 20, "kind": "decision", "state": "deny",
                     "detail": {"door": "locked", "masked": 0, "unmasked": 1, "incorrect": 1}})
    p = state.payload()
    assert state.changed and (p["decision"], p["door"], p["denials"], p["unmasked"]) == ("deny", "locked", 7, 2)
    state.on_record({"id": 21, "kind": Kind.DECISION, "state": Decision.ALLOW,
                     "detail": {"door": Door.RELEASED, "masked": 2, "unmasked": 0, "incorrect": 0}})
    p = state.payload()
    assert (p["decision"], p["door"], p["allows"], p["masked"], p["unmasked"]) == ("allow", "released", 5, 2, 0)
    state.on_record({"id": 22, "kind": Kind.FAULT, "state": None, "detail": {"what": Fault.NO_FRAMES,
                                                                              "door": Door.LOCKED}})
    assert state.payload()["door"] == "locked"
    state.on_record({"id": 23, "kind": Kind.RECOVERY, "state": None, "detail": {"what": Recovery.FRAMES_BACK}})
    assert state.payload()["door"] == "locked"
    state.on_status({**STATUS, "door": "released", "decision": "idle", "camera_lost": True, "fps": 9.5})
    before = time.time()
    p = state.payload()
    after = time.time()
    assert (p["door"], p["decision"], p["camera_up"], p["fps"], p["frames"]) == ("released", "idle", False, 9.5, 10)
    assert json.loads(json.dumps(p)) == p and before - 0.0005 <= p["time"] <= after + 0.0005  # now, to the ms


def test_event_kinds_and_the_event_payload():
    assert set(mqtt.EVENT_KINDS) == {"decision", "fault", "recovery", "model", "config"}  # never start or stop
    record = {"id": 7, "time": 1.5, "kind": Kind.RECOVERY, "state": None, "detail": {"what": Recovery.FRAMES_BACK}}
    assert json.dumps(event_payload(record)) == ('{"id": 7, "time": 1.5, "kind": "recovery", "state": null, '
                                                 '"detail": {"what": "frames back"}}')


def test_recoveries_and_config_reloads_are_events(broker, tmp_path):
    """The new kinds go out as events in the log's order; an older service's forms (a recovery recorded as a
    fault, a reload as a model event) go as the log keeps them; a stop is no event."""
    sub = Subscriber(broker.port)
    out, log = make(broker.port, tmp_path)
    record = feed(log, [out])
    try:
        log.status(STATUS)
        wait_for(lambda: sub.on("mask-appliance/door-1/state"), what="the first state")
        record(Kind.FAULT, None, what=Fault.NO_FRAMES, seconds=3.0, door=Door.LOCKED)
        record(Kind.RECOVERY, None, what=Recovery.FRAMES_BACK)
        record(Kind.FAULT, None, what=Fault.GUARD_FAILED, reason="RuntimeError()", door=Door.LOCKED)
        record(Kind.RECOVERY, None, what=Recovery.GUARD_BACK)
        record(Kind.CONFIG, None, what="config reloaded", sha256="cd" * 32, changed=["[policy] unsure"])
        record(Kind.STOP, None, frames=10, door=Door.RELEASED)
        record("fault", None, what="frames back")
        record("model", None, what="config reloaded", sha256="cd" * 32)
        wait_for(lambda: len(sub.events()) >= 7, what="seven events")
        settle(log, sub, 77)  # nothing more may come
        events = sub.events()
        assert [e["id"] for e in events] == event_ids(log.path)
        assert [(e["kind"], e["detail"]["what"]) for e in events] == [
            ("fault", "no frames"), ("recovery", "frames back"), ("fault", "camera guard failed"),
            ("recovery", "camera guard back"), ("config", "config reloaded"), ("fault", "frames back"),
            ("model", "config reloaded")]
        assert events[4]["detail"]["changed"] == ["[policy] unsure"]
    finally:
        out.close()
        log.close()
        sub.close()


def test_discovery_availability_state_and_one_event_per_decision(broker, tmp_path):
    sub = Subscriber(broker.port)
    out, log = make(broker.port, tmp_path)
    record = feed(log, [out])
    try:
        wait_for(lambda: sub.on("mask-appliance/door-1/availability"), what="availability")
        log.status(STATUS)
        record("start", None, model="ab" * 32, door="released")
        # the first state comes from that status; under load the decisions below could otherwise overtake it
        wait_for(lambda: sub.on("mask-appliance/door-1/state"), what="the first state")
        record("decision", "allow", masked=1, unmasked=0, incorrect=0, door="released")
        record("decision", "deny", masked=0, unmasked=1, incorrect=0, door="locked")
        record("fault", None, what="no frames", seconds=3.0, door="released")
        record("model", None, what="model swapped", sha256="cd" * 32, previous="ab" * 32)
        record("decision", "idle", masked=0, unmasked=0, incorrect=0, door="released")
        wait_for(lambda: len(sub.events()) >= 5, what="five events")
        settle(log, sub, 77)  # nothing more may come

        # One event per decision, fault and model swap, with the log's own ids, in order; never the start record.
        events = sub.events()
        assert [e["id"] for e in events] == event_ids(log.path)
        assert [(e["kind"], e["state"]) for e in events] == [("decision", "allow"), ("decision", "deny"),
                                                              ("fault", None), ("model", None), ("decision", "idle")]
        assert events[1]["detail"]["door"] == "locked" and "image" not in json.dumps(events[1]["detail"]).lower()

        # Discovery: eight retained entities, valid JSON, unique ids, availability on each, default_entity_id.
        configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/")}
        assert len(configs) == 8
        # Discovery and state waited for the service's first status: from the first message on they name the
        # model and the door.
        assert all(b"(model abababababab)" in p for t, p, _ in sub.messages if t.startswith("homeassistant/"))
        assert json.loads(sub.on("mask-appliance/door-1/state")[0][0])["door"] == "released"
        ids = [c["unique_id"] for c in configs.values()]
        assert len(set(ids)) == 8
        for topic, c in configs.items():
            component, node, key, tail = topic.split("/")[1:]
            assert (node, tail) == ("mask-appliance-door-1", "config")
            assert c["default_entity_id"] == f"{component}.{node}_{key}" and "object_id" not in c
            assert c["availability_topic"] == "mask-appliance/door-1/availability"
            assert c["state_topic"] == "mask-appliance/door-1/state"
            assert c["device"]["identifiers"] == ["mask-appliance-door-1"] and "abababababab" in c["device"][
                "sw_version"]
        by_key = {t.split("/")[3]: c for t, c in configs.items()}
        assert by_key["unmasked"]["name"] == "Unmasked person" and topic_component(by_key, "unmasked") == \
            "binary_sensor"
        assert by_key["door"]["device_class"] == "enum" and by_key["door"]["options"] == ["locked", "released"]
        assert by_key["decision"]["options"] == ["idle", "allow", "deny"]
        assert by_key["denials"]["state_class"] == by_key["allows"]["state_class"] == "total_increasing"
        assert by_key["fps"]["state_class"] == "measurement"
        assert by_key["camera"]["device_class"] == "connectivity"

        # A subscriber that comes later gets the retained availability and the latest state at once.
        late = Subscriber(broker.port, client_id="late")
        wait_for(lambda: late.on("mask-appliance/door-1/state"), what="retained state")
        assert late.on("mask-appliance/door-1/availability") == [(b"online", True)]
        payload, retained = late.on("mask-appliance/door-1/state")[-1]
        state = json.loads(payload)
        assert retained and state["decision"] == "idle" and state["door"] == "released"
        assert (state["allows"], state["denials"], state["fps"]) == (1, 1, 12.5)
        late.close()

        # Home Assistant restarting (its birth message): discovery and state come again.
        before = len(sub.on("homeassistant/sensor/mask-appliance-door-1/door/config"))
        sub.client.publish("homeassistant/status", "online")
        wait_for(lambda: len(sub.on("homeassistant/sensor/mask-appliance-door-1/door/config")) > before,
                 what="discovery sent again")
    finally:
        out.close()
        log.close()
    # A clean stop says offline, retained.
    wait_for(lambda: sub.on("mask-appliance/door-1/availability")[-1][0] == b"offline", what="offline")
    sub.close()


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients is not installed")
def test_the_readme_way_to_remove_the_entities(broker, tmp_path):
    out, log = make(broker.port, tmp_path)
    log.subscribe(out)
    log.status(STATUS)
    sub = Subscriber(broker.port)
    wait_for(lambda: len({t for t, _, _ in sub.messages if t.startswith("homeassistant/")}) == 8, what="discovery")
    out.close()
    log.close()
    sub.close()
    probe = Subscriber(broker.port, client_id="probe")
    wait_for(lambda: len([t for t, _, r in probe.messages if r]) == 10, what="8 configs, availability, state")
    probe.close()
    # The README's command: clear every retained message of this door (discovery, availability, state).
    for topic in ("homeassistant/+/mask-appliance-door-1/+/config", "mask-appliance/door-1/#"):
        subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "--retained-only",
                        "--remove-retained", "-W", "2"], capture_output=True, timeout=10)
    # A marker retained on a topic of its own, subscribed last: retained messages come in the order of the
    # subscriptions, so once the marker is in, anything retained under the door's topics would be in too.
    marker = paho.Client(CallbackAPIVersion.VERSION2, client_id="marker")
    marker.connect("127.0.0.1", broker.port)
    marker.loop_start()
    marker.publish("test/marker", "here", qos=1, retain=True).wait_for_publish(5)
    marker.disconnect()
    marker.loop_stop()
    late = Subscriber(broker.port, topics=("homeassistant/#", "mask-appliance/#", "test/marker"), client_id="late")
    wait_for(lambda: late.on("test/marker"), what="the retained marker")
    assert [t for t, _, r in late.messages if r] == ["test/marker"]  # Home Assistant would find nothing to rebuild
    late.close()


def topic_component(by_key: dict, key: str) -> str:
    return by_key[key]["default_entity_id"].split(".")[0]


def test_broker_killed_and_back_no_gap(broker, tmp_path):
    """A broker that hangs, then dies, then comes back: recording never waits on it, and afterwards every event
    the log holds reaches a subscriber, oldest first. No clock decides it: while the broker hangs it answers
    nothing, however busy the machine, so only a recording path that never waits on the network can finish."""
    out, log = make(broker.port, tmp_path)
    record = feed(log, [out])
    sub = Subscriber(broker.port)

    def decisions(n: int, first_frame: int) -> None:
        for i in range(n):
            record("decision", "deny" if i % 2 else "allow", masked=1, unmasked=0, incorrect=0, door="released")
            log.status({**STATUS, "frames": first_frame + i})

    try:
        log.status(STATUS)
        wait_for(lambda: sub.on("mask-appliance/door-1/state"), what="state")
        decisions(3, 10)
        wait_for(lambda: len(sub.events()) == 3, what="three events")
        before = [e["id"] for e in sub.events()]
        # Hung: a stopped process keeps its sockets open, so the link still looks up (paho gives up on it only
        # after one and a half keepalives, 45 s) while nothing is read or acknowledged. A publish that waited for
        # the broker, in on_record or on_status or anywhere else on the event writer's thread, would wait until
        # SIGCONT, which never comes: flush() would give up after its 10 s (a hang detector, not a speed limit).
        broker.proc.send_signal(signal.SIGSTOP)
        decisions(10, 100)
        assert log.flush(timeout=10), "the event writer waited on a broker that does not answer"
        assert out.connected, "the link went down: the calls above did not meet a hung broker"
        assert len(sub.events()) == 3  # and the broker took nothing in the meantime
        unacknowledged = set(event_ids(log.path)) - set(before)
        # Down: killed, its port closed. Decisions go on the same way.
        broker.kill()
        sub.close()
        wait_for(lambda: not out.connected, what="the loss to be seen")
        decisions(10, 110)
        assert log.flush(timeout=10), "the event writer waited on a broker that is down"
        broker.start()  # same port, and no retained message survived
        sub = Subscriber(broker.port, client_id="test-sub-2")
        wait_for(lambda: sub.on("mask-appliance/door-1/availability"), timeout=20, what="online again")
        assert sub.on("mask-appliance/door-1/availability")[-1][0] == b"online"
        # paho first sends again the states the hung broker never acknowledged (frames 100..109), then comes the
        # newest; the retained one, which a later subscriber gets, must be the newest too.
        topic = "mask-appliance/door-1/state"
        wait_for(lambda: (sub.newest(topic) or {}).get("frames") == 119, what="the newest state")
        assert sub.newest(topic)["allows"] + sub.newest(topic)["denials"] == 23
        late = Subscriber(broker.port, client_id="test-sub-late")
        assert wait_for(lambda: late.newest(topic), what="the retained state")["frames"] == 119
        late.close()
        assert len({t for t, _, _ in sub.messages if t.startswith("homeassistant/")}) == 8
        # Every event the log holds reached a subscriber: the three before, the backlog after, no gap. The
        # outage itself is in the log as a fault and is sent too.
        wanted = event_ids(log.path)
        wait_for(lambda: {e["id"] for e in sub.events()} >= set(wanted[3:]), timeout=15, what="the backlog")
        after = [e["id"] for e in sub.events()]
        assert list(dict.fromkeys(after)) == sorted(set(after)), "the backlog goes oldest first"
        assert set(before) | set(after) == set(wanted) and len(wanted) >= 24  # 23 decisions and the outage
        # At least once (mqtt_events.py): only what the hung broker never acknowledged may come twice.
        assert {i for i in after if after.count(i) > 1} <= unacknowledged
        faults = sqlite3.connect(log.path).execute("SELECT detail FROM events WHERE kind = 'fault'").fetchall()
        assert any(json.loads(d)["what"] == "mqtt" and "lost" in json.loads(d)["reason"] for (d,) in faults)
    finally:
        out.close()
        log.close()
        sub.close()


def test_a_broker_down_at_start_is_waited_for(tmp_path):
    b = Broker(tmp_path / "broker")  # its port is chosen, nothing listens there yet
    out, log = make(b.port, tmp_path)
    record = feed(log, [out])
    try:
        for state in ("allow", "idle", "deny"):
            record("decision", state, masked=0, unmasked=0, incorrect=0, door="released")
        wait_for(lambda: sqlite3.connect(log.path).execute(
            "SELECT COUNT(*) FROM events WHERE kind = 'fault'").fetchone()[0] == 1, what="the outage, once")
        b.start()
        sub = Subscriber(b.port)
        wait_for(lambda: len(sub.events()) == 4, timeout=20, what="the backlog")  # 3 decisions and the outage
        assert [e["id"] for e in sub.events()] == event_ids(log.path)
        assert sub.on("mask-appliance/door-1/availability")[-1][0] == b"online"
        sub.close()
    finally:
        out.close()
        log.close()
        b.kill()


def test_a_long_outage_sends_only_the_newest_backlog(tmp_path, caplog):
    b = Broker(tmp_path / "broker")
    out, log = make(b.port, tmp_path, backlog=10)
    record = feed(log, [out])
    try:
        for i in range(30):
            record("decision", "deny" if i % 2 else "allow", masked=0, unmasked=0, incorrect=0, door="released")
        log.status({**STATUS, "frames": 30})  # its state goes out after the backlog, on (re)connection
        assert log.flush()
        b.start()
        sub = Subscriber(b.port)
        wait_for(lambda: len(sub.events()) >= 10, timeout=20, what="the backlog")
        settle(log, sub, 31)  # nothing more may come
        assert [e["id"] for e in sub.events()] == event_ids(log.path)[-10:]  # the newest ten, oldest first
        assert any("are not sent (more than backlog = 10)" in r.getMessage() for r in caplog.records)
        sub.close()
    finally:
        out.close()
        log.close()
        b.kill()


def test_the_example_acl_lets_a_door_write_only_its_own_topics(tmp_path):
    users = {"door-1": "pw1", "door-2": "pw2", "homeassistant": "pwha"}
    b = Broker(tmp_path / "broker", users=users, extra=[f"acl_file {EXAMPLES / 'acl'}"]).start()
    (tmp_path / "pw1").write_text("pw1\n")
    try:
        ha = Subscriber(b.port, client_id="ha", user=("homeassistant", "pwha"))
        log = EventLog(tmp_path / "events.db")
        out = mqtt.from_config(mqtt.MqttConfig(host="127.0.0.1", port=b.port, username="door-1",
                                               password_file=tmp_path / "pw1"), log, hostname="door-1")
        log.subscribe(out)
        log.status(STATUS)
        log.record("decision", "deny", masked=0, unmasked=1, incorrect=0, door="locked")
        wait_for(lambda: ha.events(), what="the door's event, read by Home Assistant")
        wait_for(lambda: len({t for t, _, _ in ha.messages if t.startswith("homeassistant/")}) == 8, what="discovery")
        # Home Assistant's birth message reaches the door, which sends discovery again.
        before = len(ha.on("homeassistant/sensor/mask-appliance-door-1/door/config"))
        ha.client.publish("homeassistant/status", "online", qos=1)
        wait_for(lambda: len(ha.on("homeassistant/sensor/mask-appliance-door-1/door/config")) > before,
                 what="discovery again")
        # door-2 (or anyone) cannot speak for door-1: the broker drops what it may not write.
        rogue = paho.Client(CallbackAPIVersion.VERSION2, client_id="rogue")
        rogue.username_pw_set("door-2", "pw2")
        rogue.connect("127.0.0.1", b.port)
        rogue.loop_start()
        for topic in ("mask-appliance/door-1/state", "homeassistant/lock/mask-appliance-door-1/door/config",
                      "mask-appliance/door-1/availability"):
            rogue.publish(topic, '{"door": "released"}', qos=1).wait_for_publish(5)
        rogue.publish("mask-appliance/door-2/state", '{"door": "released"}', qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: ha.on("mask-appliance/door-2/state"), what="door-2's own state")
        assert not any(p == b'{"door": "released"}' for t, p, _ in ha.messages if "door-1" in t)
        rogue.disconnect()
        rogue.loop_stop()
        log.close()
        ha.close()
        # The README's removal, with the door's own login: the ACL lets it clear its own retained messages.
        for topic in ("homeassistant/+/mask-appliance-door-1/+/config", "mask-appliance/door-1/#"):
            subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-u", "door-1", "-P", "pw1",
                            "-t", topic, "--retained-only", "--remove-retained", "-W", "2"], capture_output=True,
                           timeout=10)
        # door-2's retained state, subscribed last, is the marker: the retained messages of the earlier
        # subscriptions came before it
        late = Subscriber(b.port, topics=("homeassistant/#", "mask-appliance/door-1/#", "mask-appliance/door-2/#"),
                          client_id="ha-late", user=("homeassistant", "pwha"))
        wait_for(lambda: late.on("mask-appliance/door-2/state"), what="door-2's retained state, which stays")
        assert [t for t, _, r in late.messages if r and "door-1" in t] == []
        late.close()
    finally:
        b.kill()


def test_the_example_bridge_carries_a_shop_to_the_centre(tmp_path):
    central = Broker(tmp_path / "central").start()
    # The example, pointed at our central broker, without the TLS and credentials a real uplink has.
    bridge = [line.replace("CENTRAL_HOST:8883", f"127.0.0.1:{central.port}")
              for line in (EXAMPLES / "bridge.conf").read_text().splitlines()
              if not line.startswith(("remote_username", "remote_password", "bridge_cafile"))]
    shop = Broker(tmp_path / "shop", extra=bridge).start()
    try:
        centre = Subscriber(central.port, client_id="central-ha")
        out, log = make(shop.port, tmp_path)
        log.subscribe(out)
        log.status(STATUS)
        log.record("decision", "deny", masked=0, unmasked=1, incorrect=0, door="locked")
        wait_for(lambda: centre.events(), timeout=20, what="the event at the centre")
        assert centre.events()[0]["id"] == event_ids(log.path)[0]
        wait_for(lambda: len({t for t, _, _ in centre.messages if t.startswith("homeassistant/")}) == 8,
                 what="discovery at the centre")
        assert json.loads(centre.on("mask-appliance/door-1/state")[-1][0])["door"] == "locked"
        before = len(centre.on("homeassistant/sensor/mask-appliance-door-1/door/config"))
        centre.client.publish("homeassistant/status", "online", qos=1)  # HA at the centre restarts
        wait_for(lambda: len(centre.on("homeassistant/sensor/mask-appliance-door-1/door/config")) > before,
                 what="discovery again, through the bridge")
        log.close()
        centre.close()
    finally:
        shop.kill()
        central.kill()


def test_wrong_password_is_a_logged_fault_not_a_crash(tmp_path, caplog):
    b = Broker(tmp_path / "broker", users={"door": "right-secret"}).start()
    (tmp_path / "pw-wrong").write_text("wrong-secret\n")
    (tmp_path / "pw-right").write_text("right-secret\n")
    try:
        with caplog.at_level(logging.WARNING, logger="appliance.reporting.mqtt"):
            out, log = make(b.port, tmp_path, username="door", password_file=tmp_path / "pw-wrong")
            record = feed(log, [out])
            rows = wait_for(lambda: sqlite3.connect(log.path).execute(
                "SELECT detail FROM events WHERE kind = 'fault'").fetchall(), what="the fault")
            reason = json.loads(rows[0][0])["reason"]
            assert "refused" in reason and "authori" in reason.lower()
            record("decision", "deny", masked=0, unmasked=1, incorrect=0, door="locked")  # still fine
            # paho retries with back-off (1 s, 2 s, ...): once the broker has refused three tries, the output has
            # seen at least two refused before it tried again. The fault is recorded once, not once per try.
            wait_for(lambda: (b.folder / "mosquitto.log").read_text().count("not authorised") >= 3, timeout=30,
                     what="three refused tries")
            assert log.flush()
            assert len(sqlite3.connect(log.path).execute("SELECT id FROM events WHERE kind = 'fault'").fetchall()) == 1
            out.close()
            log.close()
        assert any("refused" in r.getMessage() for r in caplog.records)
        # The right password connects (anonymous clients are refused by this broker, so the output itself tells).
        out, log = make(b.port, tmp_path / "right", username="door", password_file=tmp_path / "pw-right")
        wait_for(lambda: out.connected, what="login with the right password")
        out.close()
        log.close()
    finally:
        b.kill()


def test_last_will_says_offline_when_the_appliance_dies(broker, tmp_path):
    sub = Subscriber(broker.port)
    code = ("import sys, time; from appliance.reporting import mqtt; from appliance.reporting.events import EventLog; "
            f"o = mqtt.from_config(mqtt.MqttConfig(host='127.0.0.1', port={broker.port}), "
            f"EventLog({str(tmp_path / 'e.db')!r}), hostname='door-9'); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ})
    try:
        wait_for(lambda: sub.on("mask-appliance/door-9/availability"), timeout=20, what="online")
        assert sub.on("mask-appliance/door-9/availability")[-1] == (b"online", False)
        proc.kill()  # no clean stop: only the broker's last will can say it
        wait_for(lambda: sub.on("mask-appliance/door-9/availability")[-1][0] == b"offline", timeout=10,
                 what="the last will")
    finally:
        proc.kill()
        proc.wait()
        sub.close()


# -- the service end to end: [mqtt] in Config, the output subscribed to the service's event log ------------------
def test_mqtt_is_a_section_of_the_config():
    assert "mqtt" in {f.name for f in dataclasses.fields(config.Config)}
    assert config.parse({}, "<defaults>").mqtt == mqtt.MqttConfig()  # off unless a host is given


def test_the_service_publishes_while_the_broker_comes_and_goes(model_dir, tmp_path, broker):

    from appliance.service import Service

    table = {"classifier": {"model": str(model_dir / "mask_classifier.tflite")},
             "events": {"database": str(tmp_path / "events.db")},
             "service": {"status_interval": 0.5, "camera_timeout": 600},
             "mqtt": {"host": "127.0.0.1", "port": broker.port, "client_id": "door-e2e"}}
    service = Service(config.parse(table))
    masked, unmasked = scene_images("with_mask", limit=1), scene_images("without_mask", limit=1)
    source = PacedScenes((masked + unmasked) * 3, still_frames=12, fps=10)
    sub = Subscriber(broker.port)
    thread = threading.Thread(target=service.run, args=(source,), daemon=True)
    thread.start()
    prefix = f"mask-appliance/{socket.gethostname()}"
    try:
        wait_for(lambda: sub.on(f"{prefix}/availability"), timeout=20, what="online")
        wait_for(lambda: len({t for t, _, _ in sub.messages if t.startswith("homeassistant/")}) == 8,
                 what="discovery")
        wait_for(lambda: any(e["state"] == "deny" for e in sub.events()), timeout=30, what="a deny event")
        broker.kill()
        sub.close()
        before = {e["id"] for e in sub.events()}
        seen = service.frames
        wait_for(lambda: service.frames > seen + 10, what="frames going on with the broker down")
        broker.start()
        sub = Subscriber(broker.port, client_id="test-sub-2")
        wait_for(lambda: sub.on(f"{prefix}/availability"), timeout=20, what="online again")
        state = json.loads(wait_for(lambda: sub.on(f"{prefix}/state"), what="fresh state")[-1][0])
        assert state["frames"] > seen and state["model_sha256"] == service.pipeline.classifier.sha256
        wait_for(source.done.is_set, timeout=60, what="the scenes to end")
        service.events.flush()
        wanted = set(event_ids(tmp_path / "events.db"))
        wait_for(lambda: before | {e["id"] for e in sub.events()} >= wanted, timeout=15,
                 what="every event of the run, none missing")
    finally:
        service.stop()
        thread.join(30)
    wait_for(lambda: sub.on(f"{prefix}/availability")[-1][0] == b"offline", what="offline at stop")
    sub.close()
