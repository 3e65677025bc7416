"""Detector recall and time for several detector settings, on one part of a labelled scene set.

    python benchmarks/detector.py --scenes ../shared/datasets/scenes-ilc/labels.csv --part train \
        --set max_side=480,score_threshold=0.6 --set max_side=640,score_threshold=0.5 [--json OUT]

Each --set is a list of `[detector]` keys (appliance/config.py) applied on top of the defaults. For each, it prints
recall at IoU > 0.5 and > 0.3 for faces whose shorter side is at least --min-size px (32), overall and by class,
the false detections per photo (detections matched to no labelled face, at IoU > 0.3; sets label only the prominent
faces, so this overstates real false alarms) and the median detection time per photo. Choose on the train or
validation part of a set you train on, never on scenes-dev.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_set(text: str) -> dict:
    """`key=value,key=value` -> {key: value}, values as int, float or str."""
    out: dict = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--set {text}: {item!r} is not key=value")
        for cast in (int, float, str):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
    return out


def sweep(labels_csv: Path, part: str, settings: list[dict], min_size: float = 32) -> list[dict]:
    from appliance import config as config_mod
    from appliance.card import LABELS
    from appliance.detector import make_detector
    from appliance.imaging import read_bgr
    from training.evaluate import match, read_scene_labels, scene_part

    labels = scene_part(read_scene_labels(labels_csv), labels_csv, part)
    images = {path: read_bgr(Path(path)) for path in labels}
    results = []
    for overrides in settings:
        base = config_mod.parse({}, "<defaults>").detector
        try:
            cfg = replace(base, **overrides)
        except TypeError as exc:
            raise SystemExit(f"--set {overrides}: {exc}") from None
        detector = make_detector(cfg)
        times, hits, spare = [], {0.5: [], 0.3: []}, 0
        for path, truth in labels.items():
            image = images[path]
            if image is None:
                continue
            t0 = time.perf_counter()
            faces = detector.detect(image)
            times.append(time.perf_counter() - t0)
            dets = [(f.box, 1.0) for f in faces]
            for level in hits:
                found = match(truth, dets, level)
                hits[level].extend((t.label, t.size, p is not None) for t, p in zip(truth, found, strict=True))
            # detections that match no labelled face at the loose level
            inverse = match([type(truth[0])(path, f.box, 0) for f in faces], [(t.box, 1.0) for t in truth], 0.3)
            spare += sum(p is None for p in inverse)
        row = {"set": overrides, "photos": len(times), "median_ms": statistics.median(times) * 1000,
               "spare_per_photo": spare / max(1, len(times))}
        for level, rows in hits.items():
            big = [r for r in rows if r[1] >= min_size]
            row[f"recall_iou{level}"] = sum(r[2] for r in big) / max(1, len(big))
            for k, name in enumerate(LABELS):
                of = [r for r in big if r[0] == k]
                row[f"recall_iou{level}_{name}"] = sum(r[2] for r in of) / len(of) if of else float("nan")
            row["faces"] = len(big)
        results.append(row)
        print(f"{json.dumps(overrides):<50} faces {row['faces']:>5}  IoU>0.5 {row['recall_iou0.5']:.3f}  "
              f"IoU>0.3 {row['recall_iou0.3']:.3f} (with {row['recall_iou0.3_with_mask']:.3f} without "
              f"{row['recall_iou0.3_without_mask']:.3f} incorrect {row['recall_iou0.3_incorrect_mask']:.3f})  "
              f"spare/photo {row['spare_per_photo']:.2f}  {row['median_ms']:.1f} ms", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=Path, required=True, help="labels.csv of a scene set")
    parser.add_argument("--part", choices=["all", "train", "validation"], default="train")
    parser.add_argument("--set", action="append", default=[], help="[detector] overrides, key=value,key=value")
    parser.add_argument("--min-size", type=float, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = sweep(args.scenes, args.part, [parse_set(s) for s in args.set] or [{}], args.min_size)
    if args.json:
        from training.report import save_json

        save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
