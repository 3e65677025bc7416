"""`mask-appliance check`'s probes: the runtime, the camera, the pins, the detector and the model, each tried for real
and reported as a row. Nothing here prints; `cli.py` does.

    rows = run_checks(cfg)
    print("\\n".join(map(str, rows)))   # "ok    model        models/mask_classifier.tflite sha256 ..."
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from appliance import __version__
from appliance.config import Config, DetectorConfig, ScheduleConfig

RUNTIME = ("numpy", "opencv-python-headless", "ai-edge-litert", "tflite-runtime", "gpiozero")


@dataclass(frozen=True)
class Row:
    """One probe's result: whether it passed, what was probed, and what was found (or why it failed)."""

    ok: bool
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what:<12} {self.detail}"


def versions() -> str:
    """The appliance's release, Python and the runtime libraries as installed: what a bug report or a Pi check needs
    first."""
    found = [f"mask-appliance {__version__}", f"python {platform.python_version()} {platform.machine()}"]
    for dist in RUNTIME:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{dist} {metadata.version(dist)}")
    return ", ".join(found)


def check_camera(cfg: Config) -> Row:
    # Only a picamera2 source needs a camera here; a file, stream or USB source is reached when the service runs.
    needed = cfg.source.spec == "picamera2"
    try:
        from picamera2 import Picamera2
    except ImportError:
        return Row(not needed, "camera", f"picamera2 not installed; source is {cfg.source.spec!r}")
    cams = Picamera2.global_camera_info()
    return Row(bool(cams) or not needed, "camera", f"picamera2: {len(cams)} camera(s)")


def check_gpio(cfg: Config) -> Row:
    from gpiozero import Device

    from appliance.deciding.actuators import DoorController

    door = DoorController(cfg.gpio, cfg.policy.mode)
    try:
        return Row(True, "gpio", f"{type(Device.pin_factory).__name__}, door {door.state} at start ({cfg.gpio.fail})")
    finally:
        door.close()


def check_detector(cfg: Config) -> Row:
    from appliance.seeing.detector import make_detector

    make_detector(cfg.detector)
    return Row(True, "detector", f"{cfg.detector.kind}, detecting at <= {cfg.detector.max_side} px, "
                                 f"{gating(cfg.detector)}")


def gating(d: DetectorConfig) -> str:
    """Whether motion gating is on, in words."""
    if not d.motion_gating:
        return "motion gating off (the detector runs on every frame)"
    return f"motion gating on (the detector runs on frames that moved, else every {d.idle_every:g} s)"


def reuse(s: ScheduleConfig) -> str:
    """Whether per-face scheduling is on, in words."""
    if not s.reuse or s.every == 1:
        return "per-face reuse off (every face classified on every frame)"
    return f"per-face reuse on (a settled face that barely moved is classified once in {s.every} frames)"


def check_model(cfg: Config) -> Row:
    from appliance.seeing.classifier import load_model

    model = load_model(cfg.classifier.model, cfg.classifier.threads)
    c = model.card
    return Row(True, "model", f"{model.path} sha256 {model.sha256[:12]}, {c.input_size}px {c.input.dtype}, "
                              f"labels {'/'.join(c.labels)}, threshold {c.threshold}, "
                              f"validation {c.metrics.get('validation', {})}; {reuse(cfg.schedule)}")


PROBES: tuple[tuple[str, Callable[[Config], Row]], ...] = (
    ("camera", check_camera), ("gpio", check_gpio), ("detector", check_detector), ("model", check_model))


def run_checks(cfg: Config) -> list[Row]:
    """The runtime's versions, then one row per probe. A probe that raises is a failed row with the reason: the
    hardware libraries raise many kinds for missing hardware, and one failure must not hide the next probe's."""
    rows = [Row(True, "runtime", versions())]
    for what, probe in PROBES:
        try:
            rows.append(probe(cfg))
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}" if what == "gpio" else str(exc)
            rows.append(Row(False, what, detail))
    return rows
