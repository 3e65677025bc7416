"""`mask-appliance`: argument parsing only; the work is in the stage modules, the service and appliance.checkup.
The options, logging, error lines and exit codes it shares with `mask-deploy` and `mask-train` are in cliparse."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from appliance import cliparse
from appliance import config as config_mod
from appliance.cliparse import BAD_INPUT, FAULT, OK, BadInput
from appliance.vocab import Label

PROG = "mask-appliance"


def _config(path: Path | None, files: bool = True) -> tuple[config_mod.Config, Path | None]:
    """--config, else /etc/mask-appliance/config.toml where it exists, else the built-in defaults; with `files`, the
    files it names (the model) must exist (config.check_files)."""
    if path is None and config_mod.DEFAULT_PATH.is_file():
        path = config_mod.DEFAULT_PATH
    cfg = config_mod.load(path)
    if files:
        config_mod.check_files(cfg, str(path or "<defaults>"))
    return cfg, path


def cmd_run(args: argparse.Namespace) -> int:
    from appliance.service import Service, ServiceError

    cfg, path = _config(args.config, files=False)  # the service checks them itself, at start and on every reload
    service = Service(cfg, path, args.source, print_decisions=args.print_decisions)
    # On a terminal, tracebacks go to a file beside the event log (the state folder); the journal keeps its own.
    kept = cliparse.keep_tracebacks(Path(cfg.events.database).parent)
    service.install_signals()
    try:
        return service.run()
    except ServiceError as exc:
        if kept is None:
            raise
        raise ServiceError(f"{exc} (traceback in {kept})") from exc.__cause__


def cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    from appliance.seeing.imaging import Refused, read_image
    from appliance.seeing.pipeline import Pipeline
    from appliance.seeing.sources import Frame, image_files

    if not args.json and args.out is None:
        raise BadInput("give --out DIR for annotated images, or --json")
    cfg, _ = _config(args.config)
    if args.max_side:  # one look at that size
        cfg.detector.photo_sides = (args.max_side, args.max_side)
    pipeline = Pipeline.from_config(cfg, photos=True)
    files = [f for spec in args.images for f in image_files(spec)]
    if not files:
        raise BadInput(f"no images found in {' '.join(args.images)}")
    if args.out is not None and not args.json:
        args.out.mkdir(parents=True, exist_ok=True)
    skipped = 0
    for index, path in enumerate(files):
        image = read_image(path, cfg.source.max_pixels)
        if isinstance(image, Refused):  # unreadable, or over [source] max_pixels by its header
            skipped += 1
            cliparse.error(PROG, f"{path}: {image.why} image, skipped ({image.detail})")
            continue
        results = pipeline.run(Frame(image, 0.0, index, name=str(path)))
        if args.json:
            print(json.dumps({"image": str(path), "faces": [r.to_json() for r in results]}), flush=True)
            continue
        for r in results:
            x1, y1, x2, y2 = (int(round(v)) for v in r.face.box)
            colour = (0, 200, 0) if r.label == Label.WITH_MASK else (0, 0, 255)
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(image, f"{r.label} {r.p_without_mask:.2f}", (x1, max(12, y1 - 6)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        cv2.imwrite(str(args.out / (Path(path).stem + ".jpg")), image)
    if skipped:
        cliparse.error(PROG, f"{skipped} of {len(files)} images skipped")
    return OK


def cmd_check(args: argparse.Namespace) -> int:
    """Print one row per probe (appliance.checkup): 2 if the config is bad, else 1 if any probe failed."""
    from appliance.checkup import Row, run_checks

    try:
        cfg, path = _config(args.config)
    except config_mod.ConfigError as exc:
        print(Row(False, "config", str(exc)))
        return BAD_INPUT
    rows = [Row(True, "config", str(path or "built-in defaults")), *run_checks(cfg)]
    for row in rows:
        print(row)
    return OK if all(row.ok for row in rows) else FAULT


def cmd_config(args: argparse.Namespace) -> int:
    print(config_mod.describe())
    return OK


def _bad_input() -> tuple[type[Exception], ...]:
    """The errors that are bad input (exit 2): imported only once an error comes, so `config` needs no OpenCV."""
    from appliance.assets import AssetError
    from appliance.seeing.card import CardError
    from appliance.seeing.classifier import ModelError

    return config_mod.ConfigError, CardError, ModelError, AssetError


def parser() -> cliparse.Family:
    family = cliparse.Family(PROG, "Face-mask door appliance")
    p = family.command("run", "run the service")
    p.add_argument("--config", type=Path)
    p.add_argument("--source", help="override [source] spec: picamera2, 0, /dev/video0, rtsp://..., file, folder")
    p.add_argument("--print", dest="print_decisions", action="store_true", help="print each decision as JSON")
    p.set_defaults(func=cmd_run)
    p = family.command("detect", "detect and classify faces in images")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--json", action="store_true",
                   help=f"{cliparse.JSON_HELP}: one JSON object per image, one per line")
    p.add_argument("--out", type=Path, help="folder for annotated images")
    p.add_argument("--config", type=Path)
    p.add_argument("--max-side", type=int, help="one look at this size instead of [detector] photo_sides")
    p.set_defaults(func=cmd_detect)
    p = family.command("check", "report camera, pins, detector and model",
                       "report camera, pins, detector and model, one row each: exit 1 if a probe fails, 2 if the "
                       "config is bad")
    p.add_argument("--config", type=Path)
    p.set_defaults(func=cmd_check)
    p = family.command("config", "print every setting with its default and description")
    p.set_defaults(func=cmd_config)
    return family


def main(argv: list[str] | None = None) -> int:
    args = parser().parse(argv)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    return cliparse.run(PROG, lambda: args.func(args), bad_input=_bad_input)


if __name__ == "__main__":
    sys.exit(main())
