"""Score a model on face crops, and the whole pipeline on scenes with labelled face boxes.

Scene scoring follows published work: a detected face matches a labelled one when IoU > 0.5 (one to one, best
overlap first); we report detector recall, accuracy on matched faces, TNR (share of unmasked faces caught) and FNR
(share of masked faces wrongly flagged), for all faces and for faces whose shorter side is >= 32 and >= 64 px.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.card import LABELS
from appliance.imaging import read_bgr
from appliance.policy import iou
from training import report

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
SIZE_BUCKETS = (("all", 0), (">=32px", 32), (">=64px", 64))

# image (BGR) -> [(box, p_without_mask)]
ScenePredictor = Callable[[np.ndarray], list[tuple[tuple[float, float, float, float], float]]]


@dataclass
class LabelledFace:
    image: str
    box: tuple[float, float, float, float]
    label: int  # index into LABELS

    @property
    def size(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


def read_scene_labels(labels_csv: Path) -> dict[str, list[LabelledFace]]:
    """labels.csv (image_path,x1,y1,x2,y2,label; paths relative to its folder) grouped by image."""
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise FileNotFoundError(f"{labels_csv}: scene labels not found")
    by_image: dict[str, list[LabelledFace]] = defaultdict(list)
    with open(labels_csv, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
                label = LABELS.index(row["label"])
            except (KeyError, ValueError, TypeError):
                raise ValueError(f"{labels_csv}:{line}: bad row {row}") from None
            path = str(labels_csv.parent / row["image_path"])
            by_image[path].append(LabelledFace(path, box, label))  # type: ignore[arg-type]
    return dict(by_image)


def match(truth: list[LabelledFace], detections: list[tuple[tuple, float]]) -> list[float | None]:
    """For each labelled face, p(without_mask) of the detection matched to it (IoU > 0.5), else None."""
    pairs = sorted(((iou(t.box, d[0]), i, j) for i, t in enumerate(truth) for j, d in enumerate(detections)),
                   reverse=True)
    out: list[float | None] = [None] * len(truth)
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap <= MATCH_IOU:
            break
        if out[i] is None and j not in used:
            out[i] = detections[j][1]
            used.add(j)
    return out


Detections = dict[str, list[tuple[tuple[float, float, float, float], float]]]  # image path -> [(box, p)]


def detect_scenes(labels: dict[str, list[LabelledFace]], predict: ScenePredictor) -> tuple[Detections, list[str]]:
    """Run `predict` on every labelled image: (detections by image path, unreadable images skipped)."""
    detections: Detections = {}
    skipped = []
    for path in labels:
        image = read_bgr(Path(path))
        if image is None:
            skipped.append(path)
            log.warning("%s: unreadable image, skipped", path)
            continue
        detections[path] = predict(image)
    return detections, skipped


def score_scenes(labels: dict[str, list[LabelledFace]], detections: Detections, threshold: float,
                 skipped: list[str] = ()) -> dict:
    """Recall, accuracy, TNR and FNR by face size for detections of the labelled images (absent ones skipped)."""
    faces: list[LabelledFace] = []
    probs: list[float | None] = []
    for path, found in detections.items():
        faces.extend(labels[path])
        probs.extend(match(labels[path], found))
    result = {"images": len(detections), "skipped_images": list(skipped),
              "detections": sum(len(d) for d in detections.values())}
    for name, min_size in SIZE_BUCKETS:
        idx = [i for i, f in enumerate(faces) if f.size >= min_size]
        matched = [i for i in idx if probs[i] is not None]
        p = np.array([probs[i] for i in matched], dtype=float)
        y = np.array([faces[i].label for i in matched], dtype=int)
        r = report.rates(p, y, threshold)
        result[name] = {"faces": len(idx), "matched": len(matched), "recall": len(matched) / max(1, len(idx)),
                        "accuracy": r["accuracy"], "tnr": r["tnr"], "fnr": r["fnr"]}
    result["_matched"] = ([faces[i].label for i, p in enumerate(probs) if p is not None],
                          [p for p in probs if p is not None])
    return result


def label_crops(labels: dict[str, list[LabelledFace]], classify: Callable[[np.ndarray, list], np.ndarray]):
    """p(without_mask) for every labelled face, classified straight from its labelled box: (labels, probs)."""
    ys, ps = [], []
    for path, truth in labels.items():
        image = read_bgr(Path(path))
        if image is None:
            continue
        ps.extend(classify(image, [t.box for t in truth]))
        ys.extend(t.label for t in truth)
    return np.array(ys), np.array(ps, dtype=float)


def appliance_predictor(pipeline) -> ScenePredictor:
    from appliance.sources import Frame

    def predict(image):
        return [(r.face.box, r.p_without_mask) for r in pipeline.run(Frame(image, 0.0, 0))]

    return predict


def format_scenes(result: dict) -> str:
    lines = [f"{'faces':>10} {'n':>5} {'recall':>7} {'accuracy':>9} {'TNR':>6} {'FNR':>6}"]
    for name, _ in SIZE_BUCKETS:
        r = result[name]
        lines.append(f"{name:>10} {r['faces']:>5} {r['recall']:>7.3f} {r['accuracy']:>9.3f} {r['tnr']:>6.3f} "
                     f"{r['fnr']:>6.3f}")
    return "\n".join(lines)


def evaluate_cli(args) -> dict:
    from appliance import config as config_mod
    from appliance.detector import make_detector
    from appliance.pipeline import Pipeline
    from appliance.service import load_model
    from training.data import load_crops

    if not args.crops and not args.scenes:
        raise ValueError("give --crops and/or --scenes")
    model = load_model(args.model, 2)
    threshold = model.threshold
    results: dict = {"model": str(args.model), "sha256": model.sha256, "threshold": threshold}
    curves = {}
    if args.crops:
        crops = load_crops(args.crops, model.input_size)
        p = model.predict(crops.images)
        results["crops"] = {**report.crop_metrics(p, crops.labels, threshold), "skipped": crops.skipped}
        curves["crops"] = (p, crops.labels)
        print(f"crops ({len(crops)}, {len(crops.skipped)} skipped): accuracy {results['crops']['accuracy']:.4f} "
              f"TNR {results['crops']['tnr']:.4f} FNR {results['crops']['fnr']:.4f} "
              f"AUC {results['crops']['roc_auc']:.4f}")
        print(report.print_table(report.threshold_table(p, crops.labels)))
    if args.scenes:
        cfg = config_mod.load(args.config) if args.config else config_mod.parse(
            {"classifier": {"model": str(args.model)}}, "<defaults>")
        pipeline = Pipeline(make_detector(cfg.detector), model, cfg.classifier.threshold)
        labels = read_scene_labels(args.scenes)
        detections, skipped = detect_scenes(labels, appliance_predictor(pipeline))
        scenes = score_scenes(labels, detections, pipeline.threshold, skipped)
        y, p = scenes.pop("_matched")
        curves["scene faces (matched)"] = (np.array(p), np.array(y))
        scenes["thresholds"] = report.threshold_table(np.array(p), np.array(y))
        ly, lp = label_crops(labels, model.classify)
        scenes["label_crops"] = report.rates(lp, ly, pipeline.threshold)
        results["scenes"] = scenes
        print(f"scenes: {scenes['images']} images, {len(scenes['skipped_images'])} skipped, "
              f"detector {cfg.detector.kind} at <= {cfg.detector.max_side} px")
        print(format_scenes(scenes))
        print("matched scene faces by threshold:")
        print(report.print_table(scenes["thresholds"]))
        lc = scenes["label_crops"]
        print(f"labelled boxes classified directly: accuracy {lc['accuracy']:.3f} TNR {lc['tnr']:.3f} "
              f"FNR {lc['fnr']:.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report.save_json(args.out / "evaluation.json", results)
        report.plot_roc(curves, args.out / "roc.png")
    return results
