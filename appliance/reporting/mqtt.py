"""MQTT output: availability, state and events on a broker, with Home Assistant discovery (paho-mqtt 2.x).

An event-log output (see events.py): `on_record`, `on_status` and `on_frame` run on the event writer thread
and only put work on a bounded queue. A worker thread of ours turns that into publishes (mqtt_publish.py), and
paho's own network thread (`loop_start`) talks to the broker, reconnecting with back-off. So a broker that is down,
slow or refuses the login costs the frame loop nothing. This module is the connection: the paho client, its
callbacks, outages recorded once as faults, start and stop. The parts: mqtt_publish (the worker), mqtt_events (ids,
acknowledgements, the backlog), mqtt_state (the state payload), mqtt_discovery (topics, Home Assistant discovery).

Topics under `topic_prefix`: `availability` (online/offline, retained, the last will), `state` (retained JSON, on
every change and at least every 30 s), `event` (QoS 1, one JSON per decision, fault, recovery, model swap and
config reload). Home Assistant discovery is sent again whenever `<discovery_prefix>/status` says online.

A little over this project's 200-line guide: the client's callbacks and its outage accounting belong together.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from appliance import __version__
from appliance.config import ConfigError, MqttConfig
from appliance.reporting import events as events_mod
from appliance.reporting.mqtt_discovery import AVAILABLE, NOT_AVAILABLE, Topics, discovery, slug
from appliance.reporting.mqtt_events import EVENT_KINDS
from appliance.reporting.mqtt_publish import Publisher
from appliance.reporting.mqtt_state import DoorState
from appliance.vocab import Fault, Kind

__all__ = ["EVENT_KINDS", "MqttConfig", "MqttOutput", "from_config"]

log = logging.getLogger(__name__)

_PAHO_LOG = logging.getLogger("appliance.reporting.mqtt.paho")
# paho logs "Client is not connected" as an error each time its loop runs without a socket (a broker away, a
# disconnect at stop); our own outage line already says so once.
_PAHO_LOG.addFilter(lambda record: not record.getMessage().startswith("Client is not connected"))


class MqttOutput:
    """Publishes the appliance to an MQTT broker. Build it with `from_config`; `close()` says offline and stops."""

    def __init__(self, cfg: MqttConfig, *, events: Any = None, database: Path | None = None,
                 password: str | None = None, hostname: str | None = None, version: str = __version__) -> None:
        host = hostname or socket.gethostname()
        self.cfg = cfg
        self.topics = Topics(cfg.topic_prefix or f"mask-appliance/{host}")
        self.client_id = cfg.client_id or f"mask-appliance-{host}"
        self.node_id = slug(self.client_id)
        self.version = version
        self.events = events
        self.database = Path(database) if database else (Path(events.path) if events is not None and
                                                          hasattr(events, "path") else None)
        base_id = events_mod.last_id(self.database) if self.database else 0  # earlier runs' events: not ours
        counts = events_mod.decision_counts(self.database) if self.database else {}
        self.door_state = DoorState(counts, base_id)
        self._outage: str | None = None  # the reason of the current outage, logged and recorded once
        self._closed = False

        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311)
        self.client.enable_logger(_PAHO_LOG)
        self.client.suppress_exceptions = True  # a bug in a callback of ours is logged, never ends paho's thread
        if cfg.username:
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls_ca is not None:
            self.client.tls_set(ca_certs=str(cfg.tls_ca))
        self.client.will_set(self.topics.availability, NOT_AVAILABLE, qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        # paho's own queue is bounded too: past it publish() says so at once instead of growing without end.
        self.client.max_queued_messages_set(cfg.queue)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.publisher = Publisher(self.client, cfg, self.topics, self.door_state, self.discovery, events,
                                   self.database, base_id)

    def start(self) -> MqttOutput:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        self.client.loop_start()
        self.publisher.start()
        log.info("mqtt: publishing to %s:%d under %s", self.cfg.host, self.cfg.port, self.topics.prefix)
        return self

    @property
    def connected(self) -> bool:
        """Whether the broker took our login and the link is up now."""
        return self.publisher.connected.is_set()

    # -- the Output protocol (event writer thread: never blocks) --------------------------------------------------
    def on_record(self, record: dict) -> None:
        self.door_state.on_record(record)
        self.publisher.put(record)

    def on_status(self, status: dict) -> None:
        self.door_state.on_status(status)
        self.publisher.poke()

    def on_frame(self, frame: dict) -> None:
        pass  # per-frame figures go to /metrics; MQTT carries changes, not a stream

    def close(self) -> None:
        if self._closed:  # the event log closes its outputs; the service may too
            return
        self._closed = True
        self.publisher.stop()
        if self.connected:
            info = self.client.publish(self.topics.availability, NOT_AVAILABLE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not sent in 2 s: the last will says it
                info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()

    # -- what is sent ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return self.door_state.payload()

    def discovery(self) -> dict[str, dict[str, Any]]:
        """Topic -> retained Home Assistant discovery config, one per entity."""
        return discovery(self.cfg.discovery_prefix, self.node_id, self.topics, self.version,
                         self.door_state.status.get("model_sha256"))

    # -- paho callbacks (paho's network thread) ----------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Any) -> None:
        if reason_code.is_failure:
            self._fault(f"refused by {self.cfg.host}:{self.cfg.port}: {reason_code}")
            return
        if self._outage:
            log.info("mqtt: connected to %s:%d again", self.cfg.host, self.cfg.port)
        self._outage = None
        if self.cfg.discovery_prefix:
            client.subscribe(f"{self.cfg.discovery_prefix}/status", qos=1)
        self.publisher.link_up()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._fault(f"cannot reach {self.cfg.host}:{self.cfg.port}")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Any) -> None:
        if self.publisher.link_down() and not self.publisher.stopping:
            self._fault(f"lost {self.cfg.host}:{self.cfg.port}: {reason_code}")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic == f"{self.cfg.discovery_prefix}/status" and message.payload.strip() == AVAILABLE.encode():
            log.info("mqtt: Home Assistant came online: sending discovery and state again")
            self.publisher.hello()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Any) -> None:
        self.publisher.acked(mid)

    def _fault(self, reason: str) -> None:
        """Log and record an outage once, not on every reconnection attempt."""
        if self._outage == reason:
            log.debug("mqtt: %s (still)", reason)
            return
        self._outage = reason
        log.warning("mqtt: %s; retrying with back-off, the frame loop goes on", reason)
        if self.events is not None:
            try:
                self.events.record(Kind.FAULT, None, what=Fault.MQTT, reason=reason)
            except Exception:  # the log may be closing; the warning above is the record then
                log.debug("mqtt: could not record the fault", exc_info=True)


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
