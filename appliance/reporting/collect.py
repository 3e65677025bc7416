"""Opt-in collection of hard examples at the door: the faces the model was unsure of, for a person to label.

Off by default. When on, a face whose p(without_mask) falls inside `band`, or whose track's votes disagreed (the
model changed its mind on one person), is kept as the small RGB crop the classifier saw (a JPEG, never the frame)
plus one JSON line in `index.jsonl`. The frame loop only decides (band, one crop per track, an hourly cap); the
write runs on the event log's writer thread (`EventLog.defer`), so a slow or full disk costs the door nothing: a
write that fails for lack of space pauses collection for an hour, and the door goes on.

The folder (`collect/` beside the event database) is the service user's and its group's (the deploy user, who
pulls the crops with `mask-deploy pull`): mode 0770 inside a state folder that is itself 0750, files 0640. Crops are
deleted oldest first beyond `max_files` and after `max_age_days`, also while collection is off.

Longer than this project's 200-line guide: the caps, the pruning by age and count and the disk-full pause are one
policy over one folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from appliance.config import CollectConfig  # noqa: F401  (declared with the other sections)

log = logging.getLogger(__name__)

INDEX = "index.jsonl"
FOLDER_MODE = 0o770  # the service user and its group (the deploy user pulls); the state folder keeps others out
FILE_MODE = 0o640
JPEG_QUALITY = 92
FULL_PAUSE = 3600.0  # seconds collection rests after a full disk before it tries again
PRUNE_EVERY = 3600.0  # seconds between age checks while nothing new is written
NAME = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9]{3}-[0-9a-f]{6}\.jpg")  # what a crop is called; nothing else is touched
# The JSON line keeps these, when the caller gives them, and nothing else.
FIELDS = ("time", "p_without_mask", "p_incorrect_mask", "label", "decision", "model_sha256", "face_size",
          "track_id", "disagreed")


class Deferrer(Protocol):
    """Where a slow write goes to run off the frame loop (EventLog.defer)."""

    def defer(self, kind: str, write: Callable[[], None]) -> None: ...


class Collector:
    """Decides on the frame loop, writes on the event writer thread.

    >>> collector = Collector(cfg.collect, state_dir / "collect", events)
    >>> collector.offer(crop_rgb, {"time": t, "p_without_mask": 0.4, "label": "with_mask", "track_id": 3, ...})
    """

    def __init__(self, cfg: CollectConfig, folder: Path, events: Deferrer, *, clock: Callable[[], float] = time.time):
        self.cfg, self.folder, self.events, self.clock = cfg, Path(folder), events, clock
        self.collected = 0  # written (writer thread)
        self.skipped_band = 0  # sure faces from tracks that agreed
        self.skipped_rate = 0  # over max_per_hour
        self.skipped_repeat = 0  # a track already gave one crop
        self.failed = 0  # writes that failed (writer thread)
        self.pruned = 0  # crops deleted for max_files or max_age_days (writer thread)
        self._recent: deque[float] = deque()  # times (the caller's clock) of crops accepted in the last hour
        self._tracks: deque[Any] = deque(maxlen=256)  # tracks that gave a crop, newest last
        self._paused_until = 0.0  # monotonic; set by the writer after a full disk
        self._lock = threading.Lock()  # offer() may come from the loop while the writer flags a full disk
        self._next_prune = 0.0
        self.maintain()

    # -- the frame loop -----------------------------------------------------------------------------------------
    def offer(self, crop_rgb: np.ndarray, info: dict[str, Any], t: float | None = None) -> bool:
        """Keep this face if it is one worth labelling and the caps allow; True if its write was queued.
        `crop_rgb`: the classifier's input (S x S x 3, RGB, uint8). `info`: time (seconds since the epoch: the
        record's and the file name's), p_without_mask, label, decision, model_sha256, face_size, track_id, and
        disagreed (true when the track's votes disagreed). `t`: the frames' clock (Frame.t) for the hourly cap, so
        that a replayed or simulated door is capped per hour of its own time; default: info's time."""
        if not self.cfg.enabled:
            return False
        lo, hi = self.cfg.band
        p = float(info["p_without_mask"])
        if not (lo <= p <= hi or info.get("disagreed")):
            self.skipped_band += 1
            return False
        track = info.get("track_id")
        if track is not None and track in self._tracks:
            self.skipped_repeat += 1
            return False
        with self._lock:
            if time.monotonic() < self._paused_until:
                return False
        stamp = float(info.get("time", self.clock()))
        t = stamp if t is None else float(t)
        while self._recent and self._recent[0] <= t - 3600.0:
            self._recent.popleft()
        if len(self._recent) >= self.cfg.max_per_hour:
            self.skipped_rate += 1
            return False
        self._recent.append(t)
        if track is not None:
            self._tracks.append(track)
        crop = np.ascontiguousarray(crop_rgb, dtype=np.uint8).copy()  # the caller's buffer is reused next frame
        line = {k: info[k] for k in FIELDS if k in info}
        line.setdefault("time", stamp)
        self.events.defer("collect", lambda: self._write(crop, line, stamp))
        return True

    def maintain(self) -> None:
        """Queue a prune when one is due (hourly): crops past max_age_days go even when nothing new comes. Call it
        from the loop now and then (the status update); it costs nothing in between."""
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self.events.defer("collect", self._prune_if_there)

    def counts(self) -> dict[str, Any]:
        """For status.json and /metrics."""
        with self._lock:
            paused = time.monotonic() < self._paused_until
        return {"enabled": self.cfg.enabled, "collected": self.collected, "skipped_band": self.skipped_band,
                "skipped_rate": self.skipped_rate, "skipped_repeat": self.skipped_repeat, "failed": self.failed,
                "pruned": self.pruned, "paused_disk_full": paused}

    # -- the writer thread --------------------------------------------------------------------------------------
    def _write(self, crop_rgb: np.ndarray, line: dict[str, Any], t: float) -> None:
        name = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f"-{int(t * 1000) % 1000:03d}-" \
            f"{secrets.token_hex(3)}.jpg"
        tmp = self.folder / f".{name}.tmp"
        try:
            self._ensure_folder()
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise ValueError(f"{name}: the crop {crop_rgb.shape} could not be encoded as JPEG")
            _write_file(tmp, jpeg.tobytes())
            tmp.replace(self.folder / name)  # whole or absent: pull never sees half a crop
            text = json.dumps({"file": name, **line}, default=_plain) + "\n"
            fd = os.open(self.folder / INDEX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)
                _write_all(fd, text.encode())
            finally:
                os.close(fd)
            self.collected += 1
            self._prune()
        except (OSError, ValueError) as exc:
            self.failed += 1
            _unlink(tmp)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                with self._lock:
                    self._paused_until = time.monotonic() + FULL_PAUSE
                _unlink(self.folder / name)  # a crop without its line would never be labelled
                raise OSError(exc.errno, f"{self.folder}: disk full, collection paused for {FULL_PAUSE:.0f} s "
                              "(the door is not affected)") from None
            raise

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder.stat().st_mode & 0o7777) != FOLDER_MODE:
            self.folder.chmod(FOLDER_MODE)

    def _prune_if_there(self) -> None:
        if self.folder.is_dir():
            self._prune()

    def _prune(self) -> None:
        """Oldest crops beyond max_files, and any older than max_age_days, deleted; index lines whose crop is gone
        (pruned here, or pulled and deleted by mask-deploy) dropped."""
        crops = []
        for entry in os.scandir(self.folder):
            if NAME.fullmatch(entry.name):
                crops.append((entry.stat().st_mtime, entry.name))
            elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
                crops.append((entry.stat().st_mtime, entry.name))  # a write cut short: treated like a crop
        crops.sort()
        oldest_kept = self.clock() - self.cfg.max_age_days * 86400.0
        tmp_names = {n for _, n in crops if n.endswith(".tmp")}
        real = [(m, n) for m, n in crops if n not in tmp_names]
        doomed = {n for m, n in real if m < oldest_kept} | {n for _, n in real[:max(0, len(real) - self.cfg.max_files)]}
        doomed |= {n for m, n in crops if n in tmp_names and m < self.clock() - 60}
        for name in doomed:
            _unlink(self.folder / name)
            self.pruned += not name.endswith(".tmp")
        self._compact({n for _, n in real} - doomed)

    def _compact(self, present: set[str]) -> None:
        index = self.folder / INDEX
        try:
            lines = index.read_text().splitlines(keepends=True)
        except FileNotFoundError:
            return
        kept = [ln for ln in lines if _file_of(ln) in present]
        if len(kept) == len(lines):
            return
        tmp = self.folder / f".{INDEX}.tmp"
        _write_file(tmp, "".join(kept).encode())
        tmp.replace(index)


def _file_of(line: str) -> str | None:
    try:
        value = json.loads(line).get("file")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask: the group (the deploy user, who pulls) reads
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _plain(value: Any) -> Any:
    """numpy numbers in the JSON line as plain ones."""
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
