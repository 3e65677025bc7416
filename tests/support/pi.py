"""A fake Pi: a state folder (models/, events.db, status.json) with the real service running on it in a thread."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from appliance import config
from appliance.service import Service
from support.data import SHIPPED, scene_images
from support.sources import PacedImageSource

# How long a fake Pi's service may take to write its first status.json: loading the model and the first frames,
# on two busy cores, takes a few seconds; a service that dies at start never writes one.
STARTUP_TIMEOUT = 60.0


class Pi:
    """A fake Pi's state folder with the real service running on it (models/, events.db, status.json)."""

    def __init__(self, state: Path, group: str | None = None, fresh: bool = True,
                 startup_timeout: float = STARTUP_TIMEOUT):
        """fresh: put the shipped model live first; else the service starts on the models already there. Fails the
        test if no status.json appears within `startup_timeout` seconds (the service is stopped first)."""
        self.state = state
        (state / "models").mkdir(parents=True, exist_ok=True)
        for suffix in (".tflite", ".json") if fresh else ():
            shutil.copy(SHIPPED.with_suffix(suffix), state / "models" / f"mask_classifier{suffix}")
        if group:  # as deploy/install.sh leaves it: the live model is the service's, the folder the group's
            shutil.chown(state / "models", group=group)
            (state / "models").chmod(0o2775)
        cfg = config.parse({"classifier": {"model": str(state / "models" / "mask_classifier.tflite")},
                            "events": {"database": str(state / "events.db")}, "service": {"model_poll": 0.2},
                            "gpio": {"relay_pin": None, "buzzer_pin": None, "green_pin": None, "red_pin": None}})
        self.service = Service(cfg)
        source = PacedImageSource(scene_images("without_mask", limit=1), still_frames=10**6)
        self.thread = threading.Thread(target=self.service.run, args=(source,))
        self.thread.start()
        deadline = time.monotonic() + startup_timeout
        while not (state / "status.json").exists():
            alive = self.thread.is_alive()
            if (not alive or time.monotonic() > deadline) and not (state / "status.json").exists():
                self.stop()
                why = f"within {startup_timeout:g} s of starting its service" if alive else "its service ended first"
                raise AssertionError(f"fake Pi {state}: no status.json, {why} (see its log)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(30)

    @property
    def sha256(self) -> str:
        return json.loads((self.state / "status.json").read_text())["model_sha256"]
