"""Frame sources paced in real time, as a camera delivers frames: for tests whose service runs while something
else (an ssh push, an MQTT broker, an HTTP client) acts on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from appliance.seeing.sources import Frame, ImageSource


class PacedImageSource(ImageSource):
    """An ImageSource at a real 5 frames a second (ImageSource reads as fast as it can): the tests' services leave
    the CPU to the rest. Decisions run on the source's simulated clock, so they are the same."""

    def frames(self) -> Iterator[Frame]:
        for frame in super().frames():
            yield frame
            time.sleep(0.2)


class PacedScenes:
    """Scene photos as visits at `fps` in real time (as a camera would), then quiet until stopped."""

    def __init__(self, files: list[Path], still_frames: int, fps: float):
        self.inner = ImageSource(files, still_frames=still_frames)
        self.clock, self.skipped, self.period = self.inner.clock, 0, 1.0 / fps
        self.done = threading.Event()
        self._stopped = threading.Event()

    def frames(self) -> Iterator[Frame]:
        for frame in self.inner.frames():
            if self._stopped.wait(self.period):
                return
            yield frame
        self.done.set()
        self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()
        self.inner.stop()

    def close(self) -> None:
        pass
