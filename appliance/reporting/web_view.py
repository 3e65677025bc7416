"""What the status page shows, kept from the records, statuses and frames the event log hands on.

No server and no thread of its own: the event writer thread updates it under a lock (quick, never waiting on a
client), the server's handler threads read copies. `StatusView` follows the door (today's counts, the last
decisions, camera, model); `Snapshot` keeps the latest frame for /snapshot.jpg, faces pixelated unless allowed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.reporting import events as events_mod
from appliance.reporting.metrics import is_recovery
from appliance.vocab import Decision, Fault, Kind, Recovery

RECENT = 12  # decisions shown on the page
SNAPSHOT_EVERY = 1.0  # seconds between frames kept for /snapshot.jpg


def decision_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the page's table of last decisions."""
    detail = record.get("detail") or {}
    return {"id": record.get("id"), "time": record.get("time"), "decision": record.get("state"),
            "door": detail.get("door"), "masked": detail.get("masked"),
            "unmasked": (detail.get("unmasked") or 0) + (detail.get("incorrect") or 0)}


class StatusView:
    """The page's model: the door, the decision, whether frames come, today's counts and the last decisions, and
    the service's latest status. `prime` reads today's counts and the last decisions from the log at start, so a
    restart does not blank the page."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._day = date.today()
        self._today = dict.fromkeys(Decision, 0)
        self._door: str | None = None
        self._decision: str | None = None
        self._camera_up = True

    def prime(self, database: Path) -> None:
        midnight = datetime.combine(date.today(), datetime.min.time()).timestamp()
        with self._lock:
            for state, n in events_mod.decision_counts(database, since=midnight).items():
                if state in self._today:
                    self._today[Decision(state)] = n
            for record in events_mod.recent_decisions(database, RECENT):  # none yet: an empty page is right
                self._recent.append(decision_row(record))

    def on_record(self, record: Mapping[str, Any]) -> None:
        kind, detail = record.get("kind"), record.get("detail") or {}
        what = detail.get("what")
        with self._lock:
            self._roll_day()
            if kind == Kind.DECISION:
                self._decision = record.get("state")
                if self._decision in self._today:
                    self._today[Decision(self._decision)] += 1
                if detail.get("door"):
                    self._door = detail["door"]
                self._recent.append(decision_row(record))
            elif kind == Kind.FAULT and what == Fault.NO_FRAMES:
                self._camera_up = False
                self._door = detail.get("door") or self._door
            elif is_recovery(record) and what == Recovery.FRAMES_BACK:  # an older log's "fault" form too
                self._camera_up = True

    def on_status(self, status: Mapping[str, Any]) -> None:
        with self._lock:
            self._status = dict(status)
            self._door = status.get("door") or self._door
            self._decision = status.get("decision") or self._decision
            if "camera_lost" in status:
                self._camera_up = not status["camera_lost"]

    def _roll_day(self) -> None:
        if date.today() != self._day:
            self._day = date.today()
            self._today = dict.fromkeys(self._today, 0)

    def status_json(self) -> dict[str, Any] | None:
        """What status.json holds, or None before the service's first status."""
        with self._lock:
            return None if self._status is None else dict(self._status)

    def view(self) -> dict[str, Any]:
        """/view.json: everything the page shows, in one poll (the release too, at the page's foot)."""
        with self._lock:
            self._roll_day()
            s = self._status or {}
            return {
                "door": self._door, "decision": self._decision, "camera_up": self._camera_up,
                "fps": s.get("fps"), "frames": s.get("frames"), "uptime": s.get("uptime"),
                "model": Path(str(s.get("model") or "")).name or None, "model_sha256": s.get("model_sha256"),
                "running": s.get("running"), "today": dict(self._today), "recent": list(reversed(self._recent)),
                "time": time.time(), "version": __version__,
            }


class Snapshot:
    """The latest frame (one a second at most) for /snapshot.jpg. Only a reference is kept on the writer thread;
    the pixelating and encoding happen on the client's thread, when asked."""

    def __init__(self, blur_faces: bool = True) -> None:
        self.blur_faces = blur_faces
        self._frame: dict[str, Any] | None = None
        self._at = 0.0

    @property
    def ready(self) -> bool:
        return self._frame is not None

    def on_frame(self, frame: Mapping[str, Any]) -> None:
        if frame.get("image") is None:
            return
        now = time.monotonic()
        if now - self._at >= SNAPSHOT_EVERY:
            self._at = now
            self._frame = {"image": frame["image"], "boxes": list(frame.get("boxes") or [])}

    def jpeg(self) -> bytes | None:
        frame = self._frame
        if frame is None:
            return None
        import cv2  # the appliance has OpenCV anyway; only this endpoint needs it here

        image = frame["image"].copy()
        if self.blur_faces:
            for box in frame["boxes"]:
                x1, y1, x2, y2 = (max(0, int(v)) for v in box[:4])
                face = image[y1:y2, x1:x2]
                if face.size:  # pixelate: nothing of the face survives, unlike a light Gaussian
                    small = cv2.resize(face, (6, 6), interpolation=cv2.INTER_AREA)
                    image[y1:y2, x1:x2] = cv2.resize(small, (face.shape[1], face.shape[0]),
                                                     interpolation=cv2.INTER_NEAREST)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
        return jpeg.tobytes() if ok else None
