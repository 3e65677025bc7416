"""The camera guard: a thread of its own that puts the door in its fail state when frames stop coming.

It watches the time of the last frame the loop finished, so a stalled camera and a hung pipeline look the same to
it. It cannot die: anything its check raises (a locked database, a broken output, a pin that refuses) is logged
with its traceback, reported through `on_error` (the service fails the door and records a fault), and the check
runs again a quarter of a second later. While its checks fail, `healthy` is False and the service keeps the door
in its fail state: a guard that cannot check is a guard that is not there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("appliance.service")

PERIOD = 0.25  # seconds between checks: the fail state follows a stall within camera_timeout + this


class CameraGuard:
    """Calls `on_lost()` once when no frame came for `timeout()` seconds; `frame_seen()` re-arms it."""

    def __init__(self, timeout: Callable[[], float], on_lost: Callable[[], None],
                 on_error: Callable[[BaseException], None], on_recovered: Callable[[], None], stop: threading.Event):
        self.timeout, self.on_lost, self.on_error, self.on_recovered = timeout, on_lost, on_error, on_recovered
        self.stop = stop
        self.last_frame = time.monotonic()
        self.lost = False  # set here when frames stop; cleared by the loop when they are back
        self.healthy = True
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="camera-guard", daemon=True)

    def start(self) -> None:
        self.last_frame = time.monotonic()
        self._thread.start()

    def frame_seen(self) -> None:
        self.last_frame = time.monotonic()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def check(self) -> None:
        if not self.lost and time.monotonic() - self.last_frame > self.timeout():
            self.lost = True  # first, so that a failing report below cannot hide the stall
            self.on_lost()

    def _run(self) -> None:
        while not self.stop.wait(PERIOD):
            try:
                self.check()
            except BaseException as exc:  # noqa: BLE001 - the guard must outlive anything its check raises
                self.errors += 1
                if self.healthy:  # once per failing spell: the door stays failed (healthy is False) until it ends
                    self.healthy = False
                    log.exception("camera guard: check failed (the door goes to its fail state)")
                    self._report(exc)
                continue
            if not self.healthy:
                self.healthy = True
                self._safe(self.on_recovered)

    def _report(self, exc: BaseException) -> None:
        try:
            self.on_error(exc)
        except BaseException:  # noqa: BLE001
            log.exception("camera guard: reporting its own failure failed too")

    @staticmethod
    def _safe(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException:  # noqa: BLE001
            log.exception("camera guard: callback failed")
