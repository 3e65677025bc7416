"""The MQTT output's `<prefix>/event` stream: which event ids were sent and acknowledged, and the backlog.

The event log is the record of truth: events decided while the broker was away (or shed from a full queue) are read
back from it (EventLog.since), oldest first and bounded by `[mqtt] backlog`, so a collector that tracks the ids sees
no gap. Delivery is at least once: after a broken connection what the broker did not acknowledge goes again, so an
event may come twice, with the same id.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from appliance.reporting import events as events_mod
from appliance.vocab import Kind

log = logging.getLogger("appliance.reporting.mqtt")

# The kinds sent on `<prefix>/event`; start and stop are not (availability says that). An older log's rows keep the
# kinds they were written with ("frames back" as a fault, a config reload as a model event) and go as they are.
EVENT_KINDS: tuple[str, ...] = (Kind.DECISION, Kind.FAULT, Kind.RECOVERY, Kind.MODEL, Kind.CONFIG)
BATCH = 200  # events read from the log at once while catching up

# (topic, payload, qos, retain, wait) -> paho's message info, or None when it could not take the message
Send = Callable[..., "paho.MQTTMessageInfo | None"]


def event_payload(record: dict[str, Any]) -> dict[str, Any]:
    """What `<prefix>/event` carries for one record: the fields the log keeps, never a face image."""
    return {"id": record["id"], "time": record.get("time"), "kind": record.get("kind"), "state": record.get("state"),
            "detail": record.get("detail") or {}}


class EventStream:
    """Sends events in id order through `send`, tracks what the broker acknowledged, and fills gaps from the log.
    Called from the publisher's thread, except `acked` (paho's thread), hence the lock."""

    def __init__(self, send: Send, topic: str, events: Any, database: Path | None, backlog: int,
                 base_id: int, live: Callable[[], bool]) -> None:
        self.send, self.topic, self.events, self.database = send, topic, events, database
        self.backlog, self.live = backlog, live
        self.published = 0
        self.sent_id = base_id  # the last event id handed to paho while connected
        self._acked_id = base_id  # the last event id the broker acknowledged
        self._mids: dict[int, int] = {}
        self._lock = threading.Lock()

    def rewind(self) -> None:
        """A new connection: what was not acknowledged goes again."""
        with self._lock:
            self.sent_id = self._acked_id
            self._mids.clear()  # acknowledgements of the old connection no longer tell us anything

    def acked(self, mid: int) -> None:
        with self._lock:
            event_id = self._mids.pop(mid, None)
            if event_id is not None and event_id > self._acked_id:
                self._acked_id = event_id

    def take(self, record: dict[str, Any]) -> None:
        """One record from the live queue: sent if it is an event not sent yet, after any gap before it."""
        rid = int(record.get("id") or 0)
        if rid <= self.sent_id:
            return  # already sent from the log
        if rid > self.sent_id + 1:
            self.catch_up()  # a gap (shed records): fill it from the log first
            if rid <= self.sent_id:
                return
        if record.get("kind") in EVENT_KINDS:
            self.publish(record)
        else:
            self.sent_id = rid

    def catch_up(self) -> None:
        """Send the events after the last one sent, from the log, oldest first: the newest `backlog` records at
        most (a week-long outage is not replayed whole; what is skipped stays in the log and is logged)."""
        if not hasattr(self.events, "since"):
            return  # no event log to read from: what the broker missed is in the journal only
        last = events_mod.last_id(self.database) if self.database else 0
        if last - self.sent_id > self.backlog:
            log.warning("mqtt: events %d..%d are not sent (more than backlog = %d); they stay in the event log",
                        self.sent_id + 1, last - self.backlog, self.backlog)
            self.sent_id = last - self.backlog
        budget = self.backlog
        while budget > 0 and self.live():
            batch = min(BATCH, budget)
            records = self.events.since(self.sent_id, batch)
            for record in records:
                if record.get("kind") in EVENT_KINDS:
                    if not self.publish(record):
                        return
                    budget -= 1
                else:
                    self.sent_id = max(self.sent_id, int(record["id"]))
            if len(records) < batch:
                return

    def publish(self, record: dict[str, Any]) -> bool:
        """Hand one event to paho (QoS 1); False when it could not take it."""
        info = self.send(self.topic, json.dumps(event_payload(record), default=str), qos=1, wait=True)
        if info is None:
            return False
        with self._lock:
            self._mids[info.mid] = int(record["id"])
            self.sent_id = max(self.sent_id, int(record["id"]))
        self.published += 1
        return True
