"""Decisions, faults and model swaps -> a SQLite file, the journal and every subscribed output, off the frame loop.

The event log is the record of truth and the hub of the service's outputs. The frame loop only puts records on a
bounded queue; one writer thread of its own stores each in SQLite, then hands it to every subscribed output (MQTT,
metrics, the status page), writes status.json and saves face crops when asked. A full disk, a read-only folder or
another process holding the database's write lock therefore costs the door nothing: the writer keeps the records
in order, counts and logs the failure once per kind, and retries until storage is back. What was written stays
written. No face image is ever stored unless asked.

Longer than this project's 200-line guide on purpose: the writer thread, its ordering and retries, and the read-only
queries all guard one SQLite file, and are safest read together.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from appliance.vocab import Kind, Status

log = logging.getLogger("appliance.reporting.events")

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
QUEUE_SIZE = 10_000  # records waiting for storage: decisions come on changes only, so this is hours of outage
BUSY_TIMEOUT = 2.0  # seconds SQLite waits for another process's write lock before the writer retries later
RETRY_FIRST, RETRY_LONGEST = 0.5, 10.0  # seconds between attempts while storage fails
DRAIN_ON_CLOSE = 5.0  # seconds close() waits for storage to take what is queued (the unit's stop timeout is 15)


class StorageError(OSError):
    """The state folder or the database cannot be used at start; the message names the folder or file."""


class Output(Protocol):
    """Something that follows the service: MQTT, metrics, the status page. Called from the writer thread only,
    so each call must be quick and must never wait on the network."""

    def on_record(self, record: dict[str, Any]) -> None: ...

    def on_status(self, status: dict[str, Any]) -> None: ...

    def on_frame(self, frame: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Faces:
    """Face crops to save with a decision (only with [events] save_faces)."""

    crops: list[np.ndarray]
    tag: str
    time: float


def _row(row: tuple) -> dict[str, Any]:
    rid, t, kind, state, detail = row
    return {"id": rid, "time": t, "kind": kind, "state": state, "detail": json.loads(detail)}


def _query(database: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """The rows of one read-only query of an event log; none where the log cannot be read yet (no file, no table)."""
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as db:
            return db.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []


def last_id(database: Path) -> int:
    """The id of the newest event in the log at `database` (0 for none)."""
    rows = _query(database, "SELECT COALESCE(MAX(id), 0) FROM events")
    return int(rows[0][0]) if rows else 0


def decision_counts(database: Path, since: float | None = None) -> dict[str, int]:
    """How many decisions of each kind (idle/allow/deny) the log holds, all of them or those from `since` on."""
    sql = "SELECT state, COUNT(*) FROM events WHERE kind = 'decision'"
    rows = _query(database, f"{sql} GROUP BY state") if since is None else \
        _query(database, f"{sql} AND time >= ? GROUP BY state", (since,))
    return {str(state): int(n) for state, n in rows}


def recent_decisions(database: Path, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` decisions, oldest first, as the records outputs receive."""
    rows = _query(database, "SELECT id, time, kind, state, detail FROM events WHERE kind = 'decision' "
                            "ORDER BY id DESC LIMIT ?", (limit,))
    return [_row(r) for r in reversed(rows)]


class EventLog:
    """The SQLite event log (WAL, so readers such as `mask-deploy status` never block it), its writer thread and
    the outputs subscribed to it.

    >>> events = EventLog(Path("/var/lib/mask-appliance/events.db"))
    >>> events.record("decision", "deny", unmasked=1)   # returns at once; stored by the writer
    >>> events.close()                                   # waits (bounded) for what is queued
    """

    def __init__(self, database: Path, *, echo: bool = False, faces_dir: Path | None = None,
                 status_path: Path | None = None, queue_size: int = QUEUE_SIZE):
        self.path = Path(database)
        self.status_path = status_path
        self.echo = echo
        self.faces_dir = faces_dir
        self.db = self._open()
        self.outputs: list[Output] = []
        self.written = 0
        self.dropped = 0
        self.failures: Counter[str] = Counter()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(queue_size)
        self._status: dict[str, Any] | None = None  # only the newest status matters
        self._status_lock = threading.Lock()
        self._failing: set[str] = set()  # kinds of failure logged and not yet recovered
        self._closing = threading.Event()
        self._deadline = float("inf")  # set by close(): how long storage may still be retried
        self._writer = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._writer.start()

    def _open(self) -> sqlite3.Connection:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError("not writable")
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                 timeout=BUSY_TIMEOUT)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{folder}: the state folder cannot hold the event log {self.path.name} ({exc})") \
                from None
        return db

    # -- what the service calls (never blocks) ------------------------------------------------------------------
    def record(self, kind: str, state: str | None = None, **detail: Any) -> None:
        """Queue one event; the journal gets it at once, SQLite and the outputs from the writer thread."""
        now = time.time()
        level = logging.WARNING if kind == Kind.FAULT else logging.INFO
        log.log(level, "%s%s %s", kind, f" {state}" if state else "", json.dumps(detail, default=str))
        if self.echo and kind == Kind.DECISION:
            self._echo({"time": round(now, 3), "decision": state, **detail})
        self._put("event", (now, kind, state, detail))

    def _echo(self, line: dict[str, Any]) -> None:
        # `run --print | head -1`: a reader that went away stops the printing, never the door.
        try:
            print(json.dumps(line, default=str), flush=True)
        except BrokenPipeError:
            from appliance.cliparse import silence_stdout

            self.echo = False
            silence_stdout()
            log.warning("stdout was closed: decisions are no longer printed (the event log keeps them)")

    def status(self, status: Status) -> None:
        """The service's current status, for status.json and the outputs; a newer one replaces one not yet written."""
        with self._status_lock:
            self._status = dict(status)
        self._put("status", None, essential=False)

    def frame(self, frame: dict[str, Any]) -> None:
        """One frame's stage times and face counts, for the outputs (statistics: dropped first when behind)."""
        if self.outputs:
            self._put("frame", frame, essential=False)

    def save_faces(self, frame_bgr: np.ndarray, boxes, tag: str) -> None:
        """Queue the face crops of a decision for saving (only when [events] save_faces is on)."""
        if self.faces_dir is None:
            return
        crops = [frame_bgr[max(0, int(y1)):int(y2), max(0, int(x1)):int(x2)].copy() for x1, y1, x2, y2 in boxes]
        self._put("faces", _Faces([c for c in crops if c.size], tag, time.time()))

    def defer(self, kind: str, write: Callable[[], None]) -> None:
        """Run `write` once on the writer thread, in order with the records (for example, saving a collected face
        crop). A failure is counted and logged once under `kind`, and not retried: extras never hold up the log.
        Dropped, like statistics, when the queue is full."""
        self._put("deferred", (kind, write), essential=False)

    def subscribe(self, output: Output) -> None:
        self.outputs.append(output)

    def health(self) -> dict[str, Any]:
        """Counts for status.json and metrics: written, waiting, dropped, and failures by kind."""
        return {"written": self.written, "pending": self._queue.qsize(), "dropped": self.dropped,
                "failures": dict(self.failures), "failing": sorted(self._failing)}

    def _put(self, what: str, item: Any, essential: bool = True) -> None:
        try:
            self._queue.put_nowait((what, item))
        except queue.Full:
            if essential:
                self.dropped += 1
                self._fail("queue full", f"{self._queue.maxsize} records wait for storage; dropping new ones")

    # -- reading ------------------------------------------------------------------------------------------------
    def since(self, after_id: int, limit: int = 100) -> list[dict[str, Any]]:
        """Stored events with an id above `after_id`, oldest first, through a read-only connection of its own."""
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as db:
            rows = db.execute("SELECT id, time, kind, state, detail FROM events WHERE id > ? ORDER BY id LIMIT ?",
                              (after_id, limit)).fetchall()
        return [_row(r) for r in rows]

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as db:
            rows = db.execute("SELECT time, kind, state, detail FROM events ORDER BY id DESC LIMIT ?", (limit,))
            return [{"time": t, "kind": k, "state": s, **json.loads(d)} for t, k, s, d in rows]

    # -- the writer thread --------------------------------------------------------------------------------------
    def _fail(self, kind: str, message: str) -> None:
        self.failures[kind] += 1
        if kind not in self._failing:  # once per kind until it recovers: a long outage is not a flood
            self._failing.add(kind)
            log.error("event log: %s: %s", kind, message)

    def _recovered(self, kind: str) -> None:
        if kind in self._failing:
            self._failing.discard(kind)
            log.warning("event log: %s recovered after %d failures", kind, self.failures[kind])

    def _retry(self, step, kind: str, what: str) -> bool:
        """Run `step` until it succeeds, waiting longer each time; False if closing ran out of time first."""
        wait = RETRY_FIRST
        while True:
            try:
                step()
                self._recovered(kind)
                return True
            except (OSError, sqlite3.Error) as exc:
                self._fail(kind, f"{what}: {exc} (retrying)")
            if self._closing.is_set() and time.monotonic() > self._deadline:
                return False
            time.sleep(wait)
            wait = min(RETRY_LONGEST, wait * 2)

    def _run(self) -> None:
        while True:
            try:
                what, item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            try:
                self._handle(what, item)
            except Exception:  # the writer must outlive any single bad record or output
                log.exception("event log: %s not handled", what)

    def _handle(self, what: str, item: Any) -> None:
        if what == "event":
            t, kind, state, detail = item
            text = json.dumps(detail, default=str)
            ids: list[int] = []

            def insert() -> None:
                cur = self.db.execute("INSERT INTO events (time, kind, state, detail) VALUES (?, ?, ?, ?)",
                                      (t, kind, state, text))
                ids.append(int(cur.lastrowid or 0))

            if self._retry(insert, "database", f"{self.path}"):
                self.written += 1
                self._dispatch("on_record", {"id": ids[0], "time": t, "kind": kind, "state": state,
                                             "detail": json.loads(text)})
        elif what == "status":
            with self._status_lock:
                status, self._status = self._status, None
            if status is None:
                return  # a newer one was written already
            status = {**status, "events": self.health()}
            if self.status_path is not None:
                self._retry(lambda: self._write_status(status), "status file", f"{self.status_path}")
            self._dispatch("on_status", status)
        elif what == "frame":
            self._dispatch("on_frame", item)
        elif what == "faces":
            self._retry(lambda: self._write_faces(item), "faces folder", f"{self.faces_dir}")
        elif what == "deferred":
            kind, write = item
            try:
                write()
                self._recovered(kind)
            except (OSError, ValueError) as exc:
                self._fail(kind, str(exc))
        elif what == "mark":
            item.set()

    def _write_status(self, status: dict[str, Any]) -> None:
        assert self.status_path is not None
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.status_path)

    def _write_faces(self, faces: _Faces) -> None:
        assert self.faces_dir is not None
        self.faces_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(faces.time))
        for i, crop in enumerate(faces.crops):
            path = self.faces_dir / f"{stamp}-{faces.tag}-{i}.jpg"
            if not cv2.imwrite(str(path), crop):
                raise OSError(f"{path}: could not be written")

    def _dispatch(self, method: str, payload: dict[str, Any]) -> None:
        for output in self.outputs:
            try:
                getattr(output, method)(payload)
            except Exception as exc:  # one broken output must not stop the log or the others
                self._fail(f"output {type(output).__name__}", f"{method}: {exc!r}")

    def flush(self, timeout: float = DRAIN_ON_CLOSE) -> bool:
        """Wait until everything queued so far is handled; False if that took longer than `timeout`."""
        reached = threading.Event()
        try:
            self._queue.put(("mark", reached), timeout=timeout)
        except queue.Full:
            return False
        return reached.wait(timeout)

    def close(self) -> None:
        """Stop taking records, give storage up to DRAIN_ON_CLOSE seconds for what is queued, close everything.
        Anything storage still refused by then is in the journal (every record is logged when it is made)."""
        self._deadline = time.monotonic() + DRAIN_ON_CLOSE
        self._closing.set()
        self._writer.join(DRAIN_ON_CLOSE + 1.0)
        left = self._queue.qsize()
        if left:
            log.error("event log: %d records not stored in %s (they are in the journal)", left, self.path)
        for output in self.outputs:
            try:
                output.close()
            except Exception as exc:
                log.warning("event log: closing %s: %r", type(output).__name__, exc)
        with suppress(sqlite3.Error):
            self.db.close()
