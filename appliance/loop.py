"""The frame loop: `pipeline.step -> policy.update -> keeper.frame (the door) -> emitter.emit`, once per frame.

`pipeline.step` runs the detector only on frames where something moved (and every `[detector] idle_every`
seconds), carrying the faces last found forward in between, and classifies only the faces that need it (a settled
face that barely moved keeps its verdict a few frames): the policy, the camera guard, the watchdog and the reporter
see every frame as before.

Between frames (and during a camera outage, every quarter second while it waits for one) it applies a SIGHUP
reload, swaps in a newly pushed model, and lets the reporter pet systemd's watchdog: the pets stop only when the
loop itself hangs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from appliance.deciding.keeper import DoorKeeper
from appliance.deciding.policy import Policy
from appliance.reporting.collect import Collector
from appliance.reporting.emitter import Emitter
from appliance.reporting.reporter import Reporter
from appliance.seeing.pipeline import Pipeline
from appliance.seeing.reader import WAIT, FrameReader
from appliance.seeing.sources import Frame
from appliance.seeing.watcher import ModelWatcher

log = logging.getLogger("appliance.service")


class FrameLoop:
    """Drives one frame at a time from `reader` until the source ends or `stopped` is set; counts what it saw."""

    def __init__(self, pipeline: Pipeline, policy: Policy, keeper: DoorKeeper, emitter: Emitter, reporter: Reporter,
                 watcher: ModelWatcher, collector: Collector, stopped: threading.Event, reload: Callable[[], None]):
        self.pipeline, self.policy, self.keeper, self.emitter = pipeline, policy, keeper, emitter
        self.reporter, self.watcher, self.collector = reporter, watcher, collector
        self.stopped, self._reload = stopped, reload
        self.reload_asked = False  # set by SIGHUP's handler: any number of them is one reload
        self.frames = 0
        self.skipped = 0  # empty frames from the source (unreadable files are counted by the source itself)

    def run(self, reader: FrameReader) -> None:
        """Until the source ends or a stop is asked; a source's error is raised here."""
        reader.ask()
        asked = time.monotonic()
        while not self.stopped.is_set():
            got = reader.get(WAIT)
            if self.reload_asked:
                self.reload_asked = False
                self._reload()
            new = self.watcher.poll(self.pipeline.classifier.sha256)
            if new is not None:
                self.watcher.install(self.pipeline, new)
                self.reporter.send()
            if got is not None:
                kind, item = got
                if kind == "end" or self.stopped.is_set():
                    return
                if kind == "error":
                    raise item
                self.frame(item, time.monotonic() - asked)
                reader.ask()
                asked = time.monotonic()
            if self.reporter.cycle():  # pets the watchdog: this loop is alive, with or without frames
                self.collector.maintain()

    def frame(self, frame: Frame, capture: float) -> None:
        """One frame, `capture` seconds after it was asked for."""
        if frame.image is None or frame.image.size == 0:
            self.skipped += 1
            log.warning("empty frame %d skipped (%d so far)", frame.index, self.skipped)
            return
        results = self.pipeline.step(frame)
        times = self.pipeline.times  # this frame's, read before anything else can run the pipeline
        ran = time.monotonic()
        self.policy.threshold = self.pipeline.threshold  # a swapped model may bring its own
        decision = self.policy.update(results, frame.t)
        self.pipeline.settled([track.settled for track in decision.faces])  # may keep their verdicts (not UNSETTLED)
        self.keeper.frame(decision.state, frame.t)
        # A frame without faces classifies nothing and reports classify = 0.0 (not no observation): every stage
        # then counts one observation per frame, so each stage's sum/count is its mean per frame and they add up.
        # "gated" (1 when the detector was skipped) and "classified" (faces the model ran on) ride along with the
        # stage times to /metrics' counters (the histograms take only the four stages).
        stages = {"capture": capture, "detect": times.detect, "classify": times.classify,
                  "decide": time.monotonic() - ran, "gated": 0.0 if times.detected else 1.0,
                  "classified": float(times.classified)}
        self.frames += 1
        self.reporter.frame_done()
        self.emitter.emit(frame, results, decision, self.keeper.state, self.pipeline.classifier, stages)
