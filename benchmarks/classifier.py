"""The classifier alone: the float Keras model against the int8 TFLite model exported from it, on the same crops.

    python benchmarks/classifier.py --keras runs/shipped-128/model.keras \
        [--model models/mask_classifier.tflite] [--scenes ../shared/datasets/scenes-dev/labels.csv] [--rounds 3] \
        [--json > OUT]

Every labelled face in --scenes is cut from its labelled box as the appliance cuts it (the model card's square crop
and margin, at the card's input size). Each model then runs in its own process and classifies the crops one at a
time, as the appliance does: the float model through Keras (TensorFlow), the int8 model through LiteRT. Prints the
file size, load time, median and p90 time per crop, crops per second and peak memory (RSS) of each process, from the
fastest of --rounds alternating runs; accuracy, TNR, FNR and ROC AUC of each at the card's threshold; and how often
the two agree. The float model is the `model.keras` that `mask-train train` writes beside the .tflite it exports.
With --json, the figures are one JSON document on stdout and the tables go to stderr, as `--json` means in
`mask-appliance detect`.
"""

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
SCENES = REPO.parent / "shared" / "datasets" / "scenes-dev" / "labels.csv"


def label_face_crops(labels_csv: Path, card) -> tuple[np.ndarray, np.ndarray]:
    """RGB crops (N x S x S x 3 uint8) of every labelled face, and their label indices."""
    from appliance.seeing.classifier import crop_faces
    from training.evaluate import label_crops, read_scene_labels

    crops: list[np.ndarray] = []

    def keep(image, boxes):
        crops.extend(crop_faces(image, boxes, card.crop, card.input_size))
        return np.zeros(len(boxes))

    labels, _ = label_crops(read_scene_labels(labels_csv), keep)
    return np.stack(crops), labels


def _child(args) -> dict:
    from appliance.seeing.card import card_path_for, load_card

    card = load_card(card_path_for(args.model))
    crops, labels = label_face_crops(args.scenes, card)
    t0 = time.perf_counter()
    if args.child == "int8":
        from appliance.seeing.classifier import MaskClassifier

        classifier = MaskClassifier(args.model, args.threads, card)
        path, params = args.model, None

        def predict(crop):
            return classifier.predict(crop)[0]
    else:
        import keras
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        model = keras.models.load_model(args.keras, compile=False)
        from training.export import not_masked

        path, params = args.keras, model.count_params()

        def predict(crop):  # predict_on_batch: one compiled call per crop, no per-call dataset set-up
            return float(not_masked(np.asarray(model.predict_on_batch(crop.astype(np.float32))))[0])
    load_s = time.perf_counter() - t0
    predict(crops[:1])  # warm-up: graph tracing and first allocations are not per-crop costs
    times, probs = [], []
    for i in range(len(crops)):
        t = time.perf_counter()
        probs.append(float(predict(crops[i : i + 1])))
        times.append(time.perf_counter() - t)
    return {"model": str(path), "model_bytes": Path(path).stat().st_size, "params": params, "load_s": load_s,
            "times": times, "p": probs, "labels": labels.tolist(), "threshold": card.threshold,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog=cliparse.EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (on stderr)")
    parser.add_argument("--keras", type=Path, required=True, help="the float model (model.keras of a training run)")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "mask_classifier.tflite",
                        help="the int8 model exported from it, with its card beside it (default: the shipped one)")
    parser.add_argument("--scenes", type=Path, default=SCENES, help="labels.csv whose faces are classified")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each model, alternating; fastest kept")
    parser.add_argument("--threads", type=int, default=2, help="threads for each model (default 2)")
    parser.add_argument("--json", action="store_true", help=f"{cliparse.JSON_HELP}: the figures, as one document")
    parser.add_argument("--child", choices=["int8", "float"], help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cliparse.setup_logging(args.verbose)
    if args.child:
        print(json.dumps(_child(args)))
        return cliparse.OK
    return cliparse.run("classifier.py", lambda: compare(args))


def _run_child(name: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--keras", str(args.keras), "--model", str(args.model),
           "--scenes", str(args.scenes), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} model's run failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> int:
    for path in (args.keras, args.model, args.scenes):
        if not path.is_file():
            raise cliparse.BadInput(f"{path}: no such file")
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON document alone
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name in ("int8", "float"):
            raw = _run_child(name, args, env)
            raw["median_ms"] = statistics.median(raw["times"]) * 1000
            if name not in best or raw["median_ms"] < best[name]["median_ms"]:
                best[name] = raw
    from training import report

    print(f"{'model':<6} {'file MB':>8} {'load s':>7} {'crops':>6} {'median ms':>10} {'p90 ms':>7} {'crops/s':>8} "
          f"{'peak RSS MB':>12} {'accuracy':>9} {'TNR':>6} {'FNR':>6} {'ROC AUC':>8}", file=out)
    summary = {}
    for name, r in best.items():
        p, y = np.array(r["p"]), np.array(r["labels"])
        scores = {**report.rates(p, y, r["threshold"]), "roc_auc": report.crop_metrics(p, y, r["threshold"])["roc_auc"]}
        summary[name] = {"model": r["model"], "model_mb": r["model_bytes"] / 1e6, "load_s": r["load_s"],
                         "median_ms": r["median_ms"], "p90_ms": statistics.quantiles(r["times"], n=10)[8] * 1000,
                         "crops_per_s": len(r["times"]) / sum(r["times"]), "peak_rss_mb": r["peak_rss_mb"], **scores}
        s = summary[name]
        print(f"{name:<6} {s['model_mb']:>8.2f} {s['load_s']:>7.2f} {s['n']:>6} {s['median_ms']:>10.2f} "
              f"{s['p90_ms']:>7.2f} {s['crops_per_s']:>8.0f} {s['peak_rss_mb']:>12.0f} {s['accuracy']:>9.3f} "
              f"{s['tnr']:>6.3f} {s['fnr']:>6.3f} {s['roc_auc']:>8.4f}", file=out)
    p8, pf = np.array(best["int8"]["p"]), np.array(best["float"]["p"])
    t = best["int8"]["threshold"]
    gap = np.abs(p8 - pf)
    summary["agreement"] = {"labels": float(np.mean((p8 >= t) == (pf >= t))), "mean_abs_p": float(gap.mean()),
                            "max_abs_p": float(gap.max())}
    params = best["float"]["params"]
    summary["float"]["weights_mb"] = params * 4 / 1e6
    print(f"the float file holds {params / 1e6:.2f} M float32 parameters ({params * 4 / 1e6:.2f} MB) and whatever "
          "else Keras saved with them (the optimizer's state, for mask-train's model.keras)", file=out)
    a = summary["agreement"]
    print(f"int8 and float agree on {a['labels']:.2%} of the {len(p8)} crops at threshold {t}; "
          f"|p_int8 - p_float| mean {a['mean_abs_p']:.4f}, max {a['max_abs_p']:.4f}", file=out)
    print(f"int8 is {summary['float']['median_ms'] / summary['int8']['median_ms']:.1f}x faster per crop, "
          f"{summary['float']['model_mb'] / summary['int8']['model_mb']:.1f}x smaller on disk, and uses "
          f"{summary['int8']['peak_rss_mb'] / summary['float']['peak_rss_mb']:.2f} of the float process's peak memory",
          file=out)
    if args.json:
        print(json.dumps(summary, indent=2))
    return cliparse.OK


if __name__ == "__main__":
    sys.exit(main())
