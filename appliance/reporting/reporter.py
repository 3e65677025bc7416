"""What the service tells the world about itself: fps, status.json (through the event log), systemd's STATUS= and
its watchdog, and the per-frame statistics for /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

from appliance.reporting.notify import Notifier
from appliance.vocab import Status


class Reporter:
    """Called by the frame loop once per cycle (a frame, or a quarter-second wait for one).

    `cycle()` pets systemd's watchdog, so the pets stop when the loop hangs and only then: a loop that is alive and
    waiting for a lost camera keeps petting. Every `interval()` seconds it also computes fps, sends STATUS= and
    hands `status()` to `publish` (EventLog.status: status.json and the outputs, off the loop).
    """

    def __init__(self, notifier: Notifier, status: Callable[[], Status], line: Callable[[], str],
                 publish: Callable[[Status], None], interval: Callable[[], float]):
        self.notifier, self.status, self.line, self.publish, self.interval = notifier, status, line, publish, interval
        self.fps = 0.0
        self._window_start, self._window_frames = time.monotonic(), 0
        self._next = 0.0

    def frame_done(self) -> None:
        self._window_frames += 1

    def cycle(self) -> bool:
        """Pet the watchdog; True when a status update was due (and was sent)."""
        self.notifier.pet()
        now = time.monotonic()
        if now < self._next:
            return False
        self.fps = self._window_frames / max(1e-6, now - self._window_start)
        self._window_start, self._window_frames = now, 0
        self._next = now + self.interval()
        self.notifier.status(self.line())
        self.send()
        return True

    def send(self) -> None:
        """The status now, out of turn (a swap, a lost camera, the stop)."""
        self.publish(self.status())
