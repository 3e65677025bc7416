"""Motion gating: whether a frame needs the face detector, decided on a small grey copy of it (about 0.3 ms).

A door camera spends most of its day on an empty doorway. The gate keeps the image the detector last ran on (its
reference) and compares each new frame with it: where enough pixels differ, something moved (or appeared) and the
detector runs on that frame; where nothing did, the faces found on the reference are still where they were, and
they are carried forward instead of being looked for again. The detector also runs every `[detector] idle_every`
seconds whatever the gate sees, so that a face the detector missed, or someone who came in too slowly to count as
motion, is found within that time.

Comparing with the reference, not with the frame before, is what makes carrying faces forward safe: a slow walker
who changes little from frame to frame still drifts away from the reference, and the detector runs as soon as the
frame differs from the one the carried faces were found on by more than the motion threshold.

Light: the reference is scaled to the frame's mean brightness before the two are compared, so a camera's exposure
change or a light dimmed evenly is no motion at all; a light switched on (which lights a room unevenly) counts as
motion for the one frame on which it changes, and that frame becomes the new reference. Sensor noise is averaged
away by the shrinking (a 640x480 frame is 25 pixels to each of the motion image's).

    gate = MotionGate()
    if gate.look(frame.image, frame.t, cfg.detector):   # True: run the detector on this frame
        faces = detector.detect(frame.image)
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from appliance.config import DetectorConfig

SIDE = 128  # the motion image's longer side, px: 128x96 for a 4:3 frame


def motion_image(image: np.ndarray) -> np.ndarray:
    """`image` (BGR or grey) as the gate compares it: shrunk by area to at most SIDE px, grey, float32."""
    h, w = image.shape[:2]
    s = min(1.0, SIDE / max(h, w))
    small = image if s == 1.0 else cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                                              interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return small.astype(np.float32)


def changed_share(reference: np.ndarray, image: np.ndarray, threshold: float) -> float:
    """The share of the motion image's pixels that differ from the reference, scaled to the image's mean brightness,
    by more than `threshold` grey levels."""
    ref_mean = float(reference.mean())
    gain = float(image.mean()) / ref_mean if ref_mean > 1.0 else 1.0
    diff = cv2.absdiff(image, reference * gain)
    return float(np.count_nonzero(diff > threshold)) / diff.size


class MotionGate:
    """Says per frame whether the detector must run; see the module docstring. One gate per stream of frames."""

    def __init__(self) -> None:
        self._reference: np.ndarray | None = None
        self._at = -math.inf  # the frame time the detector last ran at
        self.reason = ""  # why the last frame was detected: "first", "motion", "idle"; "" when it was not
        self.share = 0.0  # the last frame's changed share (0 when it was not compared)

    def look(self, image: np.ndarray, t: float, cfg: DetectorConfig) -> bool:
        """Whether the detector must run on this frame (taken at `t` seconds on the frames' clock). When it must,
        this frame becomes the reference that later frames are compared with."""
        small = motion_image(image)
        self.share = 0.0
        if self._reference is None or self._reference.shape != small.shape:
            self.reason = "first"
        elif t - self._at >= cfg.idle_every or t < self._at:  # a clock that went back: a new video, a new stream
            self.reason = "idle"
        else:
            self.share = changed_share(self._reference, small, cfg.motion_threshold)
            self.reason = "motion" if self.share >= cfg.motion_area else ""
        if self.reason:
            self._reference, self._at = small, t
        return bool(self.reason)

    def reset(self) -> None:
        """Forget the reference: the next frame is detected (a new detector, a source reopened)."""
        self._reference, self._at, self.reason = None, -math.inf, ""
