"""Detector recall, what the whole pipeline stops, and time, for several detector settings on one part of a labelled
scene set.

    python benchmarks/detector.py --scenes ../shared/datasets/scenes-ilc/labels.csv --part validation \
        --set photo_sides=480+480 --set photo_sides=640+1024 [--model M] [--detector-only] [--json OUT]

Each --set is a list of `[detector]` keys (appliance/config.py) applied on top of the defaults; a pair is written
`a+b`. The photos are detected as `mask-appliance detect` detects still photos (`photo_sides`: one or two looks,
appliance/seeing/detector.py), the camera frames as the door's loop detects frames (`max_side`). For each setting, over
the faces whose shorter side is at least --min-size px (32), it prints:
- detector recall at IoU > 0.5 and > 0.3, overall and by class;
- with the model (the config's unless --model; none with --detector-only), at IoU > 0.3 and the model's threshold:
  the share of ALL labelled unmasked faces the pipeline stops (a missed face is a face let through: the door's
  headline), of all incorrectly masked faces, and FNR, the share of found masked faces it stops;
- spare detections per photo (matched to no labelled face at IoU > 0.3; sets label only the prominent faces, so this
  overstates real false alarms) and how many of them the model flags as unmasked;
- the median detection time per photo, the median classification time per photo, and the median detection time on
  the photos shrunk to a Pi camera's detection stream (512x384, `[source] lores_size`) and detected as frames, on
  this machine.
Choose on the train or validation part of a set you train on, never on scenes-dev.
"""
# One benchmark script, kept in one file (longer than the 200-line guide) so that it can be read and run alone.

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LORES = (512, 384)  # [source] lores_size: what a Pi camera's frame loop detects on
BUCKETS = {0: "all", 32: ">=32px", 64: ">=64px"}  # training.evaluate.SIZE_BUCKETS, by their least size


def parse_set(text: str) -> dict:
    """`key=value,key=value` -> {key: value}, values as TOML reads them (else str); `a+b` as a pair of ints."""
    out: dict = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--set {text}: {item!r} is not key=value")
        if "+" in value:
            try:
                out[key.strip()] = tuple(int(v) for v in value.split("+"))
            except ValueError:
                raise SystemExit(f"--set {text}: {value!r} is not a pair of whole numbers a+b") from None
            continue
        try:  # a TOML value, as in a config file (true, 640, 0.5, "ssd"); else the bare word
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def detector_config(overrides: dict):
    """The default [detector] section with `overrides` applied, checked as a config file's would be (an unknown key,
    a wrong type or a value out of range is an error)."""
    from appliance import config as config_mod

    try:
        return config_mod.parse({"detector": overrides}, "--set").detector
    except config_mod.ConfigError as exc:
        raise SystemExit(str(exc)) from None


def _lores(image):
    import cv2

    from appliance.seeing.detector import shrunk

    s = min(LORES[0] / image.shape[1], LORES[1] / image.shape[0], 1.0)
    return image if s == 1.0 else cv2.resize(image, shrunk(image.shape, s), interpolation=cv2.INTER_LINEAR)


def sweep(labels_csv: Path, part: str, settings: list[dict], min_size: int = 32, model=None) -> list[dict]:
    """One row of figures per setting; `model` (a MaskClassifier) adds what the whole pipeline stops."""
    from appliance.seeing.card import LABELS
    from appliance.seeing.detector import make_detector
    from appliance.seeing.imaging import read_bgr
    from training.evaluate import LOOSE_IOU, match, read_scene_labels, scene_part, score_scenes

    labels = scene_part(read_scene_labels(labels_csv), labels_csv, part)
    read = {path: read_bgr(Path(path)) for path in labels}
    images = {path: image for path, image in read.items() if image is not None}
    small = {path: _lores(image) for path, image in images.items()}
    results = []
    for overrides in settings:
        cfg = detector_config(overrides)
        detector, frame_detector = make_detector(cfg, photos=True), make_detector(cfg)
        threshold = model.threshold if model is not None else 0.5
        detections, times, classify_times, lores_times = {}, [], [], []
        for path, image in images.items():
            t0 = time.perf_counter()
            faces = detector.detect(image)
            t1 = time.perf_counter()
            p = (model.classify(image, [f.box for f in faces], [f.landmarks for f in faces])
                 if model is not None and faces else [0.0] * len(faces))
            t2 = time.perf_counter()
            frame_detector.detect(small[path])
            lores_times.append(time.perf_counter() - t2)
            times.append(t1 - t0)
            classify_times.append(t2 - t1)
            detections[path] = [(f.box, float(x)) for f, x in zip(faces, p, strict=True)]
        truth = {path: labels[path] for path in images}
        row = {"set": overrides, "photos": len(images), "median_ms": statistics.median(times) * 1000,
               "lores_median_ms": statistics.median(lores_times) * 1000}
        for level in (0.5, LOOSE_IOU):
            big = score_scenes(truth, detections, threshold, min_iou=level)[BUCKETS[min_size]]
            hits = [(t.label, found is not None) for path, found_list in detections.items()
                    for t, found in zip(truth[path], match(truth[path], found_list, level), strict=True)
                    if t.size >= min_size]
            row[f"recall_iou{level}"] = sum(h for _, h in hits) / max(1, len(hits))
            for k, name in enumerate(LABELS):
                of = [h for lab, h in hits if lab == k]
                row[f"recall_iou{level}_{name}"] = sum(of) / len(of) if of else float("nan")
            row["faces"] = len(hits)
            if model is not None and level == LOOSE_IOU:
                row.update(threshold=threshold, unmasked_stopped_of_all=big["stopped_without_mask_of_all"],
                           incorrect_stopped_of_all=big["stopped_incorrect_mask_of_all"], fnr=big["fnr"],
                           tnr=big["tnr"])
        spare = spare_flagged = 0
        for path, found_list in detections.items():
            back = match([type(truth[path][0])(path, box, 0) for box, _ in found_list],
                         [(t.box, 1.0) for t in truth[path]], LOOSE_IOU) if truth[path] else [None] * len(found_list)
            for (_, p), hit in zip(found_list, back, strict=True):
                spare += hit is None
                spare_flagged += hit is None and model is not None and p >= threshold
        row["spare_per_photo"] = spare / max(1, len(images))
        row["spare_flagged_per_photo"] = spare_flagged / max(1, len(images))
        row["classify_median_ms"] = statistics.median(classify_times) * 1000
        results.append(row)
        print(format_row(row), flush=True)
    return results


def time_settings(labels_csv: Path, part: str, settings: list[dict], rounds: int = 3) -> list[dict]:
    """Detection CPU time (this process's, all its threads) per photo and per camera frame for each setting: CPU
    time, not wall time, because other work on a shared machine stretches wall time by up to 2x. Settings run in
    alternating rounds; each keeps the median of its fastest round. With --threads 1 it is also the latency."""
    from appliance.seeing.detector import make_detector
    from appliance.seeing.imaging import read_bgr
    from training.evaluate import read_scene_labels, scene_part

    paths = scene_part(read_scene_labels(labels_csv), labels_csv, part)
    images = [image for image in (read_bgr(Path(p)) for p in paths) if image is not None]
    frames = [_lores(image) for image in images]
    detectors = [(make_detector(detector_config(o), photos=True), make_detector(detector_config(o)))
                 for o in settings]
    best: list[dict] = [{"set": o, "photo_ms": float("inf"), "lores_ms": float("inf")} for o in settings]
    for _ in range(rounds):
        for (photo_detector, frame_detector), row in zip(detectors, best, strict=True):
            for key, detector, batch in (("photo_ms", photo_detector, images), ("lores_ms", frame_detector, frames)):
                times = []
                for image in batch:
                    t0 = time.process_time()
                    detector.detect(image)
                    times.append(time.process_time() - t0)
                row[key] = min(row[key], statistics.median(times) * 1000)
    for row in best:
        print(f"{json.dumps(row['set']):<44} CPU per photo {row['photo_ms']:.1f} ms, per {LORES[0]}x{LORES[1]} "
              f"frame {row['lores_ms']:.1f} ms", flush=True)
    return best


def format_row(row: dict) -> str:
    text = (f"{json.dumps(row['set']):<44} faces {row['faces']:>5}  IoU>0.5 {row['recall_iou0.5']:.3f}  "
            f"IoU>0.3 {row['recall_iou0.3']:.3f} (with {row['recall_iou0.3_with_mask']:.3f} without "
            f"{row['recall_iou0.3_without_mask']:.3f} incorrect {row['recall_iou0.3_incorrect_mask']:.3f})")
    if "unmasked_stopped_of_all" in row:
        text += (f"  stopped of all: unmasked {row['unmasked_stopped_of_all']:.3f} incorrect "
                 f"{row['incorrect_stopped_of_all']:.3f}  FNR {row['fnr']:.3f}")
    return text + (f"  spare/photo {row['spare_per_photo']:.2f} (flagged {row['spare_flagged_per_photo']:.2f})  "
                   f"detect {row['median_ms']:.1f} ms, classify {row['classify_median_ms']:.1f} ms, "
                   f"{LORES[0]}x{LORES[1]} detect {row['lores_median_ms']:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=Path, required=True, help="labels.csv of a scene set")
    parser.add_argument("--part", choices=["all", "train", "validation"], default="train")
    parser.add_argument("--set", action="append", default=[], help="[detector] overrides, key=value,key=value")
    parser.add_argument("--min-size", type=int, default=32, choices=sorted(BUCKETS))
    parser.add_argument("--model", type=Path, help="the .tflite model (default: the config's)")
    parser.add_argument("--detector-only", action="store_true", help="recall and time only, no classification")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads, and OpenCV's")
    parser.add_argument("--time-rounds", type=int, default=0,
                        help="only time detection, in this many alternating rounds (no recall)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(args.threads)
    settings = [parse_set(s) for s in args.set] or [{}]
    if args.time_rounds:
        results = time_settings(args.scenes, args.part, settings, args.time_rounds)
        if args.json:
            from training.report import save_json

            save_json(args.json, results)
        return 0
    model = None
    if not args.detector_only:
        from appliance import config as config_mod
        from appliance.seeing.classifier import load_model

        model = load_model(args.model or config_mod.parse({}, "<defaults>").classifier.model, args.threads)
    results = sweep(args.scenes, args.part, settings, args.min_size, model)
    if args.json:
        from training.report import save_json

        save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
