"""What a SIGHUP reload may change in a running service, and what it must refuse by name."""

from __future__ import annotations

import dataclasses

from appliance.config import Config

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
