"""A simulated new door (issue #15): how much do its own labelled crops help?

The door is a labelled scene source that the starting model never saw (`--source`, scenes-ilc: use its by-photo
training part only, training/splits.py; scenes-dev is never touched). That part is split again by photo (the same
splitter, another seed): the door's first part, where the real service runs with collection on, and its unseen
part, where every model is measured. A script stands in for the person at the labelling page: it gives each
collected crop the label of the labelled face it was cut from (found by running the service's detector again on
the photos: the crop whose pixels match, then the labelled box that overlaps it), or skips it (0) when the crop is
no labelled face. Then, for each count of labelled door crops (0, 50, 100, 200, 400: the first ones collected, as a
shop would have them after a while), `mask-train train --init` fine-tunes the starting model with them and the
replay crops (`--replay`), `mask-train gate` judges it against the starting model, and TNR, FNR and incorrect-mask
recall are measured on the unseen part (labelled boxes cut as the appliance cuts them, each model at its card's
threshold).

    python benchmarks/door_curve.py --base BASE.tflite --source ../shared/datasets/scenes-ilc/labels.csv \\
        --replay ../shared/datasets/mask-crops --base-weights ../shared/assets/imagenet/...no_top.h5 --out runs/door

Writes DIR/curve.json and prints the table. CPU-heavy: one fine-tune per count (a few minutes each).
"""
# One benchmark script, kept in one file (longer than the 200-line guide) so that it can be read and run alone.

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance import config  # noqa: E402
from appliance.boxes import iou  # noqa: E402
from appliance.seeing.card import LABELS, load_card  # noqa: E402
from appliance.seeing.classifier import MaskClassifier, crop_faces  # noqa: E402
from appliance.seeing.detector import make_detector  # noqa: E402
from appliance.seeing.imaging import read_bgr  # noqa: E402
from training import label, report  # noqa: E402
from training.evaluate import read_scene_labels  # noqa: E402
from training.splits import DEFAULT_SEED, split_photos, split_scenes  # noqa: E402

log = logging.getLogger("door_curve")

COUNTS = (0, 50, 100, 200, 400)
UNSEEN_FRACTION = 0.4  # of the door's photos, held out for measuring (by photo and near-duplicate group)
MATCH_MAX_DIFF = 8.0  # mean absolute grey difference (0..255) at 32 px under which a crop is the same crop (JPEG)
MATCH_MIN_IOU = 0.3  # a detected box is a labelled face when they overlap this much (labelled boxes are tight)


def door_parts(source: Path) -> tuple[list[str], list[str]]:
    """(first part, unseen part) of the source's training part, by photo and near-duplicate group."""
    train, _ = split_scenes(source)  # its validation part stays out of this door altogether
    return split_photos(train, UNSEEN_FRACTION, seed=DEFAULT_SEED + 1)  # the same seed would put none aside


def door_config(model: Path, state: Path, band: tuple[float, float], max_per_hour: int) -> config.Config:
    return config.parse({
        "classifier": {"model": str(model)}, "events": {"database": str(state / "events.db")},
        "collect": {"enabled": True, "band": list(band), "max_per_hour": max_per_hour, "max_files": 100000},
        "gpio": {"relay_pin": None, "buzzer_pin": None, "green_pin": None, "red_pin": None}})


def collect(cfg: config.Config, photos: list[str], still_frames: int = 3) -> dict:
    """The real service over the photos (each a visit of `still_frames` frames), collection on; its status."""
    from appliance.seeing.sources import ImageSource
    from appliance.service import Service

    service = Service(cfg)
    service.run(ImageSource([Path(p) for p in photos], still_frames=still_frames))
    return json.loads((Path(cfg.events.database).parent / "status.json").read_text())


def _key(crop_rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA).astype(
        np.float32)


def truth_of_crops(folder: Path, labels_csv: Path, photos: list[str], cfg: config.Config) -> dict[str, str | None]:
    """{crop file in folder's index.jsonl: the true label, or None (skip: no labelled face)}. The person's eyes:
    every photo is detected again as the service detected it, each detected box cut as the classifier cut it; a
    collected crop is the detected crop its pixels match, and its label is the labelled face that box overlaps."""
    by_image = read_scene_labels(labels_csv)
    detector = make_detector(cfg.detector)
    card = load_card(Path(cfg.classifier.model).with_suffix(".json"))
    keys, owners = [], []
    for photo in photos:
        image = read_bgr(Path(photo))
        if image is None:
            continue
        found = detector.detect(image)
        boxes = [f.box for f in found]
        crops = crop_faces(image, boxes, card.crop, card.input_size, [f.landmarks for f in found])
        for box, crop in zip(boxes, crops, strict=True):
            keys.append(_key(crop))
            owners.append((photo, box))
    bank = np.stack(keys)
    truth: dict[str, str | None] = {}
    for line in (folder / label.INDEX).read_text().splitlines():
        name = json.loads(line)["file"]
        crop = cv2.cvtColor(np.asarray(cv2.imread(str(folder / name))), cv2.COLOR_BGR2RGB)
        diffs = np.abs(bank - _key(crop)).mean(axis=(1, 2))
        best = int(diffs.argmin())
        truth[name] = None
        if diffs[best] <= MATCH_MAX_DIFF:
            photo, box = owners[best]
            faces = by_image.get(photo, [])
            overlaps = [(iou(box, f.box), f.label) for f in faces]
            if overlaps and max(overlaps)[0] >= MATCH_MIN_IOU:
                truth[name] = LABELS[max(overlaps)[1]]
    return truth


def labelled_door(collected: Path, truth: dict[str, str | None], n: int, out: Path) -> tuple[Path, int]:
    """A door folder with the crops a person got through to have n labelled ones (skips included), labelled
    through the page's own session; (its labels.csv, the number labelled)."""
    host = out / "door"
    host.mkdir(parents=True, exist_ok=True)
    lines = (collected / label.INDEX).read_text().splitlines()
    done, kept = 0, []
    for line in lines:
        if done >= n:
            break
        name = json.loads(line)["file"]
        shutil.copy(collected / name, host / name)
        kept.append(line)
        done += truth[name] is not None
    (host / label.INDEX).write_text("".join(f"{x}\n" for x in kept))
    session = label.Session(out)
    for item in session.items:
        session.decide(item["path"], truth[Path(item["path"]).name] or label.SKIP)
    return out / label.LABELS_FILE, done


def measure(model_path: Path, labels_csv: Path, photos: list[str]) -> dict:
    """The model alone, at its card's threshold, on every labelled face of the photos."""
    model = MaskClassifier(model_path)
    by_image = read_scene_labels(labels_csv)
    ys: list[int] = []
    ps: list[float] = []
    for photo in photos:
        image = read_bgr(Path(photo))
        faces = by_image.get(photo, [])
        if image is None or not faces:
            continue
        ps.extend(model.classify(image, [f.box for f in faces]))
        ys.extend(f.label for f in faces)
    r = report.rates(np.array(ps), np.array(ys), model.threshold)
    return {k: r[k] for k in ("n", "n_with_mask", "n_without_mask", "n_incorrect_mask", "threshold", "tnr", "fnr",
                              "incorrect_stopped")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="the door's model before (.tflite + card); must not "
                                                             "have been trained on --source")
    p.add_argument("--source", type=Path, required=True, help="the door: a labelled scene set's labels.csv")
    p.add_argument("--replay", type=Path, nargs="*", default=[], help="sources trained on again beside the door's")
    p.add_argument("--base-weights", required=True, help="ImageNet .h5 (only builds the network; see --init)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    p.add_argument("--band", type=float, nargs=2, default=(0.15, 0.85))
    p.add_argument("--max-per-hour", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--learning-rate", type=float, default=1e-4, help="of the fine-tunes (the curve was measured "
                                                                      "at 1e-4; mask-train's --init default is 3e-5)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
    if "scenes-dev" in str(args.source.resolve()):
        p.error("--source: scenes-dev is for the final check only")
    from training.cli import main as mask_train

    source = args.source.resolve()  # one spelling of every photo's path: the split's and the labels' keys agree
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    first, unseen = door_parts(source)
    state = out / "pi"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    cfg = door_config(args.base.resolve(), state, tuple(args.band), args.max_per_hour)
    started = time.monotonic()
    status = collect(cfg, first)
    collected = state / "collect"
    truth = truth_of_crops(collected, source, first, cfg)
    result: dict[str, Any] = {"base": str(args.base), "source": str(args.source), "first_photos": len(first),
              "unseen_photos": len(unseen), "collect": status.get("collect"), "collected": len(truth),
              "labelled_available": sum(v is not None for v in truth.values()),
              "collection_seconds": round(time.monotonic() - started, 1), "rows": []}
    log.info("collected %d crops on %d photos, %d of them labelled faces", len(truth), len(first),
             result["labelled_available"])
    base_scores = measure(args.base, source, unseen)
    for n in args.counts:
        row = {"count": n}
        if n == 0:
            row.update(model=str(args.base), unseen=base_scores, gate=None, seconds=0.0)
            result["rows"].append(row)
            continue
        labels_csv, done = labelled_door(collected, truth, n, out / f"labels-{n}")
        if done < n:
            log.warning("only %d labelled door crops for %d", done, n)
            row["short"] = done
        t0 = time.monotonic()
        run = out / f"model-{n}"
        rc = mask_train(["train", *map(str, args.replay), str(labels_csv), "--init", str(args.base), "--out",
                         str(run), "--base-weights", args.base_weights, "--epochs", str(args.epochs),
                         "--learning-rate", str(args.learning_rate),
                         "--threshold", str(load_card(args.base.with_suffix(".json")).threshold)])
        if rc != 0:
            row.update(error=f"mask-train train exited {rc}")
            result["rows"].append(row)
            continue
        model = run / "mask_classifier.tflite"
        gate_rc = mask_train(["gate", str(model), "--baseline", str(args.base), "--door-labels", str(labels_csv)])
        card = json.loads(model.with_suffix(".json").read_text())
        row.update(model=str(model), labelled=done, unseen=measure(model, source, unseen),
                   gate={"passed": gate_rc == 0, "reason": card["gate"]["reason"]},
                   door_weight=card["training"]["source_weights"].get(labels_csv.parent.name),
                   seconds=round(time.monotonic() - t0, 1))
        result["rows"].append(row)
        (out / "curve.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "curve.json").write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    return 0


def table(result: dict) -> str:
    lines = ["| labelled door crops | gate | TNR | FNR | incorrect masks stopped | faces (with/without/incorrect) |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "unseen" not in row:
            lines.append(f"| {row['count']} | {row.get('error')} | | | | |")
            continue
        u = row["unseen"]
        gate = "—" if row["gate"] is None else ("passed" if row["gate"]["passed"] else "refused")
        n = row.get("labelled", row["count"])
        lines.append(f"| {n} | {gate} | {u['tnr']:.3f} | {u['fnr']:.3f} | {u['incorrect_stopped']:.3f} | "
                     f"{u['n']} ({u['n_with_mask']} / {u['n_without_mask']} / {u['n_incorrect_mask']}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
