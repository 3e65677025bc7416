"""MQTT output: availability, state and events on a broker, with Home Assistant discovery (paho-mqtt 2.x).

An event-log output (see appliance.events): `on_record`, `on_status` and `on_frame` run on the event writer thread
and only put work on a bounded queue. A worker thread of ours turns that into publishes, and paho's own network
thread (`loop_start`) talks to the broker, reconnecting with back-off. So a broker that is down, slow or refuses the
login costs the frame loop nothing. The event log stays the record of truth: events decided while the broker was away
(or shed from a full queue) are read back from it (EventLog.since), oldest first and bounded, so a collector that
tracks the ids sees no gap. Delivery is at least once: after a broken connection an event may come twice, same id.

Topics under `topic_prefix`: `availability` (online/offline, retained, the last will), `state` (retained JSON, on
every change and at least every 30 s), `event` (QoS 1, one JSON per decision, fault and model swap).
Home Assistant discovery uses one retained `<discovery_prefix>/<component>/<node_id>/<object_id>/config` per entity,
the form every Home Assistant version reads, and is sent again whenever `<discovery_prefix>/status` says online.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance import __version__
from appliance import events as events_mod
from appliance.config import ConfigError, MqttConfig

log = logging.getLogger(__name__)





STATE_EVERY = 30.0  # seconds: Home Assistant and collectors see a fresh state at least this often
FIRST_STATUS_WAIT = 5.0  # seconds the first discovery waits for the service's first status (it comes at start)
EVENT_KINDS = ("decision", "fault", "model")
_TOPIC_BAD = re.compile(r"[#+\x00]")


def check(cfg: MqttConfig, origin: str) -> None:
    """ConfigError naming the key and value for what the types alone cannot catch."""
    if not cfg.host:
        return
    if any(c.isspace() for c in cfg.host):
        raise ConfigError(f"{origin}: [mqtt] host = {cfg.host!r} is not a host name or address")
    for key in ("topic_prefix", "discovery_prefix"):
        value = getattr(cfg, key)
        if _TOPIC_BAD.search(value) or value.startswith("/") or value.endswith("/"):
            raise ConfigError(f"{origin}: [mqtt] {key} = {value!r} is not a topic prefix (no +, #, leading or "
                              "trailing /)")
    for key in ("password_file", "tls_ca"):
        path = getattr(cfg, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{origin}: [mqtt] {key} = '{path}' does not exist")
    if cfg.password_file is not None and not cfg.username:
        raise ConfigError(f"{origin}: [mqtt] password_file = '{cfg.password_file}' is set but username is empty")


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text).strip("_") or "appliance"


class _NotConnectedNoise(logging.Filter):
    """paho logs "Client is not connected" as an error each time its loop runs without a socket (a broker away,
    a disconnect at stop); our own outage line already says so once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


_PAHO_LOG = logging.getLogger("appliance.mqtt.paho")
_PAHO_LOG.addFilter(_NotConnectedNoise())


class MqttOutput:
    """Publishes the appliance to an MQTT broker. Build it with `from_config`; `close()` says offline and stops."""

    def __init__(self, cfg: MqttConfig, *, events: Any = None, database: Path | None = None,
                 password: str | None = None, hostname: str | None = None, version: str = __version__) -> None:
        host = hostname or socket.gethostname()
        self.cfg = cfg
        self.prefix = cfg.topic_prefix or f"mask-appliance/{host}"
        self.client_id = cfg.client_id or f"mask-appliance-{host}"
        self.node_id = _slug(self.client_id)
        self.version = version
        self.events = events
        self.database = Path(database) if database else (Path(events.path) if events is not None and
                                                          hasattr(events, "path") else None)
        self.topic_availability = f"{self.prefix}/availability"
        self.topic_state = f"{self.prefix}/state"
        self.topic_event = f"{self.prefix}/event"
        self.dropped = 0  # messages shed: queue full, or paho's own queue full for a state message
        self.published_events = 0
        last_id = events_mod.last_id(self.database) if self.database else 0
        counts = events_mod.decision_counts(self.database) if self.database else {}
        self._base_id = last_id  # events up to here were the business of an earlier run
        self._sent_id = last_id  # the last event id handed to paho while connected
        self._acked_id = last_id  # the last event id the broker acknowledged
        self._counts = {"allow": counts.get("allow", 0), "deny": counts.get("deny", 0)}
        self._status: dict[str, Any] = {}
        self._last_decision: dict[str, Any] = {}
        self._decision: str | None = None
        self._door: str | None = None
        self._state_changed = True
        self._last_state_key: Any = None
        self._last_state_at = 0.0
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=cfg.queue)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._online = threading.Event()  # (re)connected: availability and the events the broker missed
        self._hello = threading.Event()  # (re)connected, or Home Assistant came online: discovery and state again
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._mids: dict[int, int] = {}
        self._outage: str | None = None  # the reason of the current outage, logged and recorded once
        self._drop_logged = 0.0
        self._discovered_sha: Any = None
        self._closed = False
        self._connected_at = 0.0

        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311)
        self.client.enable_logger(_PAHO_LOG)
        self.client.suppress_exceptions = True  # a bug in a callback of ours is logged, never ends paho's thread
        if cfg.username:
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls_ca is not None:
            self.client.tls_set(ca_certs=str(cfg.tls_ca))
        self.client.will_set(self.topic_availability, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        # paho's own queue is bounded too: past it publish() says so at once instead of growing without end.
        self.client.max_queued_messages_set(cfg.queue)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._worker = threading.Thread(target=self._run, name="mqtt-out", daemon=True)

    def start(self) -> MqttOutput:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        self.client.loop_start()
        self._worker.start()
        log.info("mqtt: publishing to %s:%d under %s", self.cfg.host, self.cfg.port, self.prefix)
        return self

    # -- the Output protocol (event writer thread: never blocks) --------------------------------------------------
    def on_record(self, record: dict) -> None:
        if record.get("kind") == "decision":
            state = record.get("state")
            if state in self._counts and int(record.get("id") or 0) > self._base_id:
                self._counts[state] += 1
            self._last_decision = {"decision": state, **(record.get("detail") or {})}
            self._decision = state
            self._door = self._last_decision.get("door") or self._door
            self._state_changed = True
        elif record.get("kind") == "fault" and (record.get("detail") or {}).get("door"):
            self._door = record["detail"]["door"]  # a lost camera puts the door in its fail state
        try:  # every record, so that the worker sees the ids run on without a gap
            self._queue.put_nowait(record)
        except queue.Full:
            self._shed("event", record.get("id"))
        self._wake.set()

    def on_status(self, status: dict) -> None:
        self._status = dict(status)
        # Whichever came last, a record or a status, says where the door and the decision are now.
        self._door = status.get("door") or self._door
        self._decision = status.get("decision") or self._decision
        self._state_changed = True
        self._wake.set()

    def on_frame(self, frame: dict) -> None:
        pass  # per-frame figures go to /metrics; MQTT carries changes, not a stream

    def close(self) -> None:
        if self._closed:  # the event log closes its outputs; the service may too
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout=5)
        if self._connected.is_set():
            info = self.client.publish(self.topic_availability, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not sent in 2 s: the last will says it
                info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()

    # -- what is sent ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        s, d = self._status, self._last_decision
        return {
            "decision": self._decision or "idle",
            "door": self._door,
            "masked": int(d.get("masked") or 0),
            "unmasked": int(d.get("unmasked") or 0) + int(d.get("incorrect") or 0),
            "allows": self._counts["allow"],
            "denials": self._counts["deny"],
            "fps": s.get("fps"),
            "frames": s.get("frames"),
            "camera_up": not s.get("camera_lost", False),
            "model_sha256": s.get("model_sha256"),
            "running": s.get("running", True),
            "time": round(time.time(), 3),
        }

    def discovery(self) -> dict[str, dict[str, Any]]:
        """Topic -> retained Home Assistant discovery config, one per entity."""
        sha = str(self._status.get("model_sha256") or "")[:12]
        device = {"identifiers": [self.node_id], "name": f"Mask door {self.node_id}",
                  "manufacturer": "mask-appliance", "model": "Face-mask door appliance",
                  "sw_version": f"{self.version} (model {sha or 'unknown'})"}
        origin = {"name": "mask-appliance", "sw": self.version}
        entities = [
            ("binary_sensor", "unmasked", {"name": "Unmasked person", "icon": "mdi:face-mask-outline",
                                           "value_template": "{{ 'ON' if value_json.decision == 'deny' else 'OFF' }}"}),
            ("sensor", "decision", {"name": "Decision", "device_class": "enum", "options": ["idle", "allow", "deny"],
                                    "value_template": "{{ value_json.decision }}"}),
            ("sensor", "door", {"name": "Door", "device_class": "enum", "options": ["locked", "released"],
                                "value_template": "{{ value_json.door }}"}),
            ("sensor", "fps", {"name": "Frame rate", "state_class": "measurement", "unit_of_measurement": "fps",
                               "suggested_display_precision": 1, "entity_category": "diagnostic",
                               "value_template": "{{ value_json.fps }}"}),
            ("sensor", "model", {"name": "Model", "entity_category": "diagnostic", "icon": "mdi:brain",
                                 "value_template": "{{ (value_json.model_sha256 or '')[:12] }}"}),
            ("sensor", "denials", {"name": "Denials", "state_class": "total_increasing", "icon": "mdi:account-cancel",
                                   "value_template": "{{ value_json.denials }}"}),
            ("sensor", "allows", {"name": "Allows", "state_class": "total_increasing", "icon": "mdi:account-check",
                                  "value_template": "{{ value_json.allows }}"}),
            ("binary_sensor", "camera", {"name": "Camera", "device_class": "connectivity",
                                         "entity_category": "diagnostic",
                                         "value_template": "{{ 'ON' if value_json.camera_up else 'OFF' }}"}),
        ]
        out = {}
        for component, key, extra in entities:
            out[f"{self.cfg.discovery_prefix}/{component}/{self.node_id}/{key}/config"] = {
                **extra,
                "unique_id": f"{self.node_id}_{key}",
                "default_entity_id": f"{component}.{self.node_id}_{key}",
                "state_topic": self.topic_state,
                "availability_topic": self.topic_availability,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": device,
                "origin": origin,
            }
        return out

    # -- paho callbacks (paho's network thread) ----------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._fault(f"refused by {self.cfg.host}:{self.cfg.port}: {reason_code}")
            return
        if self._outage:
            log.info("mqtt: connected to %s:%d again", self.cfg.host, self.cfg.port)
        self._outage = None
        if self.cfg.discovery_prefix:
            client.subscribe(f"{self.cfg.discovery_prefix}/status", qos=1)
        self._connected_at = time.monotonic()
        self._connected.set()
        self._online.set()
        self._hello.set()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._fault(f"cannot reach {self.cfg.host}:{self.cfg.port}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stop.is_set():
            self._fault(f"lost {self.cfg.host}:{self.cfg.port}: {reason_code}")

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == f"{self.cfg.discovery_prefix}/status" and message.payload.strip() == b"online":
            log.info("mqtt: Home Assistant came online: sending discovery and state again")
            self._hello.set()
            self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            event_id = self._mids.pop(mid, None)
            if event_id is not None and event_id > self._acked_id:
                self._acked_id = event_id

    def _fault(self, reason: str) -> None:
        """Log and record an outage once, not on every reconnection attempt."""
        if self._outage == reason:
            log.debug("mqtt: %s (still)", reason)
            return
        self._outage = reason
        log.warning("mqtt: %s; retrying with back-off, the frame loop goes on", reason)
        if self.events is not None:
            try:
                self.events.record("fault", None, what="mqtt", reason=reason)
            except Exception:  # the log may be closing; the warning above is the record then
                log.debug("mqtt: could not record the fault", exc_info=True)

    def _shed(self, what: str, ident: Any = None) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_logged > 10:  # a burst of drops is one line every 10 s, with the running total
            self._drop_logged = now
            log.warning("mqtt: queue full, %s %s shed (%d shed so far)", what, ident if ident is not None else "",
                        self.dropped)

    # -- the worker --------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self._step()
            except Exception:  # a bug here must not end MQTT for the life of the service
                log.exception("mqtt: publishing failed")
                time.sleep(1)

    def _step(self) -> None:
        if not self._connected.is_set():
            # Nothing can be sent: empty the queue, the log keeps the events for when the broker returns.
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    return
        if self._online.is_set():  # a new connection: say so, then send what the broker missed
            self._online.clear()
            with self._lock:
                self._sent_id = self._acked_id  # what was not acknowledged goes again
                self._mids.clear()  # acknowledgements of the old connection no longer tell us anything
            self._publish(self.topic_availability, "online", qos=1, retain=True)
            self._catch_up()
        if self._hello.is_set():
            # Right after start, discovery and state wait a moment for the service's first status, so that they
            # name the model and the door from the first message on.
            if self._status or time.monotonic() - self._connected_at >= FIRST_STATUS_WAIT:
                self._hello.clear()
                self._publish(self.topic_availability, "online", qos=1, retain=True)
                self._publish_discovery()
                self._publish_state(force=True)
        elif self._status.get("model_sha256") != self._discovered_sha:
            self._publish_discovery()  # the device names the model it runs
        while self._connected.is_set() and not self._stop.is_set():
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            rid = int(record.get("id") or 0)
            if rid <= self._sent_id:
                continue  # already sent from the log
            if rid > self._sent_id + 1:
                self._catch_up()  # a gap (shed records): fill it from the log first
                if rid <= self._sent_id:
                    continue
            if record.get("kind") in EVENT_KINDS:
                self._publish_event(record)
            else:
                self._sent_id = rid
        self._publish_state()

    def _publish_discovery(self) -> None:
        self._discovered_sha = self._status.get("model_sha256")
        if self.cfg.discovery_prefix:
            for topic, payload in self.discovery().items():
                self._publish(topic, json.dumps(payload), qos=1, retain=True)

    def _catch_up(self) -> None:
        """Send the events after the last one sent, from the log, oldest first: the newest `backlog` records at
        most (a week-long outage is not replayed whole; what is skipped stays in the log and is logged)."""
        if not hasattr(self.events, "since"):
            return  # no event log to read from: what the broker missed is in the journal only
        last = events_mod.last_id(self.database) if self.database else 0
        if last - self._sent_id > self.cfg.backlog:
            log.warning("mqtt: events %d..%d are not sent (more than backlog = %d); they stay in the event log",
                        self._sent_id + 1, last - self.cfg.backlog, self.cfg.backlog)
            self._sent_id = last - self.cfg.backlog
        budget = self.cfg.backlog
        while budget > 0 and self._connected.is_set() and not self._stop.is_set():
            batch = min(200, budget)
            records = self.events.since(self._sent_id, batch)
            for record in records:
                if record.get("kind") in EVENT_KINDS:
                    if not self._publish_event(record):
                        return
                    budget -= 1
                else:
                    self._sent_id = max(self._sent_id, int(record["id"]))
            if len(records) < batch:
                return

    def _publish_event(self, record: dict) -> bool:
        payload = {"id": record["id"], "time": record.get("time"), "kind": record.get("kind"),
                   "state": record.get("state"), "detail": record.get("detail") or {}}
        info = self._publish(self.topic_event, json.dumps(payload, default=str), qos=1, wait=True)
        if info is None:
            return False
        with self._lock:
            self._mids[info.mid] = int(record["id"])
            self._sent_id = max(self._sent_id, int(record["id"]))
        self.published_events += 1
        return True

    def _publish_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._hello.is_set():
            return  # the first state goes with discovery
        if not force and not self._state_changed and now - self._last_state_at < STATE_EVERY:
            return
        state = self.state()
        key = {k: v for k, v in state.items() if k != "time"}
        if not force and key == self._last_state_key and now - self._last_state_at < STATE_EVERY:
            self._state_changed = False
            return
        self._state_changed = False
        if self._publish(self.topic_state, json.dumps(state), qos=1, retain=self.cfg.retain_state) is not None:
            self._last_state_key, self._last_state_at = key, now

    def _publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False,
                 wait: bool = False) -> paho.MQTTMessageInfo | None:
        """Hand one message to paho; None when it could not take it (not connected, or its queue is full)."""
        for _ in range(50 if wait else 1):  # events may wait for room (this is our thread); state never does
            if not self._connected.is_set() or self._stop.is_set():
                return None
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc == paho.MQTT_ERR_SUCCESS:
                return info
            if info.rc != paho.MQTT_ERR_QUEUE_SIZE:
                return None
            time.sleep(0.1)
        self._shed(topic)
        return None


def from_config(cfg: MqttConfig, events: Any = None, *, hostname: str | None = None) -> MqttOutput | None:
    """A started MQTT output, or None when `[mqtt] host` is empty (MQTT off).

    `events` is the service's EventLog: its file is where missed events are read back from, and outages are
    recorded in it as faults.
    """
    if not cfg.host:
        return None
    password = None
    if cfg.password_file is not None:
        try:
            password = next(iter(Path(cfg.password_file).read_text().splitlines()), "")
        except OSError as exc:
            raise ConfigError(f"[mqtt] password_file = '{cfg.password_file}': cannot read ({exc.strerror})") from None
    try:
        output = MqttOutput(cfg, events=events, password=password, hostname=hostname)
    except OSError as exc:  # ssl.SSLError too: a tls_ca that is no CA certificate
        raise ConfigError(f"[mqtt] tls_ca = '{cfg.tls_ca}': cannot be used ({exc})") from None
    return output.start()
