"""`mask-appliance`: argument parsing only; the work is in the stage modules and the service."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from appliance import config as config_mod

log = logging.getLogger("mask-appliance")


def _config(path: Path | None):
    """--config, else /etc/mask-appliance/config.toml where it exists, else the built-in defaults."""
    if path is None and config_mod.DEFAULT_PATH.is_file():
        path = config_mod.DEFAULT_PATH
    return config_mod.load(path), path


def cmd_run(args) -> int:
    from appliance.service import Service

    cfg, path = _config(args.config)
    service = Service(cfg, path, args.source, print_decisions=args.print_decisions)
    service.install_signals()
    return service.run()


def _detect_stack(cfg):
    from appliance.classifier import load_model
    from appliance.detector import make_detector
    from appliance.pipeline import Pipeline

    return Pipeline(make_detector(cfg.detector), load_model(cfg.classifier.model, cfg.classifier.threads),
                    cfg.classifier.threshold)


def cmd_detect(args) -> int:
    import cv2

    from appliance.imaging import read_bgr
    from appliance.sources import Frame, image_files

    cfg, _ = _config(args.config)
    if args.max_side:
        cfg.detector.max_side = args.max_side
    pipeline = _detect_stack(cfg)
    files = [f for spec in args.images for f in image_files(spec)]
    if not files:
        print(f"mask-appliance: no images found in {' '.join(args.images)}", file=sys.stderr)
        return 1
    if not args.json:
        if args.out is None:
            print("mask-appliance: give --out DIR for annotated images, or --json", file=sys.stderr)
            return 2
        args.out.mkdir(parents=True, exist_ok=True)
    skipped = 0
    for index, path in enumerate(files):
        image = read_bgr(path)
        if image is None:
            skipped += 1
            print(f"mask-appliance: {path}: unreadable image, skipped", file=sys.stderr)
            continue
        results = pipeline.run(Frame(image, 0.0, index, name=str(path)))
        if args.json:
            print(json.dumps({"image": str(path), "faces": [r.to_json() for r in results]}), flush=True)
            continue
        for r in results:
            x1, y1, x2, y2 = (int(round(v)) for v in r.face.box)
            colour = (0, 200, 0) if r.label == "with_mask" else (0, 0, 255)
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(image, f"{r.label} {r.p_without_mask:.2f}", (x1, max(12, y1 - 6)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        cv2.imwrite(str(args.out / (Path(path).stem + ".jpg")), image)
    if skipped:
        print(f"mask-appliance: {skipped} of {len(files)} images skipped", file=sys.stderr)
    return 0


def versions() -> str:
    """Python and the runtime libraries as installed: what a bug report or a Pi check needs first."""
    import contextlib
    import platform
    from importlib import metadata

    found = [f"python {platform.python_version()} {platform.machine()}"]
    for dist in ("numpy", "opencv-python-headless", "ai-edge-litert", "tflite-runtime", "gpiozero"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{dist} {metadata.version(dist)}")
    return ", ".join(found)


def cmd_check(args) -> int:
    """Report camera, pin factory, detector and model, and what is missing; exit 1 if anything is."""
    problems = 0

    def line(ok: bool, what: str, detail: str) -> None:
        nonlocal problems
        problems += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {what:<12} {detail}")

    try:
        cfg, path = _config(args.config)
        line(True, "config", str(path or "built-in defaults"))
        line(True, "runtime", versions())
    except config_mod.ConfigError as exc:
        line(False, "config", str(exc))
        return 1
    try:
        from picamera2 import Picamera2

        cams = Picamera2.global_camera_info()
        line(bool(cams) or cfg.source.spec != "picamera2", "camera", f"picamera2: {len(cams)} camera(s)")
    except ImportError:
        line(cfg.source.spec != "picamera2", "camera", f"picamera2 not installed; source is {cfg.source.spec!r}")
    try:
        from gpiozero import Device

        from appliance.actuators import DoorController

        door = DoorController(cfg.gpio, cfg.policy.mode)
        line(True, "gpio", f"{type(Device.pin_factory).__name__}, door {door.door} at start ({cfg.gpio.fail})")
        door.close()
    except Exception as exc:  # gpiozero raises many kinds for missing hardware
        line(False, "gpio", f"{type(exc).__name__}: {exc}")
    try:
        from appliance.detector import make_detector

        make_detector(cfg.detector)
        line(True, "detector", f"{cfg.detector.kind}, detecting at <= {cfg.detector.max_side} px")
    except Exception as exc:
        line(False, "detector", str(exc))
    try:
        from appliance.classifier import load_model

        model = load_model(cfg.classifier.model, cfg.classifier.threads)
        c = model.card
        line(True, "model", f"{model.path} sha256 {model.sha256[:12]}, {c.input_size}px {c.input.dtype}, "
                            f"labels {'/'.join(c.labels)}, threshold {c.threshold}, "
                            f"validation {c.metrics.get('validation', {})}")
    except Exception as exc:
        line(False, "model", str(exc))
    return 1 if problems else 0


def cmd_config(args) -> int:
    print(config_mod.describe())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mask-appliance", description="Face-mask door appliance")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the service")
    p.add_argument("--config", type=Path)
    p.add_argument("--source", help="override [source] spec: picamera2, 0, /dev/video0, rtsp://..., file, folder")
    p.add_argument("--print", dest="print_decisions", action="store_true", help="print each decision as JSON")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("detect", help="detect and classify faces in images")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout, nothing else")
    p.add_argument("--out", type=Path, help="folder for annotated images")
    p.add_argument("--config", type=Path)
    p.add_argument("--max-side", type=int, help="override [detector] max_side")
    p.set_defaults(func=cmd_detect)
    p = sub.add_parser("check", help="report camera, pins, detector and model")
    p.add_argument("--config", type=Path)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("config", help="print every setting with its default and description")
    p.set_defaults(func=cmd_config)
    args = parser.parse_args(argv)
    # Logs go to stderr (the journal under systemd); stdout is kept for --json and --print.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        return args.func(args)
    except (config_mod.ConfigError, OSError, RuntimeError, ValueError) as exc:
        print(f"mask-appliance: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
