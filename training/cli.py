"""`mask-train`: argument parsing only; the work is in training.train, training.evaluate and the modules of the
other sub-commands. Options, logging, error lines and exit codes are the family's (appliance.cliparse)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from appliance import cliparse
from training.data import SCENE_BOXES
from training.train import DOOR_SHARE, INIT_EPOCHS, INIT_LEARNING_RATE, TrainConfig

PROG = "mask-train"


def _train_parser(family: cliparse.Family, export: bool = False) -> None:
    d = TrainConfig(data=Path("."), out=Path("."))
    if export:
        p = family.command("export", "export, evaluate and card a float model.keras that `train` wrote, on the "
                                     "same data sources (a new calibration or threshold, no new training)")
        p.add_argument("--keras", type=Path, required=True, help="model.keras of a training run")
    else:
        p = family.command("train", "train, evaluate and export a model from face crops and labelled scenes")
    p.add_argument("data", type=Path, nargs="+",
                   help="data sources: folders with with_mask/ and without_mask/ (and optionally incorrect_mask/) "
                        "sub-folders of face crops, and scene labels.csv files (faces cut from their labelled boxes, "
                        "split by photo)")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder (default: runs/latest)")
    p.add_argument("--base-weights", default=d.base_weights,
                   help="MobileNetV2 ImageNet weights: a .h5 path, or 'imagenet' for Keras' own download")
    p.add_argument("--test-data", type=Path, help="a separate validation folder instead of the 80/20 split")
    p.add_argument("--input-size", type=int, default=d.input_size)
    p.add_argument("--alpha", type=float, default=d.alpha, choices=[0.35, 0.5, 0.75, 1.0, 1.3, 1.4])
    p.add_argument("--epochs", type=int, help=f"epochs with the base frozen, early stopping (default {d.epochs}; "
                                               f"{INIT_EPOCHS} with --init)")
    p.add_argument("--fine-tune-epochs", type=int, default=d.fine_tune_epochs,
                   help="then epochs with the top of the base unfrozen (0: none)")
    p.add_argument("--fine-tune-layers", type=int, default=d.fine_tune_layers)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--learning-rate", type=float,
                   help=f"of the frozen-base epochs (default {d.learning_rate:g}; {INIT_LEARNING_RATE:g} with --init)")
    p.add_argument("--fine-tune-learning-rate", type=float, default=d.fine_tune_learning_rate)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="p(not properly masked) at which a face is flagged (default: chosen on the first scene "
                        "source's validation part: lowest FNR with TNR >= 0.97 "
                        "and, where it has incorrect masks, at least 0.80 of them stopped; 0.5 without a scene source)")
    p.add_argument("--threshold-scenes", type=Path,
                   help="choose the threshold on this scene set's validation part (labels.csv; not trained on), "
                        "e.g. the set the door's model chose its threshold on, instead of the first scene source's")
    p.add_argument("--classes", type=int, choices=[2, 3], default=d.classes,
                   help="3: with_mask, without_mask, incorrect_mask; 2: incorrect_mask folded into without_mask "
                        "(default: 3 when the data has incorrect_mask faces)")
    p.add_argument("--class-weight-power", type=float,
                   help="class weights are (share of the class)^-power: 1 is inverse frequency, 0.5 its square root "
                        "(default 1; with --init, the power that model was trained with)")
    p.add_argument("--made-incorrect", type=int, default=d.made_incorrect, metavar="N",
                   help="add N incorrect_mask faces made from the training parts: unmasked faces wearing masked "
                        "faces' masks under the nose (training/synth.py; default 0)")
    p.add_argument("--scene-boxes", choices=SCENE_BOXES, default=d.scene_boxes,
                   help="cut a scene set's faces from its labelled boxes, from the detector's boxes paired with them "
                        "(what the door cuts; its validation part too), or both (default labelled)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the crops as they are (no augmentation)")
    p.add_argument("--crop-margin", type=float, default=d.crop_margin,
                   help="how much a detected face box grows on each side before it is classified")
    p.add_argument("--crop-align", action="store_true", default=d.crop_align,
                   help="cut faces aligned by their five YuNet landmarks (turned upright and scaled onto a fixed "
                        "template) instead of as squared boxes, in training and, through the card, at the door; "
                        "faces without usable landmarks keep the box crop (default off; with --init, as that "
                        "model's card says)")
    p.add_argument("--calibration-samples", type=int, default=d.calibration_samples)
    p.add_argument("--io-dtype", choices=["int8", "uint8"], default=d.io_dtype)
    p.add_argument("--float16", action="store_true", help="also write a float16 variant")
    p.add_argument("--min-agreement", type=float, default=d.min_agreement,
                   help="the int8 model must decide as the float one on this share of the validation crops (default "
                        f"{d.min_agreement}; only a smoke run on a handful of crops lowers it; the card records it)")
    if not export:
        p.add_argument("--init", type=Path,
                       help="fine-tune from this model (the door's .tflite with its card, or a model.keras) instead "
                            "of ImageNet: its Keras checkpoint when its card records one beside it, else its own "
                            "int8 weights put back into the network")
    p.add_argument("--weight", dest="weights", action="append", default=[], metavar="SOURCE=W",
                   help="weight per crop of a data source, by the name the card gives it (a scene set's folder "
                        f"name, e.g. shop-1=5); default 1, and a door's labels together {DOOR_SHARE:.0%}% of all")


def _evaluate_parser(family: cliparse.Family) -> None:
    p = family.command("evaluate", "score a model on a crop folder and/or a scene set with face boxes")
    p.add_argument("--model", type=Path, required=True, help=".tflite model (its .json card beside it)")
    p.add_argument("--crops", type=Path, help="folder with with_mask/ and without_mask/ face crops")
    p.add_argument("--scenes", type=Path, help="labels.csv of a scene set (image_path,x1,y1,x2,y2,label; label one of "
                                               "with_mask, without_mask, incorrect_mask)")
    p.add_argument("--part", choices=["all", "train", "validation"], default="all",
                   help="score only this part of the scene set's by-photo split (training.splits)")
    p.add_argument("--threshold", type=float, help="instead of the card's (or the config's) threshold")
    p.add_argument("--no-labelled-boxes", dest="labelled_boxes", action="store_false",
                   help="skip classifying the labelled boxes directly")
    p.add_argument("--config", type=Path, help="appliance config TOML for the detector settings")
    p.add_argument("--out", type=Path, help="folder for the JSON results and ROC plot")


def _fill_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on --init, and --weight NAME=W pairs as a dict."""
    d = TrainConfig(data=Path("."), out=Path("."))
    init = getattr(args, "init", None) is not None
    if args.epochs is None:
        args.epochs = INIT_EPOCHS if init else d.epochs
    if args.learning_rate is None:
        args.learning_rate = INIT_LEARNING_RATE if init else d.learning_rate
    weights = {}
    for pair in args.weights:
        name, sep, value = pair.rpartition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            name = ""
        if not sep or not name:
            raise ValueError(f"--weight {pair}: not SOURCE=WEIGHT (e.g. shop-1=5)")
    args.weights = weights


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("train", "export"):
        _fill_defaults(args)
    if args.command == "train":
        from training.train import train

        fields = {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}
        train(TrainConfig(**fields))
    elif args.command == "export":
        from training.train import export_trained

        fields = {k: v for k, v in vars(args).items() if k not in ("command", "verbose", "keras")}
        export_trained(TrainConfig(**fields), args.keras)
    elif args.command in ("visits", "label", "gate"):
        return int(importlib.import_module(f"training.{args.command}").run(args))
    else:
        from training.evaluate import evaluate

        evaluate(args.model, args.crops, args.scenes, args.part, args.threshold, args.labelled_boxes,
                 args.config, args.out)
    return cliparse.OK


def _bad_input() -> tuple[type[BaseException], ...]:
    from appliance.config import ConfigError
    from appliance.seeing.card import CardError
    from appliance.seeing.classifier import ModelError

    return (ConfigError, CardError, ModelError, FileNotFoundError, ValueError)


def main(argv: list[str] | None = None) -> int:
    family = cliparse.Family(PROG, __doc__)
    _train_parser(family)
    _train_parser(family, export=True)
    _evaluate_parser(family)
    # Commands that bring their own arguments: module name -> help.
    for name, help_text in (("visits", "door-level evaluation: approach videos made from labelled photos, judged by "
                                       "the real pipeline and policy"),
                            ("label", "label the crops `mask-deploy pull` fetched, in a page on 127.0.0.1"),
                            ("gate", "score NEW against the model at the door; the verdict goes into NEW's card")):
        importlib.import_module(f"training.{name}").add_arguments(family.command(name, help_text))
    args = family.parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return cliparse.run(PROG, lambda: _dispatch(args), bad_input=_bad_input, faults=(OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
