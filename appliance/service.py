"""The composition root: build the stages from the config, run the frame loop, talk to systemd, stop cleanly.

One frame (loop.py): `pipeline.run -> policy.update -> keeper.frame -> emitter.emit`. Around it: the frame reader (the
source's reads on a thread of their own, so the loop waits with a timeout and stays alive through a camera outage),
the door keeper (keeper.py: the relay, and the camera guard that fails it when frames stop), the model watcher
(watcher.py), the reporter (reporter.py: fps, status.json, STATUS= and the watchdog, petted once per loop cycle) and
SIGHUP reloads (reload.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from appliance import config as config_mod
from appliance import reload
from appliance.config import Config
from appliance.deciding.actuators import DoorController
from appliance.deciding.keeper import DoorKeeper
from appliance.deciding.policy import Policy
from appliance.loop import FrameLoop
from appliance.reporting.collect import Collector
from appliance.reporting.emitter import Emitter, start_outputs
from appliance.reporting.events import EventLog
from appliance.reporting.notify import Notifier
from appliance.reporting.reporter import Reporter
from appliance.seeing.pipeline import Pipeline
from appliance.seeing.reader import FrameReader, close_source, stop_reading
from appliance.seeing.sources import FrameSource, open_source
from appliance.seeing.watcher import ModelWatcher, forced_push
from appliance.vocab import Fault, Kind, Status

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """The frame loop failed. The message is one line (the CLI prints it); the traceback is in the log: the journal
    under systemd, else the file cliparse.keep_tracebacks names (and the console with -v)."""


class Service:
    """Owns every part of a running appliance and the frame loop that drives them; see the module docstring."""

    def __init__(self, cfg: Config, config_path: Path | None = None, source_spec: str | None = None,
                 print_decisions: bool = False):
        config_mod.check_files(cfg, str(config_path or "<config>"))  # a missing model refuses to start
        self.cfg, self.config_path, self.source_spec = cfg, config_path, source_spec
        self.print_decisions = print_decisions
        state = Path(cfg.events.database).parent
        self.events = EventLog(cfg.events.database, echo=print_decisions or cfg.events.print_decisions,
                               faces_dir=cfg.events.faces_dir if cfg.events.save_faces else None,
                               status_path=state / "status.json")
        self.notifier = Notifier()
        self._stop = threading.Event()
        door = None
        try:
            start_outputs(cfg, self.events)
            door = DoorController(cfg.gpio, cfg.policy.mode)  # fail state from this instant
            self.watcher = ModelWatcher(cfg.classifier.model, cfg.classifier.threads, cfg.service.model_poll,
                                        self.events.record)
            self.pipeline = Pipeline.from_config(cfg, self.watcher.load_start())
        except BaseException:  # no start: let go of the pins, the port and the broker before the error is told
            if door is not None:
                door.close()
            self.events.close()
            raise
        self.reporter = Reporter(self.notifier, self.status, self.status_line, self.events.status,
                                 lambda: self.cfg.service.status_interval)
        self.keeper = DoorKeeper(door, self.events, lambda: self.cfg.service.camera_timeout, self._stop,
                                 self.reporter.send)
        self.policy = Policy(cfg.policy, self.pipeline.threshold)
        self.collector = Collector(cfg.collect, state / "collect", self.events)
        self.emitter = Emitter(self.events, self.collector, cfg.http.snapshot)
        self.loop = FrameLoop(self.pipeline, self.policy, self.keeper, self.emitter, self.reporter, self.watcher,
                              self.collector, self._stop, lambda: reload.reload(self))
        self.started = time.time()
        self.source: FrameSource | None = None

    @property
    def frames(self) -> int:
        return self.loop.frames

    @property
    def model_fallback(self) -> str | None:
        return self.watcher.fallback

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: setattr(self.loop, "reload_asked", True))

    def stop(self) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.stop()

    def status_line(self) -> str:
        sha = self.pipeline.classifier.sha256[:12]
        lost = ", CAMERA LOST" if self.keeper.camera_lost else ""
        return f"{self.reporter.fps:.1f} fps, {self.policy.state}, door {self.keeper.state}, model {sha}{lost}"

    def status(self) -> Status:
        """What status.json, /status.json and MQTT's state say about this service."""
        return Status(
            pid=os.getpid(), started=self.started, uptime=round(time.time() - self.started, 1),
            frames=self.frames, skipped=self._skipped(), fps=round(self.reporter.fps, 2),
            decision=self.policy.state, door=self.keeper.state,
            model=str(self.pipeline.classifier.path), model_sha256=self.pipeline.classifier.sha256,
            model_fallback=self.watcher.fallback, camera_lost=self.keeper.camera_lost,
            running=not self._stop.is_set(), status_interval=self.cfg.service.status_interval,
            collect=self.collector.counts(),
        )

    def _skipped(self) -> int:
        return self.loop.skipped + getattr(self.source, "skipped", 0)

    def run(self, source: FrameSource | None = None) -> int:
        """Run until the source ends or a stop is asked; the door is left in its fail state either way."""
        reader: FrameReader | None = None
        try:
            source = self.source = source or open_source(self.cfg.source, self.source_spec)
            # Holds, track timeouts and cool-downs run on the frames' clock: say which one that is.
            clock = getattr(source, "clock", "frame times as the source gives them")
            log.info("clock: %s", clock)
            push, fallback = forced_push(self.pipeline.classifier.path), self.watcher.fallback
            self.events.record(Kind.START, None, model=self.pipeline.classifier.sha256, door=self.keeper.state,
                               clock=clock, **({"forced_push": push} if push else {}),
                               **({"model_fallback": fallback} if fallback else {}))
            self.notifier.ready(self.status_line())
            self.reporter.send()
            self.keeper.start()
            reader = FrameReader(source)
            reader.start()
            self.loop.run(reader)
            return 0
        except Exception as exc:
            # The traceback, whatever the type, for the journal (or, on a terminal, the log file cliparse keeps);
            # not on a terminal's console: the command's last line (the ServiceError below) tells the failure there.
            log.error("frame loop failed", exc_info=True, extra={"console": False})
            self.events.record(Kind.FAULT, None, what=Fault.CRASH, reason=repr(exc))
            first = (str(exc).splitlines() or [""])[0]
            raise ServiceError(f"frame loop failed: {type(exc).__name__}: {first}") from exc
        finally:
            self._finish(reader)

    def _finish(self, reader: FrameReader | None) -> None:
        self.notifier.stopping()
        self._stop.set()
        self.keeper.close()  # the fail state first, before anything that could hang
        done = stop_reading(self.source, reader)
        self.events.record(Kind.STOP, None, frames=self.frames, skipped=self._skipped(), door=self.keeper.state,
                           **({} if done else {"read_blocked": True}))
        if done:
            close_source(self.source)
        self.reporter.send()
        self.events.close()
