"""Models on the crops the door cuts: each labelled face cut from its labelled box and from the detector's box.

    python benchmarks/boxes.py ../shared/datasets/scenes-ilc/labels.csv --part validation \
        models/mask_classifier.tflite runs/r9/mask_classifier.tflite [--min-size 32] [--json]

A set's labelled boxes follow its labellers' convention (scenes-ilc: brow to chin; scenes-dev: wider than the face),
but the door classifies the box the detector gives, grown by [detector] expand_*. Each labelled face that the
detector (still-photo looks, the defaults) finds (IoU > 0.3) is classified twice by each model: from its labelled
box, and as the door classifies the detected face (its box, or its landmarks for a model whose card aligns crops).
Prints per model and box: ROC AUC (not properly masked against with_mask), the rates at the card's threshold, the
threshold the training rule would pick on these faces, and TNR and incorrect masks stopped at the lowest threshold
that flags at most 1%, 2% and 3% of the masked faces, which compares models at the same cost to masked visitors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def scores(labels_csv: Path, part: str, models: list, min_size: float) -> dict:
    """{'labels': N, 'labelled': [model][N], 'detected': [model][N]} of p(not properly masked), faces >= min_size."""
    from appliance.boxes import pair
    from appliance.config import DetectorConfig
    from appliance.seeing.detector import make_detector
    from appliance.seeing.imaging import read_bgr
    from training.data import DETECTED_IOU, read_scene_labels
    from training.evaluate import scene_part

    detector = make_detector(DetectorConfig(), photos=True)
    ys: list[int] = []
    p: dict[str, list[list[float]]] = {"labelled": [[] for _ in models], "detected": [[] for _ in models]}
    for path, truth in scene_part(read_scene_labels(labels_csv), labels_csv, part).items():
        image = read_bgr(Path(path))
        if image is None:
            continue
        found = detector.detect(image)
        paired = pair([t.box for t in truth], [f.box for f in found], DETECTED_IOU)
        keep = [(i, j) for i, j in enumerate(paired) if j is not None and truth[i].size >= min_size]
        if not keep:
            continue
        labelled = [truth[i].box for i, _ in keep]
        faces = [found[j] for _, j in keep]
        for k, model in enumerate(models):
            p["labelled"][k].extend(model.classify(image, labelled))
            # with its landmarks, as the door classifies a face: an aligned model (card crop.align) uses them
            p["detected"][k].extend(model.classify(image, [f.box for f in faces], [f.landmarks for f in faces]))
        ys.extend(truth[i].label for i, _ in keep)
    return {"labels": np.array(ys), **{k: np.array(v) for k, v in p.items()}}


def figures(p: np.ndarray, ys: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    from training import report

    masked = ys == report.MASKED
    out = {"roc_auc": float(roc_auc_score(~masked, p)), "at_card": report.rates(p, ys, threshold),
           "rule": report.choose_threshold(p, ys)}
    for cost in (0.01, 0.02, 0.03):
        t = min(t for t in np.round(np.arange(0.01, 1.0, 0.01), 2) if (p[masked] >= t).mean() <= cost)
        out[f"fnr<={cost}"] = report.rates(p, ys, t)
    return out


def main(argv: list[str] | None = None) -> int:
    from appliance.seeing.classifier import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--part", choices=("all", "train", "validation"), default="validation")
    parser.add_argument("--min-size", type=float, default=32.0, help="faces at least this many px (default 32)")
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    args = parser.parse_args(argv)
    models = [load_model(m, 2) for m in args.models]
    s = scores(args.labels, args.part, models, args.min_size)
    out = {str(path): {box: figures(s[box][k], s["labels"], model.threshold) for box in ("labelled", "detected")}
           for k, (path, model) in enumerate(zip(args.models, models, strict=True))}
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        return 0
    print(f"{args.labels} ({args.part}): {len(s['labels'])} faces >= {args.min_size:g} px found by the detector")
    for path, by_box in out.items():
        for box, f in by_box.items():
            rows = [("card", f["at_card"]), ("rule", f["rule"])]
            rows += [(f"FNR<={cost}", f[f"fnr<={cost}"]) for cost in (0.01, 0.02, 0.03)]
            print(f"{path} {box}: AUC {f['roc_auc']:.4f}")
            for name, r in rows:
                print(f"    {name} {r['threshold']:g}: TNR {r['tnr']:.3f} FNR {r['fnr']:.3f} "
                      f"incorrect {r['incorrect_stopped']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
