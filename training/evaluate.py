"""Score a model on face crops, and the whole pipeline on scenes with labelled face boxes.

Scene scoring follows published work: a detected face matches a labelled one when IoU > 0.5 (one to one, best
overlap first); we report detector recall, accuracy on matched faces, TNR (share of unmasked faces caught) and FNR
(share of masked faces wrongly flagged), for all faces and for faces whose shorter side is >= 32 and >= 64 px.

Longer than this project's 200-line guide: matching, scoring and printing are one evaluation report; split, the
report would be scattered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.boxes import pair
from appliance.seeing.card import LABELS
from appliance.seeing.imaging import read_bgr
from training import report
from training.data import LabelledFace, load_crops, read_scene_labels

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
LOOSE_IOU = 0.3  # boxes drawn by several people vary in tightness: a looser match separates that from misses
SIZE_BUCKETS = (("all", 0), (">=32px", 32), (">=64px", 64))
RECALL_SIZES = (("<32px", 0, 32), ("32-63px", 32, 64), ("64-127px", 64, 128), (">=128px", 128, float("inf")))

# image (BGR) -> [(box, p_without_mask)]
ScenePredictor = Callable[[np.ndarray], list[tuple[tuple[float, float, float, float], float]]]


def match(truth: list[LabelledFace], detections: list[tuple[tuple, float]],
          min_iou: float = MATCH_IOU) -> list[float | None]:
    """For each labelled face, p of the detection matched to it (IoU > min_iou, one to one, best overlap first),
    else None."""
    paired = pair([t.box for t in truth], [d[0] for d in detections], min_iou)
    return [None if j is None else detections[j][1] for j in paired]


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


def _bucket_scores(faces: list[LabelledFace], probs: list[float | None], idx: list[int], threshold: float) -> dict:
    matched = [i for i in idx if probs[i] is not None]
    p = np.array([probs[i] for i in matched], dtype=float)
    y = np.array([faces[i].label for i in matched], dtype=int)
    r = report.rates(p, y, threshold)
    out = {"faces": len(idx), "matched": len(matched), "recall": len(matched) / max(1, len(idx)),
           "accuracy": r["accuracy"], "tnr": r["tnr"], "fnr": r["fnr"], "incorrect_stopped": r["incorrect_stopped"]}
    # The door's headline: of ALL labelled faces of a class (found or not), the share the pipeline stops.
    for k, name in enumerate(LABELS):
        of_class = [i for i in idx if faces[i].label == k]
        out[f"recall_{name}"] = (sum(probs[i] is not None for i in of_class) / len(of_class)
                                 if of_class else float("nan"))
        if name != "with_mask":
            stopped = sum((p_i := probs[i]) is not None and p_i >= threshold for i in of_class)
            out[f"stopped_{name}_of_all"] = stopped / len(of_class) if of_class else float("nan")
    return out


def score_scenes(labels: dict[str, list[LabelledFace]], detections: Detections, threshold: float,
                 skipped: Sequence[str] = (), min_iou: float = MATCH_IOU) -> dict:
    """Recall, accuracy, TNR, FNR, incorrect masks stopped and the share of all unmasked faces stopped, by face
    size, for detections of the labelled images (absent ones skipped), matched at IoU > min_iou; and detector
    recall by face size and class."""
    faces: list[LabelledFace] = []
    probs: list[float | None] = []
    for path, found in detections.items():
        faces.extend(labels[path])
        probs.extend(match(labels[path], found, min_iou))
    result: dict[str, Any] = {"images": len(detections), "skipped_images": list(skipped), "min_iou": min_iou,
              "detections": sum(len(d) for d in detections.values())}
    for name, min_size in SIZE_BUCKETS:
        result[name] = _bucket_scores(faces, probs, [i for i, f in enumerate(faces) if f.size >= min_size],
                                      threshold)
    result["recall_by_size"] = {}
    for name, lo, hi in RECALL_SIZES:
        idx = [i for i, f in enumerate(faces) if lo <= f.size < hi]
        by_class = {LABELS[k]: _recall([i for i in idx if faces[i].label == k], probs) for k in range(len(LABELS))}
        result["recall_by_size"][name] = {"all": _recall(idx, probs), **by_class}
    result["_matched"] = ([faces[i].label for i, p in enumerate(probs) if p is not None],
                          [p for p in probs if p is not None])
    return result


def _recall(idx: list[int], probs: list[float | None]) -> dict:
    return {"faces": len(idx), "recall": sum(probs[i] is not None for i in idx) / len(idx) if idx else float("nan")}


def label_crops(labels: dict[str, list[LabelledFace]], classify: Callable[[np.ndarray, list], np.ndarray],
                with_sizes: bool = False):
    """What `classify` gives for every labelled face, cut straight from its labelled box: (labels, outputs), and
    with `with_sizes` also each face's shorter side."""
    ys: list[int] = []
    ps: list[Any] = []
    sizes: list[float] = []
    for path, truth in labels.items():
        image = read_bgr(Path(path))
        if image is None:
            continue
        ps.extend(classify(image, [t.box for t in truth]))
        ys.extend(t.label for t in truth)
        sizes.extend(t.size for t in truth)
    out = (np.array(ys), np.asarray(ps, dtype=np.float64))
    return (*out, np.asarray(sizes, dtype=np.float64)) if with_sizes else out


def scene_part(labels: dict[str, list[LabelledFace]], labels_csv: Path, part: str) -> dict[str, list[LabelledFace]]:
    """The labelled images of one part (train or validation) of the set's by-photo split, or all of them."""
    if part == "all":
        return labels
    from training.splits import split_scenes

    train, val = split_scenes(labels_csv)
    keep = set(val if part == "validation" else train)
    return {k: v for k, v in labels.items() if k in keep}


def labelled_box_scores(model, labels: dict[str, list[LabelledFace]], threshold: float) -> dict:
    """The classifier alone on every labelled box (cut as the appliance cuts a detected box), by face size:
    door rates at `threshold`, per-class report (most likely class) and the table by threshold; and
    `threshold_choice`, the threshold the training run's rule (report.choose_threshold, on every face, as
    training/train.py chooses it on the first scene source's validation part) picks on these faces, so that a
    shipped model's threshold can be checked again when labels are corrected, without retraining."""
    ys, probs, sizes = label_crops(labels, model.classify_all, with_sizes=True)
    probs = probs.reshape(len(ys), model.n_classes)
    p = model.not_masked(probs)
    out: dict[str, Any] = {"threshold_choice": report.choose_threshold(p, ys)}
    for name, min_size in SIZE_BUCKETS:
        keep = sizes >= min_size
        m = report.crop_metrics(p[keep], ys[keep], threshold, probs[keep], model.labels)
        out[name] = {**{k: m[k] for k in ("accuracy", "tnr", "fnr", "incorrect_stopped", "roc_auc", "n",
                                          "confusion", "confusion_labels")},
                     "per_class": {k: v for k, v in m["report"].items() if k in LABELS}}
        out[name]["thresholds"] = report.threshold_table(p[keep], ys[keep])
    out["_curve"] = (p, ys)
    return out


def appliance_predictor(pipeline) -> ScenePredictor:
    from appliance.seeing.sources import Frame

    def predict(image):
        return [(r.face.box, r.p_without_mask) for r in pipeline.run(Frame(image, 0.0, 0))]

    return predict


def _f(v: float) -> str:
    return "   -  " if v != v else f"{v:6.3f}"


def format_scenes(result: dict, loose: dict | None = None) -> str:
    """One row per face size: recall, then rates on matched faces, then the share of all unmasked faces stopped;
    with `loose` (the same detections scored at a looser IoU) its recall and stopped share beside them."""
    rates = f"{'TNR':>6} {'FNR':>6} {'incorr':>6} {'stopped':>7}"
    head = f"{'faces':>10} {'n':>5} {'recall':>7} {'accuracy':>9} {rates}"
    if loose:
        head += f" | {'IoU>' + str(loose['min_iou']):>7}: {'recall':>6} {rates}"
    lines = [f"IoU > {result.get('min_iou', MATCH_IOU)}; stopped: unmasked faces stopped among all unmasked faces",
             head]
    for name, _ in SIZE_BUCKETS:
        r = result[name]
        nan = float("nan")
        line = (f"{name:>10} {r['faces']:>5} {r['recall']:>7.3f} {r['accuracy']:>9.3f} {_f(r['tnr'])} {_f(r['fnr'])} "
                f"{_f(r.get('incorrect_stopped', nan))} {_f(r.get('stopped_without_mask_of_all', nan)):>7}")
        if loose:
            q = loose[name]
            line += (f" | {'':>7}  {q['recall']:>6.3f} {_f(q['tnr'])} {_f(q['fnr'])} {_f(q['incorrect_stopped'])} "
                     f"{_f(q['stopped_without_mask_of_all']):>7}")
        lines.append(line)
    return "\n".join(lines)


def format_recall(result: dict, loose: dict | None = None) -> str:
    """Detector recall by face size and class, at the strict IoU (and the loose one beside it)."""
    names = ("all", *LABELS)
    lines = [f"detector recall by face size and class, IoU > {result['min_iou']}"
             + (f" / IoU > {loose['min_iou']}" if loose else ""),
             f"{'size':>9} " + " ".join(f"{n:>22}" for n in names)]
    for size, row in result["recall_by_size"].items():
        cells = []
        for n in names:
            r = row[n]
            cell = f"{_f(r['recall']).strip()}" + (f"/{_f(loose['recall_by_size'][size][n]['recall']).strip()}"
                                                   if loose else "")
            cells.append(f"{cell} ({r['faces']})".rjust(22))
        lines.append(f"{size:>9} " + " ".join(cells))
    return "\n".join(lines)


def evaluate(model_path: Path, crops: Path | None = None, scenes: Path | None = None, part: str = "all",
             threshold: float | None = None, labelled_boxes: bool = True, config: Path | None = None,
             out: Path | None = None) -> dict:
    """Score the model at `model_path` on a crop folder and/or a scene set (its `part` of the by-photo split), at
    `threshold` (unset: `[classifier] threshold` of `config`, else the card's); print the tables, write
    evaluation.json and roc.png into `out`, and return the results."""
    from appliance import config as config_mod
    from appliance.seeing.classifier import load_model
    from appliance.seeing.pipeline import Pipeline

    if not crops and not scenes:
        raise ValueError("give --crops and/or --scenes")
    model = load_model(model_path, 2)
    chosen = threshold
    threshold = threshold if threshold is not None else model.threshold
    results: dict = {"model": str(model_path), "sha256": model.sha256, "labels": list(model.labels),
                     "threshold": threshold}
    curves = {}
    if crops:
        crop_set = load_crops(crops, model.input_size)
        probs = model.predict_all(crop_set.images)
        p = model.not_masked(probs)
        results["crops"] = {**report.crop_metrics(p, crop_set.labels, threshold, probs, model.labels),
                            "skipped": crop_set.skipped}
        curves["crops"] = (p, crop_set.labels)
        print(f"crops ({len(crop_set)}, {len(crop_set.skipped)} skipped): accuracy {results['crops']['accuracy']:.4f} "
              f"TNR {results['crops']['tnr']:.4f} FNR {results['crops']['fnr']:.4f} "
              f"AUC {results['crops']['roc_auc']:.4f}")
        print(report.print_table(report.threshold_table(p, crop_set.labels)))
    if scenes:
        cfg = config_mod.load(config) if config else config_mod.parse(
            {"classifier": {"model": str(model_path)}}, "<defaults>")
        if chosen is None and cfg.classifier.threshold is not None:
            threshold = results["threshold"] = cfg.classifier.threshold
        pipeline = Pipeline.from_config(cfg, model, photos=True)  # what `detect` gives
        pipeline.threshold_override = threshold
        labels = scene_part(read_scene_labels(scenes), scenes, part)
        detections, skipped = detect_scenes(labels, appliance_predictor(pipeline))
        result = score_scenes(labels, detections, threshold, skipped)
        loose = score_scenes(labels, detections, threshold, skipped, min_iou=LOOSE_IOU)
        loose.pop("_matched")
        y, p = result.pop("_matched")
        curves["scene faces (matched)"] = (np.array(p), np.array(y))
        result["part"] = part
        result["iou_0.3"] = loose
        result["thresholds"] = report.threshold_table(np.array(p), np.array(y))
        print(f"scenes ({part}): {result['images']} images, {len(result['skipped_images'])} skipped, "
              f"detector {cfg.detector.kind} at <= {'+'.join(map(str, cfg.detector.photo_sides))} px, "
              f"threshold {threshold}")
        print(format_scenes(result, loose))
        print(format_recall(result, loose))
        print("matched scene faces (IoU > 0.5) by threshold:")
        print(report.print_table(result["thresholds"]))
        if labelled_boxes:
            boxes = labelled_box_scores(model, labels, threshold)
            curves["labelled boxes"] = boxes.pop("_curve")
            result["label_crops"] = boxes
            c = boxes["threshold_choice"]
            print(f"the training run's threshold rule on these labelled boxes ({c['rule']}): {c['threshold']:g} "
                  f"(TNR {c['tnr']:.3f}, FNR {c['fnr']:.3f}, incorrect stopped {_f(c['incorrect_stopped']).strip()}, "
                  f"{c['n']} faces); scored here at {threshold:g}")
            print("labelled boxes classified directly (classifier alone):")
            for name, _ in SIZE_BUCKETS:
                b = boxes[name]
                per = " ".join(f"{k} F1 {v['f1-score']:.3f}" for k, v in b["per_class"].items())
                print(f"  {name:>7} n {b['n']:>5}: accuracy {b['accuracy']:.3f} TNR {b['tnr']:.3f} "
                      f"FNR {b['fnr']:.3f} incorrect stopped {_f(b['incorrect_stopped']).strip()}  ({per})")
            print("labelled boxes >=32px by threshold:")
            print(report.print_table(boxes[">=32px"]["thresholds"]))
        results["scenes"] = result
    if out:
        out.mkdir(parents=True, exist_ok=True)
        report.save_json(out / "evaluation.json", results)
        report.plot_roc(curves, out / "roc.png")
    return results
