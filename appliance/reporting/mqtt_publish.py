"""The MQTT output's worker: what goes to the broker and when (availability, discovery, state, events).

It owns a bounded queue of records and a thread of its own. The connection side (mqtt.py) tells it when the
link comes up (`link_up`), goes down (`link_down`), when Home Assistant says hello (`hello`) and what the broker
acknowledged (`acked`); it never waits on paho's network thread, and nothing here runs on the event writer's. Event
ids, acknowledgements and the backlog are appliance.reporting.mqtt_events.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from appliance.config import MqttConfig
from appliance.reporting.mqtt_discovery import AVAILABLE, Topics
from appliance.reporting.mqtt_events import EventStream
from appliance.reporting.mqtt_state import DoorState

log = logging.getLogger("appliance.reporting.mqtt")

STATE_EVERY = 30.0  # seconds: Home Assistant and collectors see a fresh state at least this often
FIRST_STATUS_WAIT = 5.0  # seconds the first discovery waits for the service's first status (it comes at start)


class Publisher:
    """Turns queued records and the door's state into publishes on a connected paho client, in a thread of its own.
    `put` and the `link_*` calls never block; `stop()` ends the thread."""

    def __init__(self, client: paho.Client, cfg: MqttConfig, topics: Topics, state: DoorState,
                 discovery: Callable[[], dict[str, dict[str, Any]]], events: Any, database: Path | None,
                 base_id: int) -> None:
        self.client, self.cfg, self.topics, self.state = client, cfg, topics, state
        self.discovery = discovery
        self.dropped = 0  # messages shed: queue full, or paho's own queue full for a state message
        self.connected = threading.Event()
        self.stream = EventStream(self._publish, topics.event, events, database, cfg.backlog, base_id,
                                  live=lambda: self.connected.is_set() and not self._stop.is_set())
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=cfg.queue)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._online = threading.Event()  # (re)connected: availability and the events the broker missed
        self._hello = threading.Event()  # (re)connected, or Home Assistant came online: discovery and state again
        self._drop_logged = 0.0
        self._discovered_sha: Any = None
        self._connected_at = 0.0
        self._last_state_key: Any = None
        self._last_state_at = 0.0
        self._thread = threading.Thread(target=self._run, name="mqtt-out", daemon=True)

    # -- told by the output (event writer thread) and the connection (paho's thread) ----------------------------------
    def start(self) -> None:
        self._thread.start()

    def put(self, record: dict) -> None:
        """Queue one record (every record, so that the ids are seen to run on without a gap)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._shed("event", record.get("id"))
        self._wake.set()

    def poke(self) -> None:
        """Something changed (a status): look at the state again."""
        self._wake.set()

    def link_up(self) -> None:
        self._connected_at = time.monotonic()
        self.connected.set()
        self._online.set()
        self._hello.set()
        self._wake.set()

    def link_down(self) -> bool:
        """The link is gone; True if it was up."""
        was = self.connected.is_set()
        self.connected.clear()
        return was

    def hello(self) -> None:
        """Home Assistant (re)started: discovery and state again."""
        self._hello.set()
        self._wake.set()

    def acked(self, mid: int) -> None:
        self.stream.acked(mid)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    # -- the thread ---------------------------------------------------------------------------------------------------
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
        if not self.connected.is_set():
            # Nothing can be sent: empty the queue, the log keeps the events for when the broker returns.
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    return
        if self._online.is_set():  # a new connection: say so, then send what the broker missed
            self._online.clear()
            self.stream.rewind()
            self._publish(self.topics.availability, AVAILABLE, qos=1, retain=True)
            self.stream.catch_up()
        if self._hello.is_set():
            # Right after start, discovery and state wait a moment for the service's first status, so that they
            # name the model and the door from the first message on.
            if self.state.status or time.monotonic() - self._connected_at >= FIRST_STATUS_WAIT:
                self._hello.clear()
                self._publish(self.topics.availability, AVAILABLE, qos=1, retain=True)
                self._publish_discovery()
                self._publish_state(force=True)
        elif self.state.status.get("model_sha256") != self._discovered_sha:
            self._publish_discovery()  # the device names the model it runs
        self._send_queued()
        self._publish_state()

    def _send_queued(self) -> None:
        while self.connected.is_set() and not self._stop.is_set():
            try:
                self.stream.take(self._queue.get_nowait())
            except queue.Empty:
                return

    def _publish_discovery(self) -> None:
        self._discovered_sha = self.state.status.get("model_sha256")
        if self.cfg.discovery_prefix:
            for topic, payload in self.discovery().items():
                self._publish(topic, json.dumps(payload), qos=1, retain=True)

    def _publish_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._hello.is_set():
            return  # the first state goes with discovery
        if not force and not self.state.changed and now - self._last_state_at < STATE_EVERY:
            return
        state = self.state.payload()
        key = {k: v for k, v in state.items() if k != "time"}
        if not force and key == self._last_state_key and now - self._last_state_at < STATE_EVERY:
            self.state.changed = False
            return
        self.state.changed = False
        if self._publish(self.topics.state, json.dumps(state), qos=1, retain=self.cfg.retain_state) is not None:
            self._last_state_key, self._last_state_at = key, now

    def _publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False,
                 wait: bool = False) -> paho.MQTTMessageInfo | None:
        """Hand one message to paho; None when it could not take it (not connected, or its queue is full)."""
        for _ in range(50 if wait else 1):  # events may wait for room (this is our thread); state never does
            if not self.connected.is_set() or self._stop.is_set():
                return None
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc == paho.MQTT_ERR_SUCCESS:
                return info
            if info.rc != paho.MQTT_ERR_QUEUE_SIZE:
                return None
            time.sleep(0.1)
        self._shed(topic)
        return None

    def _shed(self, what: str, ident: Any = None) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_logged > 10:  # a burst of drops is one line every 10 s, with the running total
            self._drop_logged = now
            log.warning("mqtt: queue full, %s %s shed (%d shed so far)", what, ident if ident is not None else "",
                        self.dropped)
