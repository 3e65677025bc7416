"""The service under test: one built from a few config sections, its event log read back, its mock pins checked."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from gpiozero import Device

from appliance import config
from appliance.service import Service

# The default BCM pins of [gpio].
RELAY, BUZZER, GREEN, RED = 17, 27, 22, 23


def make_service(model_dir: Path, tmp_path: Path, **sections: dict) -> Service:
    """A Service on the model in `model_dir`, logging to tmp_path/events.db, polling its model every 0.2 s; each
    keyword is a config section whose values are added."""
    table = {"classifier": {"model": str(model_dir / "mask_classifier.tflite")},
             "events": {"database": str(tmp_path / "events.db")},
             "service": {"model_poll": 0.2}}
    for name, values in sections.items():
        table.setdefault(name, {}).update(values)
    return Service(config.parse(table))


def events(tmp_path: Path, kind: str | None = None) -> list[dict]:
    """The events in tmp_path/events.db, oldest first (only those of `kind` if given): kind, state and details."""
    db = sqlite3.connect(tmp_path / "events.db")
    rows = db.execute("SELECT kind, state, detail FROM events ORDER BY id").fetchall()
    db.close()
    return [{"kind": k, "state": s, **json.loads(d)} for k, s, d in rows if kind is None or k == kind]


def states(pin: int, expected: list[bool], exact: bool = True) -> None:
    """gpiozero's MockPin.assert_states on `pin`; `exact`: and no more states than those (assert_states compares
    only as many as both lists have, so a shorter expectation would always pass)."""
    mock = Device.pin_factory.pin(pin)
    mock.assert_states(expected)
    if exact:
        assert len(mock.states) == len(expected), [s for _, s in mock.states]


def run_in_background(service: Service, source: object) -> threading.Thread:
    """service.run(source) on a thread of its own, started."""
    thread = threading.Thread(target=service.run, args=(source,))
    thread.start()
    return thread
