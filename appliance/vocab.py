"""The appliance's words, in one place: decisions, door states, modes, face labels, event kinds and what a fault or
a recovery was. Each is a `StrEnum`, so its members are the very strings that go into the event log, `status.json`,
MQTT and the config file, and compare equal to them; `deploy/` reads the Pi's log and status with the same names."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypedDict


class Decision(StrEnum):
    """What the policy says about the scene in front of the door."""

    IDLE = "idle"  # nobody settled in view: the door keeps its resting state
    ALLOW = "allow"  # a masked visitor settled at adequate size
    DENY = "deny"  # an unmasked (or, by default, incorrectly masked) visitor


class Door(StrEnum):
    """Where the relay leaves the door."""

    LOCKED = "locked"
    RELEASED = "released"


class Mode(StrEnum):
    """`[policy] mode`: which decision moves the relay."""

    LOCK_ON_UNMASKED = "lock-on-unmasked"
    UNLOCK_ON_MASKED = "unlock-on-masked"


class Label(StrEnum):
    """A face's class, as the model names it."""

    WITH_MASK = "with_mask"
    WITHOUT_MASK = "without_mask"
    INCORRECT_MASK = "incorrect_mask"


class Kind(StrEnum):
    """The `kind` column of the event log."""

    START = "start"
    STOP = "stop"
    DECISION = "decision"
    FAULT = "fault"  # something is wrong; `what` says which (Fault)
    RECOVERY = "recovery"  # a fault is over; `what` says which (Recovery)
    MODEL = "model"  # a new classifier model is in use
    CONFIG = "config"  # the config file was reloaded


class Fault(StrEnum):
    """The `what` of a fault event."""

    NO_FRAMES = "no frames"
    GUARD_FAILED = "camera guard failed"
    MODEL_REFUSED = "model refused"
    MODEL_REFUSED_AT_START = "model refused at start"
    RELOAD_REFUSED = "reload refused"
    CRASH = "crash"
    MQTT = "mqtt"
    FORCED_PUSH = "forced push"


class Recovery(StrEnum):
    """The `what` of a recovery event."""

    FRAMES_BACK = "frames back"
    GUARD_BACK = "camera guard back"


class Status(TypedDict, total=False):
    """status.json (and /status.json, and MQTT's state): what the service says about itself every status_interval.
    `mask-deploy status` reads the same keys on the Pi."""

    pid: int
    started: float
    uptime: float
    frames: int
    skipped: int
    fps: float
    decision: Decision
    door: Door
    model: str
    model_sha256: str
    model_fallback: str | None
    camera_lost: bool
    running: bool
    status_interval: float
    collect: dict[str, Any]
    events: dict[str, Any]  # the event log's health, added by its writer
