"""The one way to the relay: the frame loop's decisions and the camera guard's faults meet here, under one lock.

The door follows the policy's decision while frames come and the guard is able to watch; it is in its fail state
while the camera is lost (no frame for `[service] camera_timeout` seconds) or while the guard's own check fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from appliance.config import GpioConfig
from appliance.deciding.actuators import DoorController
from appliance.deciding.guard import CameraGuard
from appliance.reporting.events import EventLog
from appliance.vocab import Decision, Door, Fault, Kind, Recovery


class DoorKeeper:
    """Owns the door controller, the camera guard and the lock they share; `changed()` is told after a fault."""

    def __init__(self, door: DoorController, events: EventLog, timeout: Callable[[], float],
                 stopped: threading.Event, changed: Callable[[], None]):
        self.door, self.events, self._timeout, self._changed = door, events, timeout, changed
        self._lock = threading.Lock()
        self._t: float | None = None  # the newest frame's time (the source's clock): cool-downs run on it
        self._decision = Decision.IDLE
        self.guard = CameraGuard(timeout, self._lost, self._failed, self._back, stopped)

    @property
    def state(self) -> Door:
        return self.door.state

    @property
    def camera_lost(self) -> bool:
        return self.guard.lost

    def start(self) -> None:
        self.guard.start()

    def frame(self, decision: str, t: float) -> None:
        """A frame was judged: frames are back if they were lost, and the door follows the decision."""
        self.guard.frame_seen()
        with self._lock:
            if self.guard.lost:
                self.guard.lost = False
                self.events.record(Kind.RECOVERY, None, what=Recovery.FRAMES_BACK)
                self.door.fail()
            self._t, self._decision = t, Decision(decision)
            self._drive()

    def rewire(self, gpio: GpioConfig, mode: str) -> None:
        """New pins or a new mode from a reload; the door's state and the buzzer's cool-down carry over. Where the
        new pins cannot be claimed the old wiring is restored and the error raised (the reload is refused)."""
        with self._lock:
            if not self.door.reconfigure(gpio, mode):
                old = self.door
                old.close()  # new pins: the old devices must let go of theirs first
                try:
                    self.door = DoorController(gpio, mode)
                except Exception:
                    self.door = DoorController(old.cfg, old.mode)
                    self.door.carry_from(old)
                    raise
                self.door.carry_from(old)
            self._drive()

    def close(self) -> None:
        """Stop: the door to its fail state and the pins let go."""
        with self._lock:
            self.door.close()

    def _drive(self) -> None:
        # Under the lock: the decision's door, or the fail state while the camera is lost or unguarded.
        if self.guard.lost or not self.guard.healthy:
            self.door.fail()
        else:
            self.door.apply(self._decision, self._t)

    def _lost(self) -> None:
        with self._lock:
            self.door.fail()
        self.events.record(Kind.FAULT, None, what=Fault.NO_FRAMES, seconds=self._timeout(), door=self.state)
        self._changed()

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.door.fail()
        self.events.record(Kind.FAULT, None, what=Fault.GUARD_FAILED, reason=repr(exc), door=self.state)
        self._changed()

    def _back(self) -> None:
        self.events.record(Kind.RECOVERY, None, what=Recovery.GUARD_BACK)  # the next frame drives the door again
