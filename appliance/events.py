"""Decisions, faults and model swaps -> a SQLite file and the journal (the log). No face image unless asked."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger("appliance.events")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,          -- seconds since the epoch
    kind TEXT NOT NULL,          -- decision, fault, model, start, stop
    state TEXT,                  -- the decision (idle/allow/deny) for decision events
    detail TEXT NOT NULL         -- JSON
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
"""


class EventLog:
    def __init__(self, database: Path, *, echo: bool = False, faces_dir: Path | None = None):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(database)
        # One connection shared by the frame loop and the camera guard thread, serialised by a lock.
        self.db = sqlite3.connect(str(database), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")  # readers (mask-deploy status) never block the service
        self.db.executescript(SCHEMA)
        self.echo = echo
        self.faces_dir = faces_dir

    def record(self, kind: str, state: str | None = None, **detail: Any) -> None:
        now = time.time()
        text = json.dumps(detail, default=str)
        with self._lock:
            self.db.execute("INSERT INTO events (time, kind, state, detail) VALUES (?, ?, ?, ?)",
                            (now, kind, state, text))
        level = logging.WARNING if kind == "fault" else logging.INFO
        log.log(level, "%s%s %s", kind, f" {state}" if state else "", text)
        if self.echo and kind == "decision":
            print(json.dumps({"time": round(now, 3), "decision": state, **detail}, default=str), flush=True)

    def save_faces(self, frame_bgr: np.ndarray, boxes, tag: str) -> None:
        if self.faces_dir is None:
            return
        self.faces_dir.mkdir(parents=True, exist_ok=True)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            crop = frame_bgr[max(0, int(y1)):int(y2), max(0, int(x1)):int(x2)]
            if crop.size:
                cv2.imwrite(str(self.faces_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}-{i}.jpg"), crop)

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT time, kind, state, detail FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [{"time": t, "kind": k, "state": s, **json.loads(d)} for t, k, s, d in rows]

    def close(self) -> None:
        with self._lock:
            self.db.close()
