"""The composition root: build the stages from the config, run the frame loop, talk to systemd, swap models.

One frame: `pipeline.run -> policy.update -> door.apply -> emit` (events, statistics, collection). Around it:
the frame reader (the source's reads on a thread of their own, so the loop waits with a timeout and stays alive
through a camera outage), the camera guard (guard.py), the model watcher (watcher.py) and the reporter
(reporter.py: fps, status.json, STATUS= and the watchdog, petted once per loop cycle).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance import config as config_mod
from appliance import mqtt, web
from appliance.actuators import DoorController
from appliance.classifier import MaskClassifier, crop_faces, load_model
from appliance.collect import Collector
from appliance.config import Config, ConfigError
from appliance.detector import make_detector
from appliance.events import EventLog
from appliance.guard import CameraGuard
from appliance.notify import Notifier
from appliance.pipeline import Pipeline
from appliance.policy import Decision, Policy
from appliance.reader import WAIT, FrameReader
from appliance.reload import changed_keys, needs_restart
from appliance.reporter import Reporter
from appliance.sources import Frame, FrameSource, open_source
from appliance.watcher import ModelWatcher, forced_push

log = logging.getLogger(__name__)

STOP_WAIT = 2.0  # seconds a stop waits for a blocked source read before it goes on without it (unit: 15 s)
_NO_CROP = np.zeros((0, 0, 3), np.uint8)  # offered for faces outside the band: the collector refuses them unread


class ServiceError(RuntimeError):
    """The frame loop failed. The message is one line (the CLI prints it); the traceback is in the log."""


class Service:
    """Owns every part of a running appliance and the frame loop that drives them; see the module docstring."""

    def __init__(self, cfg: Config, config_path: Path | None = None, source_spec: str | None = None,
                 print_decisions: bool = False):
        self.cfg, self.config_path, self.source_spec = cfg, config_path, source_spec
        self._print_decisions = print_decisions
        state = Path(cfg.events.database).parent
        self.events = EventLog(cfg.events.database, echo=print_decisions or cfg.events.print_decisions,
                               faces_dir=cfg.events.faces_dir if cfg.events.save_faces else None,
                               status_path=state / "status.json")
        self.status_path = state / "status.json"
        self.notifier = Notifier()
        self._lock = threading.Lock()  # the door is driven by the loop and by the camera guard
        door = None
        try:
            for make in (lambda: web.from_config(cfg.http, self.events, save_faces=cfg.events.save_faces),
                         lambda: mqtt.from_config(cfg.mqtt, self.events)):
                output = make()  # one at a time: an output that started is closed by events.close() below
                if output is not None:
                    self.events.subscribe(output)  # EventLog.close() closes them
            door = DoorController(cfg.gpio, cfg.policy.mode)  # fail state from this instant
            self.watcher = ModelWatcher(cfg.classifier.model, cfg.classifier.threads, cfg.service.model_poll,
                                        self.events.record)
            self.pipeline = Pipeline(make_detector(cfg.detector), self.watcher.load_start(),
                                     cfg.classifier.threshold)
        except BaseException:  # no start: let go of the pins, the port and the broker before the error is told
            if door is not None:
                door.close()
            self.events.close()
            raise
        self.door = door
        self.policy = Policy(cfg.policy, self.pipeline.threshold)
        self.collector = Collector(cfg.collect, state / "collect", self.events)
        self.frames = 0
        self.skipped = 0  # empty frames from the source (unreadable files are counted by the source itself)
        self.started = time.time()
        self._stop = threading.Event()
        self._reload = False
        self._last_t: float | None = None  # the newest frame's time (the source's clock)
        self.source: FrameSource | None = None
        self.guard = CameraGuard(lambda: self.cfg.service.camera_timeout, self._camera_lost, self._guard_failed,
                                 self._guard_back, self._stop)
        self.reporter = Reporter(self.notifier, self.status, self._status_line, self.events.status,
                                 lambda: self.cfg.service.status_interval)

    @property
    def model_fallback(self) -> str | None:
        return self.watcher.fallback

    # -- signals ------------------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload", True))  # any number of them: one reload

    def stop(self) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.stop()

    # -- model and config swaps ---------------------------------------------------------------------------------
    def swap_model(self, path: Path) -> bool:
        try:
            new = load_model(path, self.cfg.classifier.threads)
        except Exception as exc:  # any failure to load is a refusal, never a crash
            self.events.record("fault", None, what="model refused", model=str(path), reason=str(exc),
                               kept=self.pipeline.classifier.sha256)
            return False
        self._install_model(new)
        return True

    def _install_model(self, new: MaskClassifier) -> None:
        old = self.pipeline.classifier
        self.pipeline.classifier = new
        self.watcher.fallback = None
        push = forced_push(new.path)
        self.events.record("model", None, what="model swapped", model=str(new.path), sha256=new.sha256,
                           previous=old.sha256, **({"forced_push": push} if push else {}))
        self.reporter.send()

    def _reload_config(self) -> None:
        self._reload = False
        self.notifier.reloading()
        try:
            self._apply_config(config_mod.load(self.config_path) if self.config_path else self.cfg)
        except Exception as exc:  # a reload never stops the door: the running config stays
            self.events.record("fault", None, what="reload refused", reason=str(exc))
        self.notifier.ready(self._status_line())

    def _apply_config(self, cfg: Config) -> None:
        """Replace only what changed; the door's state, the policy's tracks and votes and the buzzer's cool-down
        carry over. Settings a running service cannot take are refused by name."""
        changed = changed_keys(self.cfg, cfg)
        if not changed:
            log.info("reload: the config is unchanged")
            return
        restart = needs_restart(changed, cfg)
        if restart:
            raise ConfigError(f"{self.config_path}: {', '.join(restart)} changed: that takes a restart "
                              "(systemctl restart mask-appliance); the running config is kept")
        sections = {k.split("]")[0][1:] for k in changed}
        # Everything that can fail is built before anything is replaced.
        detector = make_detector(cfg.detector) if "detector" in sections else self.pipeline.detector
        old_c, new_c = self.cfg.classifier, cfg.classifier
        model = self.pipeline.classifier
        if (new_c.model, new_c.threads) != (old_c.model, old_c.threads):
            model = load_model(new_c.model, new_c.threads)
        if "gpio" in sections or "[policy] mode" in changed:
            self._rewire(cfg)  # the last step that can fail (new pins may be taken): before anything else changes
        self.pipeline.detector = detector
        if model is not self.pipeline.classifier:
            self.pipeline.classifier = model
            self.watcher.fallback = None
            self.watcher.retarget(new_c.model, new_c.threads, cfg.service.model_poll)
        self.watcher.set_poll(cfg.service.model_poll)  # a push not yet polled stays pending across the reload
        self.pipeline.threshold_override = new_c.threshold
        self.policy.cfg = cfg.policy
        self.policy.threshold = self.pipeline.threshold
        self.events.echo = self._print_decisions or cfg.events.print_decisions
        self.events.faces_dir = cfg.events.faces_dir if cfg.events.save_faces else None
        self.collector.cfg = cfg.collect
        self.cfg = cfg
        self.events.record("model", None, what="config reloaded", sha256=model.sha256, changed=changed)
        self.reporter.send()

    def _rewire(self, cfg: Config) -> None:
        with self._lock:
            if not self.door.reconfigure(cfg.gpio, cfg.policy.mode):
                old = self.door
                old.close()  # new pins: the old devices must let go of theirs first
                try:
                    self.door = DoorController(cfg.gpio, cfg.policy.mode)
                except Exception:
                    self.door = DoorController(old.cfg, old.mode)
                    self.door.carry_from(old)
                    raise
                self.door.carry_from(old)
            self._drive(self.policy.state)

    # -- the door -----------------------------------------------------------------------------------------------
    def _drive(self, decision: str) -> None:
        """Under the lock: the decision's door, or the fail state while the camera is lost or unguarded."""
        if self.guard.lost or not self.guard.healthy:
            self.door.fail()
        else:
            self.door.apply(decision, self._last_t)

    def _camera_lost(self) -> None:
        with self._lock:
            self.door.fail()
        self.events.record("fault", None, what="no frames", seconds=self.cfg.service.camera_timeout,
                           door=self.door.door)
        self.reporter.send()

    def _guard_failed(self, exc: BaseException) -> None:
        with self._lock:
            self.door.fail()
        self.events.record("fault", None, what="camera guard failed", reason=repr(exc), door=self.door.door)
        self.reporter.send()

    def _guard_back(self) -> None:
        self.events.record("fault", None, what="camera guard back")  # the next frame drives the door again

    # -- status -------------------------------------------------------------------------------------------------
    def _status_line(self) -> str:
        sha = self.pipeline.classifier.sha256[:12]
        lost = ", CAMERA LOST" if self.guard.lost else ""
        return f"{self.reporter.fps:.1f} fps, {self.policy.state}, door {self.door.door}, model {sha}{lost}"

    def status(self) -> dict[str, Any]:
        source = self.source
        return {
            "pid": os.getpid(),
            "started": self.started,
            "uptime": round(time.time() - self.started, 1),
            "frames": self.frames,
            "skipped": self.skipped + (getattr(source, "skipped", 0) if source is not None else 0),
            "fps": round(self.reporter.fps, 2),
            "decision": self.policy.state,
            "door": self.door.door,
            "model": str(self.pipeline.classifier.path),
            "model_sha256": self.pipeline.classifier.sha256,
            "model_fallback": self.watcher.fallback,
            "camera_lost": self.guard.lost,
            "running": not self._stop.is_set(),
            "status_interval": self.cfg.service.status_interval,
            "collect": self.collector.counts(),
        }

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self, source: FrameSource | None = None) -> int:
        """Run until the source ends or a stop is asked; the door is left in its fail state either way."""
        reader: FrameReader | None = None
        try:
            source = self.source = source or open_source(self.cfg.source, self.source_spec)
            # Holds, track timeouts and cool-downs run on the frames' clock: say which one that is.
            clock = getattr(source, "clock", "frame times as the source gives them")
            log.info("clock: %s", clock)
            push = forced_push(self.pipeline.classifier.path)
            self.events.record("start", None, model=self.pipeline.classifier.sha256, door=self.door.door,
                               clock=clock, **({"forced_push": push} if push else {}),
                               **({"model_fallback": self.watcher.fallback} if self.watcher.fallback else {}))
            self.notifier.ready(self._status_line())
            self.reporter.send()
            self.guard.start()
            reader = FrameReader(source)
            reader.start()
            self._loop(reader)
            return 0
        except Exception as exc:
            log.exception("frame loop failed")  # the traceback, for the journal, whatever the type
            self.events.record("fault", None, what="crash", reason=repr(exc))
            first = (str(exc).splitlines() or [""])[0]
            raise ServiceError(f"frame loop failed: {type(exc).__name__}: {first}") from exc
        finally:
            self._finish(source, reader)

    def _finish(self, source: FrameSource | None, reader: FrameReader | None) -> None:
        self.notifier.stopping()
        self._stop.set()
        with self._lock:
            self.door.close()
        if source is not None:
            try:
                source.stop()
            except Exception:
                log.exception("stopping the source failed")
        done = reader.stop(STOP_WAIT) if reader is not None else True
        if not done:  # a read hung in a driver or the network: stop without it (the thread is a daemon)
            log.error("the source's read is still blocked after %.0f s; stopping without it", STOP_WAIT)
        skipped = self.skipped + (getattr(source, "skipped", 0) if source is not None else 0)
        self.events.record("stop", None, frames=self.frames, skipped=skipped, door=self.door.door,
                           **({} if done else {"read_blocked": True}))
        if source is not None and done:
            try:
                source.close()
            except Exception:
                log.exception("closing the source failed")
        self.reporter.send()
        self.events.close()

    def _loop(self, reader: FrameReader) -> None:
        reader.ask()
        asked = time.monotonic()
        while not self._stop.is_set():
            got = reader.get(WAIT)
            if self._reload:
                self._reload_config()
            new = self.watcher.poll(self.pipeline.classifier.sha256)
            if new is not None:
                self._install_model(new)
            if got is not None:
                kind, item = got
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                capture = time.monotonic() - asked
                if self._stop.is_set():
                    return
                self._frame(item, capture)
                reader.ask()
                asked = time.monotonic()
            if self.reporter.cycle():  # pets the watchdog: this loop is alive, with or without frames
                self.collector.maintain()

    def _frame(self, frame: Frame, capture: float) -> None:
        """One frame: pipeline.run -> policy.update -> door.apply -> emit."""
        if frame.image is None or frame.image.size == 0:
            self.skipped += 1
            log.warning("empty frame %d skipped (%d so far)", frame.index, self.skipped)
            return
        started = time.monotonic()
        results = self.pipeline.run(frame)
        ran = time.monotonic()
        decision = self._decide(results, frame.t)
        self._apply(decision)
        stages = {"capture": capture, "detect": ran - started, "classify": 0.0,  # until Pipeline times its stages
                  **(getattr(self.pipeline, "last_times", None) or {}), "decide": time.monotonic() - ran}
        self._emit(frame, results, decision, stages)

    def _decide(self, results: list, t: float) -> Decision:
        self.policy.threshold = self.pipeline.threshold  # a swapped model may bring its own
        decision = self.policy.update(results, t)
        self._last_t = t
        return decision

    def _apply(self, decision: Decision) -> None:
        self.guard.frame_seen()
        with self._lock:
            if self.guard.lost:
                self.guard.lost = False
                self.events.record("fault", None, what="frames back")
                self.door.fail()
            self._drive(decision.state)

    def _emit(self, frame: Frame, results: list, decision: Decision, stages: dict[str, float]) -> None:
        """The decision to the event log, the faces to collection, the frame's statistics to the outputs."""
        if decision.changed:
            self.events.record("decision", decision.state, frame=frame.index, image=frame.name or None,
                               t=round(frame.t, 3), unmasked=decision.unmasked, incorrect=decision.incorrect,
                               masked=decision.masked, door=self.door.door,
                               p=[round(r.p_without_mask, 3) for r in results])
            if self.events.faces_dir is not None and results:
                self.events.save_faces(frame.image, [r.face.box for r in results], decision.state)
        if self.collector.cfg.enabled and results:
            self._collect(frame, results, decision)
        self.frames += 1
        self.reporter.frame_done()
        faces = {"with_mask": 0, "without_mask": 0, "incorrect_mask": 0}
        for r in results:
            faces[r.label] = faces.get(r.label, 0) + 1
        stats: dict[str, Any] = {"t": frame.t, "stages": stages, "faces": faces}
        if self.cfg.http.snapshot:
            stats.update(image=frame.image, boxes=[r.face.box for r in results])
        self.events.frame(stats)

    def _collect(self, frame: Frame, results: list, decision: Decision) -> None:
        lo, hi = self.collector.cfg.band
        model = self.pipeline.classifier
        for r, track in zip(results, decision.faces, strict=True):
            box = r.face.box
            wanted = lo <= r.p_without_mask <= hi or track.disagreed
            # Only a face the collector may take is cropped: collection must not slow the loop.
            crop = crop_faces(frame.image, [box], model.card.crop, model.input_size)[0] if wanted else _NO_CROP
            self.collector.offer(crop, {
                "time": time.time(), "p_without_mask": r.p_without_mask, "p_incorrect_mask": r.p_incorrect_mask,
                "label": r.label, "decision": decision.state, "model_sha256": model.sha256,
                "face_size": round(min(box[2] - box[0], box[3] - box[1]), 1), "track_id": track.id,
                **({"disagreed": True} if track.disagreed else {})}, t=frame.t)
