"""The MQTT output's topics and its Home Assistant discovery payloads: pure data, no client, no network.

Discovery uses one retained `<discovery_prefix>/<component>/<node_id>/<object_id>/config` per entity, the form every
Home Assistant version reads; each entity reads its value from the door's retained `state` JSON (mqtt_state.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from appliance.vocab import Decision, Door

AVAILABLE, NOT_AVAILABLE = "online", "offline"  # the payloads of `<prefix>/availability` (and the last will)


@dataclass(frozen=True)
class Topics:
    """The door's own topics, all under one prefix (`[mqtt] topic_prefix`, or `mask-appliance/<hostname>`)."""

    prefix: str

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def event(self) -> str:
        return f"{self.prefix}/event"


def slug(text: str) -> str:
    """`text` as a Home Assistant node id: letters, digits, `_` and `-` only."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text).strip("_") or "appliance"


# (component, object id, what the entity adds to the common fields); the templates read the state JSON's keys.
ENTITIES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("binary_sensor", "unmasked", {"name": "Unmasked person", "icon": "mdi:face-mask-outline",
                                   "value_template": f"{{{{ 'ON' if value_json.decision == '{Decision.DENY}' "
                                                     "else 'OFF' }}"}),
    ("sensor", "decision", {"name": "Decision", "device_class": "enum", "options": [str(d) for d in Decision],
                            "value_template": "{{ value_json.decision }}"}),
    ("sensor", "door", {"name": "Door", "device_class": "enum", "options": [str(d) for d in Door],
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
    ("binary_sensor", "camera", {"name": "Camera", "device_class": "connectivity", "entity_category": "diagnostic",
                                 "value_template": "{{ 'ON' if value_json.camera_up else 'OFF' }}"}),
)


def discovery(discovery_prefix: str, node_id: str, topics: Topics, version: str,
              model_sha256: str | None) -> dict[str, dict[str, Any]]:
    """Topic -> retained Home Assistant discovery config, one per entity of ENTITIES, all on one device that names
    the appliance's version and the model it runs."""
    sha = str(model_sha256 or "")[:12]
    device = {"identifiers": [node_id], "name": f"Mask door {node_id}", "manufacturer": "mask-appliance",
              "model": "Face-mask door appliance", "sw_version": f"{version} (model {sha or 'unknown'})"}
    origin = {"name": "mask-appliance", "sw": version}
    return {
        f"{discovery_prefix}/{component}/{node_id}/{key}/config": {
            **extra,
            "unique_id": f"{node_id}_{key}",
            "default_entity_id": f"{component}.{node_id}_{key}",
            "state_topic": topics.state,
            "availability_topic": topics.availability,
            "payload_available": AVAILABLE,
            "payload_not_available": NOT_AVAILABLE,
            "device": device,
            "origin": origin,
        }
        for component, key, extra in ENTITIES
    }
