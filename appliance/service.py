"""The composition root: build the stages from the config, run the frame loop, talk to systemd, swap models."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import config as config_mod
from appliance.actuators import DoorController
from appliance.card import card_path_for
from appliance.classifier import load_model
from appliance.config import Config
from appliance.detector import make_detector
from appliance.events import EventLog
from appliance.notify import Notifier
from appliance.pipeline import Pipeline
from appliance.policy import Policy
from appliance.sources import FrameSource, open_source

log = logging.getLogger(__name__)


@dataclass
class _FileStamp:
    model: tuple | None
    card: tuple | None


def _stamp(path: Path) -> _FileStamp:
    def one(p: Path):
        try:
            st = p.stat()
            return (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return None

    return _FileStamp(one(path), one(card_path_for(path)))


class Service:
    def __init__(self, cfg: Config, config_path: Path | None = None, source_spec: str | None = None,
                 print_decisions: bool = False):
        self.cfg, self.config_path, self.source_spec = cfg, config_path, source_spec
        self.events = EventLog(cfg.events.database, echo=print_decisions or cfg.events.print_decisions,
                               faces_dir=cfg.events.faces_dir if cfg.events.save_faces else None)
        self.status_path = Path(cfg.events.database).parent / "status.json"
        self.notifier = Notifier()
        self._lock = threading.Lock()  # the door is driven by the loop and by the camera guard
        self.door = DoorController(cfg.gpio, cfg.policy.mode)  # fail state from this instant
        self.pipeline = Pipeline(make_detector(cfg.detector), load_model(cfg.classifier.model, cfg.classifier.threads),
                                 cfg.classifier.threshold)
        self.policy = Policy(cfg.policy, self.pipeline.threshold)
        self._model_stamp = _stamp(cfg.classifier.model)
        self._next_model_check = 0.0
        self.frames = 0
        self.skipped = 0  # empty frames from the source (unreadable files are counted by the source itself)
        self.started = time.time()
        self._stop = threading.Event()
        self._reload = False
        self._last_frame = time.monotonic()
        self._camera_lost = False
        self._fps = 0.0
        self.source: FrameSource | None = None

    # -- signals ------------------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload", True))

    def stop(self) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.stop()

    # -- model and config swaps ---------------------------------------------------------------------------------
    def _maybe_swap_model(self) -> None:
        now = time.monotonic()
        if now < self._next_model_check:
            return
        self._next_model_check = now + self.cfg.service.model_poll
        stamp = _stamp(self.cfg.classifier.model)
        if stamp == self._model_stamp or stamp.model is None or stamp.card is None:
            return
        self._model_stamp = stamp
        self.swap_model(self.cfg.classifier.model)

    def swap_model(self, path: Path) -> bool:
        old = self.pipeline.classifier
        try:
            new = load_model(path, self.cfg.classifier.threads)
        except Exception as exc:  # any failure to load is a refusal, never a crash
            self.events.record("fault", None, what="model refused", model=str(path), reason=str(exc),
                               kept=old.sha256)
            return False
        self.pipeline.classifier = new
        self.events.record("model", None, what="model swapped", model=str(path), sha256=new.sha256,
                           previous=old.sha256)
        self._write_status()
        return True

    def _reload_config(self) -> None:
        self._reload = False
        self.notifier.reloading()
        try:
            cfg = config_mod.load(self.config_path) if self.config_path else self.cfg
            pipeline = Pipeline(make_detector(cfg.detector), load_model(cfg.classifier.model, cfg.classifier.threads),
                                cfg.classifier.threshold)
        except Exception as exc:
            self.events.record("fault", None, what="reload refused", reason=str(exc))
        else:
            with self._lock:
                self.door.close()
                self.door = DoorController(cfg.gpio, cfg.policy.mode)
            self.cfg, self.pipeline, self.policy = cfg, pipeline, Policy(cfg.policy, pipeline.threshold)
            self._model_stamp = _stamp(cfg.classifier.model)
            self.events.record("model", None, what="config reloaded", sha256=pipeline.classifier.sha256)
        self.notifier.ready(self._status_line())

    # -- the camera guard ---------------------------------------------------------------------------------------
    def _guard(self) -> None:
        """No frame for camera_timeout seconds: the door goes to its fail state until frames come back."""
        while not self._stop.wait(0.25):
            if time.monotonic() - self._last_frame > self.cfg.service.camera_timeout and not self._camera_lost:
                self._camera_lost = True
                with self._lock:
                    self.door.fail()
                self.events.record("fault", None, what="no frames", seconds=self.cfg.service.camera_timeout,
                                   door=self.door.door)

    # -- status -------------------------------------------------------------------------------------------------
    def _status_line(self) -> str:
        sha = self.pipeline.classifier.sha256[:12]
        return f"{self._fps:.1f} fps, {self.policy.state}, door {self.door.door}, model {sha}"

    def _write_status(self) -> None:
        status = {
            "pid": os.getpid(),
            "started": self.started,
            "uptime": round(time.time() - self.started, 1),
            "frames": self.frames,
            "fps": round(self._fps, 2),
            "decision": self.policy.state,
            "door": self.door.door,
            "model": str(self.pipeline.classifier.path),
            "model_sha256": self.pipeline.classifier.sha256,
            "camera_lost": self._camera_lost,
            "running": not self._stop.is_set(),
        }
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.status_path)

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self, source: FrameSource | None = None) -> int:
        """Run until the source ends or a stop is asked; the door is left in its fail state either way."""
        guard = threading.Thread(target=self._guard, name="camera-guard", daemon=True)
        try:
            source = self.source = source or open_source(self.cfg.source, self.source_spec)
            # Holds, track timeouts and cool-downs run on the frames' clock: say which one that is.
            clock = getattr(source, "clock", "frame times as the source gives them")
            log.info("clock: %s", clock)
            self.events.record("start", None, model=self.pipeline.classifier.sha256, door=self.door.door,
                               clock=clock)
            self.notifier.ready(self._status_line())
            self._write_status()
            self._last_frame = time.monotonic()
            guard.start()
            self._loop(source)
            return 0
        except Exception as exc:
            self.events.record("fault", None, what="crash", reason=repr(exc))
            raise
        finally:
            self.notifier.stopping()
            self._stop.set()
            with self._lock:
                self.door.close()
            skipped = self.skipped + (getattr(source, "skipped", 0) if source is not None else 0)
            self.events.record("stop", None, frames=self.frames, skipped=skipped, door=self.door.door)
            if source is not None:
                source.close()
            self._write_status()
            self.events.close()

    def _loop(self, source: FrameSource) -> None:
        next_status = 0.0
        window_start, window_frames = time.monotonic(), 0
        for frame in source.frames():
            if self._stop.is_set():
                break
            if self._reload:
                self._reload_config()
            self._maybe_swap_model()
            if frame.image is None or frame.image.size == 0:
                self.skipped += 1
                log.warning("empty frame %d skipped (%d so far)", frame.index, self.skipped)
                continue
            results = self.pipeline.run(frame)
            self.policy.threshold = self.pipeline.threshold  # a swapped model may bring its own
            decision = self.policy.update(results, frame.t)
            self._last_frame = time.monotonic()
            with self._lock:
                if self._camera_lost:
                    self._camera_lost = False
                    self.events.record("fault", None, what="frames back")
                    self.door.fail()
                self.door.apply(decision.state, frame.t)
            if decision.changed:
                self.events.record("decision", decision.state, frame=frame.index, image=frame.name or None,
                                   t=round(frame.t, 3), unmasked=decision.unmasked, incorrect=decision.incorrect,
                                   masked=decision.masked, door=self.door.door,
                                   p=[round(r.p_without_mask, 3) for r in results])
                if self.events.faces_dir is not None and results:
                    self.events.save_faces(frame.image, [r.face.box for r in results], decision.state)
            self.frames += 1
            window_frames += 1
            self.notifier.pet()
            now = time.monotonic()
            if now >= next_status:
                self._fps = window_frames / max(1e-6, now - window_start)
                window_start, window_frames = now, 0
                next_status = now + self.cfg.service.status_interval
                self.notifier.status(self._status_line())
                self._write_status()
