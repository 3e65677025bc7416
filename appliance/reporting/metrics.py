"""Prometheus metrics of the appliance, fed by the event log like every other output and served by web.py.

The registry is the service's own (never prometheus_client's global one), so a test or a reload that builds a second
`Metrics` never trips over "duplicated timeseries". Every update is a few dictionary operations under
prometheus_client's own locks: cheap enough for the event writer thread that calls us.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from appliance import __version__
from appliance.vocab import Decision, Door, Fault, Kind, Label, Recovery

log = logging.getLogger(__name__)

# `_created` series double the size of every scrape and no rule of ours reads them. prometheus_client offers only a
# process-wide switch; the appliance is the only user of prometheus_client in its process.
disable_created_metrics()

PREFIX = "mask_appliance"
STAGES = ("capture", "detect", "classify", "decide")
LABELS = tuple(Label)
DECISIONS = tuple(Decision)
# A Pi 4 runs YuNet on 480 px in ~20-40 ms and the int8 classifier in ~5-15 ms a face; a Pi 3 or a busy CPU takes
# several times that. 5 ms .. 2 s brackets every stage on every Pi we support, finer where the budget of a 15 fps
# loop (67 ms) is decided.
STAGE_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
# The classic text format, which every Prometheus reads (our names are plain ASCII, so nothing is lost).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RECOVERIES = frozenset(Recovery)
_DOORS = frozenset(Door)


def is_recovery(record: Mapping[str, Any]) -> bool:
    """Whether a record says a fault is over: kind "recovery", or, in a log written before that kind existed, a
    "fault" whose `what` names a recovery ("frames back", "camera guard back")."""
    kind, what = record.get("kind"), (record.get("detail") or {}).get("what")
    return kind == Kind.RECOVERY or (kind == Kind.FAULT and what in _RECOVERIES)


class Metrics:
    """An event-log output that keeps the Prometheus view of the service; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter(f"{PREFIX}_frames", "Frames run through the pipeline", registry=r)
        self.skipped = Counter(f"{PREFIX}_skipped_frames", "Empty frames from the source, skipped", registry=r)
        self.gated = Counter(f"{PREFIX}_gated_frames", "Frames on which motion gating skipped the face detector "
                             "(nothing moved: the faces last found were carried forward)", registry=r)
        self.classified = Counter(f"{PREFIX}_classified_faces", "Faces the mask model ran on (per frame: its rate "
                                  "over frames_total's)", registry=r)
        self.build_info = Gauge(f"{PREFIX}_build_info", "The appliance's release (value 1)", ["version"],
                                registry=r)
        self.build_info.labels(__version__).set(1)
        self.faces = Counter(f"{PREFIX}_faces", "Faces classified, by label", ["label"], registry=r)
        self.decisions = Counter(f"{PREFIX}_decisions", "Decisions taken (changes of the door decision), by kind",
                                 ["decision"], registry=r)
        self.faults = Counter(f"{PREFIX}_faults", "Faults in the event log, by kind", ["kind"], registry=r)
        self.recoveries = Counter(f"{PREFIX}_recoveries", "Faults over (frames back, camera guard back), by kind",
                                  ["kind"], registry=r)
        self.model_swaps = Counter(f"{PREFIX}_model_swaps", "Models swapped in or configs reloaded", registry=r)
        self.door_locked = Gauge(f"{PREFIX}_door_locked", "1 while the door is locked, 0 while released", registry=r)
        self.camera_up = Gauge(f"{PREFIX}_camera_up", "1 while frames arrive, 0 after the camera timeout",
                               registry=r)
        self.fps = Gauge(f"{PREFIX}_fps", "Frames per second over the last status interval", registry=r)
        self.model_info = Gauge(f"{PREFIX}_model_info", "The classifier model in use (value 1)", ["sha256", "model"],
                                registry=r)
        self.last_frame = Gauge(f"{PREFIX}_last_frame_timestamp_seconds",
                                "When the last frame reached the outputs (epoch s)", registry=r)
        self.collect = Gauge(f"{PREFIX}_collect_faces", "Hard examples kept for labelling, and faces passed over, "
                             "by outcome (collected, skipped_band, skipped_rate, skipped_repeat, failed, pruned)",
                             ["outcome"], registry=r)
        self.stage = Histogram(f"{PREFIX}_stage_seconds", "Time per frame spent in each stage", ["stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        for label in LABELS:  # a series that exists at zero lets rate() see its first increase
            self.faces.labels(label)
        for decision in DECISIONS:
            self.decisions.labels(decision)
        for stage in STAGES:
            self.stage.labels(stage)
        self.camera_up.set(1)
        self._lock = threading.Lock()
        # The frame counter is max(frames seen through on_frame, the newest status' total): on_frame keeps it live,
        # the status covers frames the writer shed under load, and neither counts a frame twice.
        self._frames_seen = 0
        self._frames = 0
        self._skipped = 0
        self._model: tuple[str, str] | None = None

    # -- the Output protocol ----------------------------------------------------------------------------------
    def on_record(self, record: dict) -> None:
        kind, detail = record.get("kind"), record.get("detail") or {}
        what = str(detail.get("what") or "unknown")
        if kind == Kind.DECISION:
            self.decisions.labels(str(record.get("state"))).inc()
            if detail.get("door") in _DOORS:
                self.door_locked.set(detail["door"] == Door.LOCKED)
        elif is_recovery(record):  # before faults: an older log recorded recoveries as faults
            self.recoveries.labels(what).inc()
            if what == Recovery.FRAMES_BACK:
                self.camera_up.set(1)
        elif kind == Kind.FAULT:
            self.faults.labels(what).inc()
            if what == Fault.NO_FRAMES:
                self.camera_up.set(0)
        elif kind in (Kind.MODEL, Kind.CONFIG):  # a config reload was a "model" event in older logs
            self.model_swaps.inc()

    def on_status(self, status: dict) -> None:
        with self._lock:
            self._count_frames(int(status.get("frames") or 0))
            skipped = int(status.get("skipped") or 0)
            if skipped > self._skipped:
                self.skipped.inc(skipped - self._skipped)
                self._skipped = skipped
            model = (str(status.get("model_sha256") or ""), str(status.get("model") or ""))
            if model != self._model and model[0]:
                self.model_info.clear()
                self.model_info.labels(*model).set(1)
                self._model = model
        if status.get("door") in _DOORS:
            self.door_locked.set(status["door"] == Door.LOCKED)
        if "camera_lost" in status:
            self.camera_up.set(0 if status["camera_lost"] else 1)
        if isinstance(status.get("fps"), int | float):
            self.fps.set(status["fps"])
        for outcome, n in (status.get("collect") or {}).items():
            if isinstance(n, int | float) and not isinstance(n, bool):  # enabled/paused are flags, not counts
                self.collect.labels(outcome).set(n)

    def on_frame(self, frame: dict) -> None:
        with self._lock:
            self._frames_seen += 1
            self._count_frames(self._frames_seen)
        stages = frame.get("stages") or {}
        for stage, seconds in stages.items():
            if stage in STAGES and isinstance(seconds, int | float):
                self.stage.labels(stage).observe(seconds)
        # The loop's per-frame counts ride with the stage times (loop.py): 1 when gating skipped the detector, and
        # the faces classified.
        for counter, key in ((self.gated, "gated"), (self.classified, "classified")):
            n = stages.get(key)
            if isinstance(n, int | float) and not isinstance(n, bool) and n > 0:
                counter.inc(n)
        for label, n in (frame.get("faces") or {}).items():
            if label in LABELS and n:
                self.faces.labels(label).inc(n)
        # Wall-clock time, not frame["t"]: that is the source's own clock (a video's timestamps), not the epoch.
        self.last_frame.set(time.time())

    def _count_frames(self, total: int) -> None:
        if total > self._frames:
            self.frames.inc(total - self._frames)
            self._frames = total

    def close(self) -> None:
        pass

    # -- exposition ---------------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text format of every metric above."""
        return generate_latest(self.registry)
