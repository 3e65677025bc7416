"""This project's pipeline against the classic tutorial one, on the same frames, each in its own process.

    python benchmarks/compare.py --source ../shared/datasets/scenes-dev/images \
        [--scenes ../shared/datasets/scenes-dev/labels.csv] [--rounds 3] [--limit N] [--model M] [--json > OUT]

Prints per-stage time (capture, detect, classify, decide), per-frame median and p90, frames per second and peak
memory (RSS) of each process, from the fastest of --rounds alternating runs of each; with --scenes, also the
accuracy of each pipeline on the very frames it was timed on (scored as `mask-train evaluate` scores: IoU > 0.5,
recall, accuracy, TNR, FNR by face size). With --json, the figures are one JSON document on stdout and the tables go
to stderr, as `--json` means in `mask-appliance detect`.

The classic pipeline is the one ../shared/peers/README.md describes: the res10 SSD at confidence 0.5, every box
cropped, resized to 224x224 and classified with the Keras model's predict, one call per frame.
It needs the [train] extras (TensorFlow and tf-keras); ours needs only the runtime.
"""
# One benchmark script, kept in one file (longer than the 200-line guide) so that it can be read and run alone.

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from appliance import cliparse

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "peers" / "classic-keras-mask-detector" / "mask_detector.h5"
STAGES = ("capture", "detect", "classify", "decide")


def _files(source: str, limit: int | None) -> list[Path]:
    from appliance.seeing.sources import image_files

    files = image_files(source)
    return files[:limit] if limit else files


def run_ours(files: list[Path], threads: int, model_path: Path | None = None) -> dict:
    from appliance import config
    from appliance.deciding.policy import Policy, Verdict
    from appliance.seeing.classifier import load_model
    from appliance.seeing.imaging import read_bgr
    from appliance.seeing.pipeline import Pipeline, label_of

    cfg = config.parse({"classifier": {"model": str(model_path)}} if model_path else {}, "<defaults>")
    # The appliance's own pipeline, [classifier] threshold included; its stages are timed one by one below.
    pipeline = Pipeline.from_config(cfg, load_model(cfg.classifier.model, threads))
    detector, model = pipeline.detector, pipeline.classifier
    policy = Policy(cfg.policy, pipeline.threshold)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    faces, detections = 0, {}
    for i, path in enumerate(files):
        t0 = time.perf_counter()
        image = read_bgr(path)
        t1 = time.perf_counter()
        if image is None:
            raise ValueError(f"{path}: unreadable image")
        found = detector.detect(image)
        t2 = time.perf_counter()
        probs = model.classify_all(image, [f.box for f in found], [f.landmarks for f in found])
        p = model.not_masked(probs)
        t3 = time.perf_counter()
        incorrect = model.card.incorrect_index  # the appliance's labels and p_incorrect_mask, as Pipeline gives them
        policy.update([Verdict(f.box, float(x), label_of(row, model.labels, float(x), pipeline.threshold),
                               None if incorrect is None else float(row[incorrect]))
                       for f, x, row in zip(found, p, probs, strict=True)], i)
        t4 = time.perf_counter()
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[stage].append(dt)
        faces += len(found)
        detections[str(path)] = [(f.box, float(x)) for f, x in zip(found, p, strict=True)]
    return {"times": times, "faces": faces, "detections": detections, "threshold": model.threshold,
            "model_bytes": cfg.classifier.model.stat().st_size, "classify_boxes": model.classify}


def run_classic(files: list[Path], threads: int, model_path: Path | None = None) -> dict:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import cv2
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from tf_keras.applications.mobilenet_v2 import preprocess_input

    from appliance.seeing.detector import read_ssd

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    net = read_ssd()  # the same res10 SSD, refused in one line on OpenCV 5
    model = tf_keras.models.load_model(PEER, compile=False)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    faces, detections = 0, {}
    for path in files:
        t0 = time.perf_counter()
        image = cv2.imread(str(path))
        t1 = time.perf_counter()
        if image is None:
            raise ValueError(f"{path}: unreadable image")
        h, w = image.shape[:2]
        net.setInput(cv2.dnn.blobFromImage(image, 1.0, (300, 300), (104.0, 177.0, 123.0)))
        found = net.forward().reshape(-1, 7)
        crops, boxes = [], []
        for det in found[found[:, 2] > 0.5]:
            x1, y1, x2, y2 = (det[3:7] * [w, h, w, h]).astype(int)
            x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w - 1, x2), min(h - 1, y2)
            if x2 > x1 and y2 > y1:
                crop = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2RGB)
                crops.append(preprocess_input(cv2.resize(crop, (224, 224)).astype("float32")))
                boxes.append((float(x1), float(y1), float(x2), float(y2)))
        t2 = time.perf_counter()
        # output index 0 = with_mask, 1 = without_mask
        p = model.predict(np.array(crops), batch_size=32, verbose=0)[:, 1] if crops else []
        t3 = time.perf_counter()
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, 0.0), strict=True):
            times[stage].append(dt)
        faces += len(crops)
        detections[str(path)] = [(b, float(x)) for b, x in zip(boxes, p, strict=True)]

    def classify_boxes(image, boxes):  # the classic crop: the box as it is, stretched to 224x224
        h, w = image.shape[:2]
        crops = []
        for x1, y1, x2, y2 in boxes:
            x1, y1, x2, y2 = max(0, int(x1)), max(0, int(y1)), min(w - 1, int(x2)), min(h - 1, int(y2))
            crop = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2RGB)
            crops.append(preprocess_input(cv2.resize(crop, (224, 224)).astype("float32")))
        return model.predict(np.array(crops), batch_size=32, verbose=0)[:, 1]

    return {"times": times, "faces": faces, "detections": detections, "threshold": 0.5,
            "model_bytes": PEER.stat().st_size, "classify_boxes": classify_boxes}


def _child(args) -> None:
    files = _files(args.source, args.limit)
    runner = run_ours if args.child == "ours" else run_classic
    result = runner(files, args.threads, args.model)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the label crops
    result["frames"] = len(files)
    classify_boxes = result.pop("classify_boxes")
    if args.scenes:
        # The classifier alone, on every labelled face cut from its labelled box (after the timed run).
        from training.evaluate import label_crops, read_scene_labels

        ys, ps = label_crops(read_scene_labels(args.scenes), classify_boxes)
        result["label_crops"] = {"labels": ys.tolist(), "p": ps.tolist()}
    print(json.dumps(result))


def _summary(result: dict) -> dict:
    per_frame = [sum(parts) for parts in zip(*(result["times"][s] for s in STAGES), strict=True)]
    qs = statistics.quantiles(per_frame, n=10)
    return {
        "frames": result["frames"],
        "faces": result["faces"],
        "median_ms": statistics.median(per_frame) * 1000,
        "p90_ms": qs[8] * 1000,
        "fps": len(per_frame) / sum(per_frame),
        "stages_ms": {s: statistics.mean(result["times"][s]) * 1000 for s in STAGES},
        "peak_rss_mb": result["peak_rss_mb"],
        "model_mb": result["model_bytes"] / 1e6,
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog=cliparse.EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (on stderr)")
    parser.add_argument("--source", required=True, help="folder or glob of images")
    parser.add_argument("--scenes", type=Path, help="labels.csv of the frames, to score each pipeline's accuracy")
    parser.add_argument("--limit", type=int, help="first N images only")
    parser.add_argument("--model", type=Path, help="our .tflite model (default: the shipped one)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each pipeline, alternating; each pipeline's fastest (by median) is kept, so that "
                             "a burst of noise on a shared machine hits neither alone (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="threads for each pipeline's classifier")
    parser.add_argument("--json", action="store_true", help=f"{cliparse.JSON_HELP}: the figures, as one document")
    parser.add_argument("--plots", type=Path, help="folder for roc.png (label crops) and frame_time.png")
    parser.add_argument("--child", choices=["ours", "classic"], help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cliparse.setup_logging(args.verbose)
    if args.child:
        _child(args)
        return cliparse.OK
    return cliparse.run("compare.py", lambda: compare(args))


def _run_child(name: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--source", args.source, "--threads", str(args.threads)]
    if args.scenes:
        cmd += ["--scenes", str(args.scenes)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.model:
        cmd += ["--model", str(args.model)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} pipeline failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> int:
    for path in (args.scenes, args.model):
        if path is not None and not path.is_file():
            raise cliparse.BadInput(f"{path}: no such file")
    if not _files(args.source, args.limit):
        raise cliparse.BadInput(f"{args.source}: no images")
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON document alone
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    results: dict[str, dict] = {}
    accuracy: dict[str, dict] = {}
    crops: dict[str, tuple] = {}
    for _ in range(args.rounds):
        for name in ("ours", "classic"):
            raw = _run_child(name, args, env)
            summary = _summary(raw)
            if name not in results or summary["median_ms"] < results[name]["median_ms"]:
                results[name] = summary
            if args.scenes and name not in accuracy:  # the same frames give the same answers every round
                accuracy[name] = _score(args.scenes, raw)
                crops[name] = (np.array(raw["label_crops"]["p"]), np.array(raw["label_crops"]["labels"]),
                               raw["threshold"])
    print(f"{'pipeline':<10} {'frames':>6} {'faces':>6} {'median ms':>10} {'p90 ms':>8} {'fps':>7} "
          f"{'capture':>8} {'detect':>7} {'classify':>9} {'decide':>7} {'peak RSS MB':>12} {'model MB':>9}", file=out)
    for name, r in results.items():
        s = r["stages_ms"]
        print(f"{name:<10} {r['frames']:>6} {r['faces']:>6} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} "
              f"{r['fps']:>7.1f} {s['capture']:>8.1f} {s['detect']:>7.1f} {s['classify']:>9.1f} {s['decide']:>7.2f} "
              f"{r['peak_rss_mb']:>12.0f} {r['model_mb']:>9.2f}", file=out)
    ours, classic = results["ours"], results["classic"]
    print(f"ours is {classic['median_ms'] / ours['median_ms']:.1f}x faster per frame (median) and uses "
          f"{ours['peak_rss_mb'] / classic['peak_rss_mb']:.2f} of the classic pipeline's peak memory", file=out)
    if accuracy:
        from training.evaluate import format_scenes

        for name, scores in accuracy.items():
            print(f"\n{name}: accuracy on {scores['images']} scenes ({scores['detections']} faces found)", file=out)
            print(format_scenes(scores), file=out)
        for name in results:
            results[name]["scenes"] = accuracy.get(name)
        from training import report

        print(file=out)
        for name, (p, y, threshold) in crops.items():
            r = {**report.rates(p, y, threshold), "roc_auc": report.crop_metrics(p, y, threshold)["roc_auc"]}
            results[name]["label_crops"] = r
            print(f"{name}: classifier alone on {r['n']} labelled boxes: accuracy {r['accuracy']:.3f} "
                  f"TNR {r['tnr']:.3f} FNR {r['fnr']:.3f} ROC AUC {r['roc_auc']:.4f}", file=out)
    if args.plots:
        _plots(args.plots, results, crops)
    if args.json:
        print(json.dumps(results, indent=2))
    return cliparse.OK


def _plots(folder: Path, results: dict, crops: dict) -> None:
    from training import report

    folder.mkdir(parents=True, exist_ok=True)
    if crops:
        report.plot_roc({name: (p, y) for name, (p, y, _) in crops.items()}, folder / "roc.png")
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    left = np.zeros(len(results))
    for stage in STAGES:
        values = np.array([r["stages_ms"][stage] for r in results.values()])
        ax.barh(list(results), values, left=left, label=stage)
        left += values
    ax.set_xlabel("mean ms per frame")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "frame_time.png", dpi=100)
    plt.close(fig)


def _score(labels_csv: Path, raw: dict) -> dict:
    from training.evaluate import read_scene_labels, score_scenes

    labels = read_scene_labels(labels_csv)
    by_name = {Path(k).name: k for k in labels}
    detections = {by_name[Path(path).name]: [(tuple(box), p) for box, p in found]
                  for path, found in raw["detections"].items() if Path(path).name in by_name}
    scores = score_scenes(labels, detections, raw["threshold"])
    scores.pop("_matched")
    return scores


if __name__ == "__main__":
    sys.exit(main())
