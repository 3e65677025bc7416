"""The source's frames on a thread of their own, so that the frame loop waits for them with a timeout: a camera
that stalls or a read that hangs in a driver or the network leaves the loop alive (it keeps the door in its fail
state, the status true and systemd's watchdog fed), and a stop never waits on the read."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from appliance.seeing.sources import FrameSource

WAIT = 0.25  # the loop's longest wait for a frame: while it is alive it pets the watchdog at least this often
STOP_WAIT = 2.0  # seconds a stop waits for a blocked source read before it goes on without it (unit: 15 s)

log = logging.getLogger("appliance.service")


class FrameReader:
    """The source's frames, pulled on a thread of their own one at a time when the loop asks (so a source is read
    exactly as far as the loop has gone), handed over through a queue the loop waits on with a timeout."""

    def __init__(self, source: FrameSource):
        self.source = source
        self._want = threading.Semaphore(0)
        self._out: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def ask(self) -> None:
        self._want.release()

    def get(self, timeout: float) -> tuple[str, Any] | None:
        """("frame", Frame), ("end", None), ("error", exception), or None when nothing came within `timeout`."""
        try:
            return self._out.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self, wait: float) -> bool:
        """Ask the thread to end; True if it did within `wait` seconds (False: a read is still blocked)."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(wait)
        return not self.thread.is_alive()

    def _run(self) -> None:
        try:
            frames = iter(self.source.frames())
            while True:
                while not self._want.acquire(timeout=WAIT):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                try:
                    frame = next(frames)
                except StopIteration:
                    self._out.put(("end", None))
                    return
                self._out.put(("frame", frame))
        except Exception as exc:  # handed to the loop, which fails the door and reports it
            self._out.put(("error", exc))


def stop_reading(source: FrameSource | None, reader: FrameReader | None, wait: float = STOP_WAIT) -> bool:
    """Stop the source and its reader; True when the read ended within `wait` seconds. A read hung in a driver or
    the network is left behind (the thread is a daemon): a stop never waits on it longer."""
    if source is not None:
        try:
            source.stop()
        except Exception:
            log.exception("stopping the source failed")
    done = reader.stop(wait) if reader is not None else True
    if not done:
        log.error("the source's read is still blocked after %.0f s; stopping without it", wait)
    return done


def close_source(source: FrameSource | None) -> None:
    """Close the source (after stop_reading said its read ended); a failure is logged, never raised."""
    if source is not None:
        try:
            source.close()
        except Exception:
            log.exception("closing the source failed")
