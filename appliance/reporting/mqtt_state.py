"""What the MQTT output's retained `<prefix>/state` says, kept from the records and statuses the event log hands on.

Pure bookkeeping: no client, no thread of its own. The event writer thread updates it (`on_record`, `on_status`) and
the MQTT worker reads it (`payload`), without a lock: a state read in the middle of an update is at worst one
update behind, and that update's wake sends the newer one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from appliance.vocab import Decision, Kind


class DoorState:
    """The door's state for MQTT: the decision and the door, the last decision's faces, totals of allows and
    denials (from the event log, then counted on), and the service's latest status. `changed` is set by every
    update and cleared by the publisher once it has sent the state."""

    def __init__(self, counts: Mapping[str, int] | None = None, base_id: int = 0) -> None:
        counts = counts or {}
        self.base_id = base_id  # records up to this id were counted already (the log's totals at start)
        self.counts = {Decision.ALLOW: counts.get(Decision.ALLOW, 0), Decision.DENY: counts.get(Decision.DENY, 0)}
        self.status: dict[str, Any] = {}
        self.last_decision: dict[str, Any] = {}
        self.decision: str | None = None
        self.door: str | None = None
        self.changed = True

    def on_record(self, record: Mapping[str, Any]) -> None:
        kind, detail = record.get("kind"), record.get("detail") or {}
        if kind == Kind.DECISION:
            state = record.get("state")
            if state in self.counts and int(record.get("id") or 0) > self.base_id:
                self.counts[Decision(state)] += 1
            self.last_decision = {"decision": state, **detail}
            self.decision = state
            self.door = self.last_decision.get("door") or self.door
            self.changed = True
        elif kind == Kind.FAULT and detail.get("door"):
            self.door = detail["door"]  # a lost camera puts the door in its fail state

    def on_status(self, status: Mapping[str, Any]) -> None:
        self.status = dict(status)
        # Whichever came last, a record or a status, says where the door and the decision are now.
        self.door = status.get("door") or self.door
        self.decision = status.get("decision") or self.decision
        self.changed = True

    def payload(self) -> dict[str, Any]:
        """The state JSON: `time` is now; every other key is what the door is."""
        s, d = self.status, self.last_decision
        return {
            "decision": self.decision or Decision.IDLE.value,
            "door": self.door,
            "masked": int(d.get("masked") or 0),
            "unmasked": int(d.get("unmasked") or 0) + int(d.get("incorrect") or 0),
            "allows": self.counts[Decision.ALLOW],
            "denials": self.counts[Decision.DENY],
            "fps": s.get("fps"),
            "frames": s.get("frames"),
            "camera_up": not s.get("camera_lost", False),
            "model_sha256": s.get("model_sha256"),
            "running": s.get("running", True),
            "time": round(time.time(), 3),
        }
