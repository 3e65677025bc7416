"""A SIGHUP reload: what it may change in a running service, what it must refuse by name, and applying it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Protocol

from appliance import config as config_mod
from appliance.config import Config, ConfigError
from appliance.deciding.keeper import DoorKeeper
from appliance.deciding.policy import Policy
from appliance.reporting.collect import Collector
from appliance.reporting.events import EventLog
from appliance.reporting.notify import Notifier
from appliance.reporting.reporter import Reporter
from appliance.seeing.classifier import load_model
from appliance.seeing.detector import make_detector
from appliance.seeing.pipeline import Pipeline
from appliance.seeing.watcher import ModelWatcher
from appliance.vocab import Fault, Kind


class Service(Protocol):
    """The parts of a running service a reload replaces or tells (service.Service is the one)."""

    cfg: Config
    config_path: Path | None
    print_decisions: bool
    notifier: Notifier
    events: EventLog
    pipeline: Pipeline
    keeper: DoorKeeper
    watcher: ModelWatcher
    policy: Policy
    collector: Collector
    reporter: Reporter

    def status_line(self) -> str: ...

log = logging.getLogger("appliance.service")

# Sections and keys a reload cannot apply to a running service: they are refused by name, the old config kept.
RESTART_SECTIONS = ("source", "mqtt", "http")
RESTART_KEYS = ("[events] database",)


def changed_keys(old: Config, new: Config) -> list[str]:
    """'[section] key' for every setting that differs between two configs."""
    keys = []
    for section in dataclasses.fields(Config):
        a, b = getattr(old, section.name), getattr(new, section.name)
        if a == b:
            continue
        keys += [f"[{section.name}] {f.name}" for f in dataclasses.fields(a)
                 if getattr(a, f.name) != getattr(b, f.name)]
    return keys


def needs_restart(changed: list[str], cfg: Config) -> list[str]:
    """The changed keys a running service cannot take: the source is open, the outputs are bound and connected,
    the event log's file is open. The reload is refused naming them; the running config stays."""
    restart = [k for k in changed if k.split("]")[0][1:] in RESTART_SECTIONS or k in RESTART_KEYS]
    if "[events] save_faces" in changed and cfg.http.listen:
        restart.append("[events] save_faces")  # the status page's blurring is set at start
    return restart


def reload(svc: Service) -> None:
    """SIGHUP: read the config file again and apply it; a reload never stops the door (a refused one is a fault
    event, and the running config stays)."""
    svc.notifier.reloading()
    try:
        new = svc.cfg
        if svc.config_path:
            new = config_mod.load(svc.config_path)
            config_mod.check_files(new, str(svc.config_path))
        apply(svc, new)
    except Exception as exc:
        svc.events.record(Kind.FAULT, None, what=Fault.RELOAD_REFUSED, reason=str(exc))
    svc.notifier.ready(svc.status_line())


def apply(svc: Service, cfg: Config) -> None:
    """Replace only what changed; the door's state, the policy's tracks and votes and the buzzer's cool-down carry
    over. Settings a running service cannot take are refused by name."""
    changed = changed_keys(svc.cfg, cfg)
    if not changed:
        log.info("reload: the config is unchanged")
        return
    restart = needs_restart(changed, cfg)
    if restart:
        raise ConfigError(f"{svc.config_path}: {', '.join(restart)} changed: that takes a restart "
                          "(systemctl restart mask-appliance); the running config is kept")
    sections = {k.split("]")[0][1:] for k in changed}
    pipeline = svc.pipeline
    # Everything that can fail is built before anything is replaced.
    detector = make_detector(cfg.detector) if "detector" in sections else pipeline.detector
    old_c, new_c = svc.cfg.classifier, cfg.classifier
    model = pipeline.classifier
    if (new_c.model, new_c.threads) != (old_c.model, old_c.threads):
        model = load_model(new_c.model, new_c.threads)
    if "gpio" in sections or "[policy] mode" in changed:
        svc.keeper.rewire(cfg.gpio, cfg.policy.mode)  # the last step that can fail (new pins may be taken)
    pipeline.detector = detector
    if model is not pipeline.classifier:
        pipeline.classifier = model
        svc.watcher.fallback = None
        svc.watcher.retarget(new_c.model, new_c.threads, cfg.service.model_poll)
    svc.watcher.set_poll(cfg.service.model_poll)  # a push not yet polled stays pending across the reload
    pipeline.threshold_override = new_c.threshold
    pipeline.schedule_cfg = cfg.schedule
    svc.policy.cfg = cfg.policy
    svc.policy.threshold = pipeline.threshold
    svc.events.echo = svc.print_decisions or cfg.events.print_decisions
    svc.events.faces_dir = cfg.events.faces_dir if cfg.events.save_faces else None
    svc.collector.cfg = cfg.collect
    svc.cfg = cfg
    svc.events.record(Kind.CONFIG, None, what="config reloaded", sha256=model.sha256, changed=changed)
    svc.reporter.send()
