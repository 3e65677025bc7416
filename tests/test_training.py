"""The training kit: data handling, a smoke training run, the export's parity gate and the model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from support.data import SHIPPED, WEIGHTS_100

from appliance.assets import sha256_of
from appliance.seeing.card import LABELS, load_card
from appliance.seeing.classifier import MaskClassifier
from training.data import DataError, class_weights, list_crops, load_crops, stratified_split


def test_smoke_run_exports_a_model_the_appliance_loads(trained, small_crops):
    out, summary = trained
    model = MaskClassifier(out / "mask_classifier.tflite")
    card = model.card
    assert card.input_size == 128
    assert card.labels == LABELS[:2]  # no incorrect_mask faces in the data: a 2-class model
    assert card.input.dtype == "int8" and card.output.dtype == "int8"
    # The model rescales pixels itself, so 0..255 maps exactly onto int8.
    assert card.input.quant.scale == pytest.approx(1.0) and card.input.quant.zero_point == -128
    assert card.sha256 == sha256_of(out / "mask_classifier.tflite")
    assert card.training["counts"] == {"with_mask": 40, "without_mask": 40, "incorrect_mask": 0}
    assert card.training["sources"][0]["kind"] == "crops" and card.training["classes"] == 2
    assert card.training["skipped"] == 2
    # The data's sha256, recomputed from the files by the recipe training/data.py documents (content_hash): each
    # crop used, class by class, in name order, as its class name, a NUL and its bytes; the two unreadable files
    # are left out. One crop folder: the data's hash is that folder's.
    digest = hashlib.sha256()
    for label in ("with_mask", "without_mask"):
        for path in sorted((small_crops / label).iterdir()):
            if path.name not in ("broken.jpg", "notes.txt"):
                digest.update(f"{label}\0".encode() + path.read_bytes())
    assert card.training["data_sha256"] == card.training["sources"][0]["sha256"] == digest.hexdigest()
    assert card.metrics["parity"]["agreement"] >= 0.99
    # 20% of each class, stratified
    assert card.training["validation_counts"] == {"with_mask": 8, "without_mask": 8, "incorrect_mask": 0}
    # no scene source: no real photos to choose the door's threshold on, so the neutral 0.5, and the card says why
    assert card.threshold == 0.5 and "no scene source" in card.metrics["threshold_choice"]["rule"]
    crops = load_crops(small_crops, 128)
    p = model.predict(crops.images[:4])
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()
    fp16 = MaskClassifier(out / "mask_classifier_fp16.tflite")  # the float16 variant, with its own card
    assert fp16.card.input.dtype == "float32" and fp16.card.input.quant is None
    assert np.abs(fp16.predict(crops.images[:4]) - p).max() < 0.2
    for name in ("curves.png", "confusion.png", "roc.png", "model.keras"):
        assert (out / name).stat().st_size > 1000, name
    tables = json.loads((out / "thresholds.json").read_text())
    assert list(tables) == [small_crops.name]  # one table per data source
    table = tables[small_crops.name]
    assert [row["threshold"] for row in table] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    report = json.loads((out / "report.json").read_text())
    assert set(report["validation_tflite"]["report"]) >= {"with_mask", "without_mask"}
    assert sorted(s.split(":")[0].rsplit("/", 1)[1] for s in summary["skipped_files"]) == ["broken.jpg", "notes.txt"]


def test_parity_gate_refuses_a_badly_quantized_model(trained, small_crops, tmp_path):
    import keras

    from training.export import ParityError, export

    out, _ = trained
    model = keras.models.load_model(out / "model.keras")
    crops = load_crops(small_crops, 128)
    # Calibrating on flat grey images instead of real crops clips every real activation: a broken int8 model.
    grey = np.full((8, 128, 128, 3), 128, np.uint8)
    target = tmp_path / "broken.tflite"
    with pytest.raises(ParityError, match="refused"):
        export(model, target, grey, crops.images, crops.labels)
    assert not target.exists() and not target.with_suffix(".json").exists()


def test_shipped_model_matches_its_card():

    card = load_card(SHIPPED.with_suffix(".json"))
    assert card.model_file == SHIPPED.name
    assert card.sha256 == sha256_of(SHIPPED)
    assert SHIPPED.stat().st_size + SHIPPED.with_suffix(".json").stat().st_size <= 3 * 1024 * 1024
    assert card.metrics["validation"]["accuracy"] > 0.95
    assert card.metrics["parity"]["agreement"] >= 0.99
    MaskClassifier(SHIPPED)  # loads


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="nowhere: data folder not found"):
        list_crops(tmp_path / "nowhere")


def test_missing_class_folder_is_a_clear_error(tmp_path):
    (tmp_path / "with_mask").mkdir()
    (tmp_path / "with_mask" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="without_mask: class folder missing"):
        list_crops(tmp_path)


def test_empty_class_is_a_clear_error(tmp_path):
    for label in LABELS:
        (tmp_path / label).mkdir()
    (tmp_path / "with_mask" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="class 'without_mask' has no files"):
        list_crops(tmp_path)


def test_class_of_only_corrupt_files_is_a_clear_error(tmp_path, small_crops):
    import shutil

    shutil.copytree(small_crops / "with_mask", tmp_path / "with_mask")
    (tmp_path / "without_mask").mkdir()
    (tmp_path / "without_mask" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="'without_mask' has no readable images"):
        load_crops(tmp_path, 32)


def test_stratified_split_keeps_class_shares_and_is_repeatable():
    labels = np.array([0] * 100 + [1] * 50)
    train, val = stratified_split(labels, 0.2, seed=7)
    assert len(val) == 30 and (labels[val] == 0).sum() == 20 and (labels[val] == 1).sum() == 10
    assert not set(train) & set(val) and len(train) + len(val) == 150
    again = stratified_split(labels, 0.2, seed=7)
    assert (again[1] == val).all()


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0] * 30 + [1] * 10))
    assert w[0] * 30 == pytest.approx(w[1] * 10)
    assert w[1] == pytest.approx(2.0)


def test_class_weights_cover_three_classes():
    w = class_weights(np.array([0] * 60 + [1] * 30 + [2] * 10))
    assert w[2] == pytest.approx(100 / 30) and w[0] * 60 == pytest.approx(w[2] * 10)


def test_cli_reports_a_missing_scene_labels_file(tmp_path, small_crops, capsys):
    from training.cli import main

    rc = main(["train", str(small_crops), str(tmp_path / "none.csv"), "--out", str(tmp_path), "--input-size", "32"])
    assert rc == 2  # bad input (issue 14: the same code in all three commands)
    assert capsys.readouterr().err.strip().endswith("none.csv: scene labels not found")


def test_cli_reports_a_missing_weights_file(tmp_path, small_crops, capsys):
    from training.cli import main

    rc = main(["train", str(small_crops), "--out", str(tmp_path), "--base-weights", str(tmp_path / "no.h5")])
    assert rc == 2
    assert "no.h5: no such file" in capsys.readouterr().err


def test_export_re_exports_a_trained_float_model_without_training(trained, small_crops, tmp_path, capsys):
    from training.cli import main

    out, _ = trained
    keras_path = out / "model.keras"
    assert main(["export", "--keras", str(keras_path), str(small_crops), "--out", str(tmp_path),
                 "--calibration-samples", "32", "--threshold", "0.5"]) == 0
    card = load_card(tmp_path / "mask_classifier.json")
    assert card.training["exported_from"] == str(keras_path) and card.input_size == 128  # read from the model
    assert card.threshold == 0.5 and card.metrics["threshold_choice"]["rule"] == "given: --threshold 0.5"
    assert card.metrics["parity"]["agreement"] >= 0.99
    MaskClassifier(tmp_path / "mask_classifier.tflite")  # loads
    assert main(["export", "--keras", str(tmp_path / "none.keras"), str(small_crops), "--out", str(tmp_path)]) == 2
    # its run made no masks: an export that would make some cards other data than the model saw
    assert main(["export", "--keras", str(keras_path), str(small_crops), "--out", str(tmp_path),
                 "--made-incorrect", "5"]) == 2
    assert capsys.readouterr().err.strip().endswith("model.keras: trained with --made-incorrect 0, not 5: give the "
                                                    "same to export the data it was trained on")


# -- fine-tuning from the door's model (mask-train train --init, issue #15) ---------------------------------------

@pytest.fixture(scope="module")
def door_labels(tmp_path_factory) -> Path:
    """60 real labelled faces as a pulled door folder, labelled through the labelling page's session."""
    from support.labelling import make_door

    from training import label

    root = tmp_path_factory.mktemp("door") / "door"
    truth = make_door(root, 60)
    session = label.Session(root)
    for path, lab in truth.items():
        session.decide(path, lab)
    return root / label.LABELS_FILE


@pytest.fixture(scope="module")
def fine_tuned(small_crops, door_labels, tmp_path_factory):
    """Two epochs of the head from the shipped int8 model (no Keras file of it exists), the door weighted 4."""

    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("fine")
    # a handful of validation crops: one disagreement is 3.6%, so this smoke run lowers the int8 parity gate
    summary = train(TrainConfig(data=[small_crops, door_labels], out=out, init=SHIPPED, base_weights=str(WEIGHTS_100),
                                epochs=2, learning_rate=1e-4, calibration_samples=32, min_agreement=0.9,
                                weights={"door": 4.0}))
    return out, summary


def test_the_door_model_is_recovered_from_its_int8_weights(small_crops, tmp_path):
    import shutil

    from training.export import RecoveryError, keras_from_tflite, not_masked

    model = keras_from_tflite(SHIPPED)  # no ImageNet weights needed: all are replaced
    crops = load_crops(small_crops, 128)
    door = MaskClassifier(SHIPPED)
    p_float = not_masked(model.predict(crops.images.astype(np.float32), verbose=0))
    p_door = door.predict(crops.images)
    # the float network reproduces the int8 model as closely as the float model it was exported from did
    assert np.abs(p_float - p_door).mean() < 0.02
    assert ((p_float >= door.threshold) == (p_door >= door.threshold)).mean() >= 0.97
    assert model.output_shape[-1] == 3 and model.input_shape[1] == 128
    changed = tmp_path / "mask_classifier.tflite"
    changed.write_bytes(SHIPPED.read_bytes() + b"\0")
    shutil.copy(SHIPPED.with_suffix(".json"), changed.with_suffix(".json"))
    with pytest.raises(RecoveryError, match="mask_classifier.tflite: its sha256 is not its card's"):
        keras_from_tflite(changed)


def test_fine_tuning_from_the_door_model_learns_the_door_and_the_card_says_how(fine_tuned, door_labels):

    from training.data import load_scene_crops
    from training.splits import split_scenes

    out, summary = fine_tuned
    card = load_card(out / "mask_classifier.json")
    shipped = load_card(SHIPPED.with_suffix(".json"))
    t = card.training
    assert t["base"] == f"fine-tuned from {SHIPPED}" and t["init"]["from"] == str(SHIPPED)
    assert t["init"]["sha256"] == shipped.sha256
    assert t["init"]["weights"].startswith("recovered from the int8 model")
    assert t["init"]["mean_abs_p_difference"] < 0.01 and t["init"]["checked_on"] == 28  # 16 crops + 12 door faces
    assert card.labels == LABELS and card.input_size == 128  # the door's 3 classes, though no incorrect mask here
    assert card.crop == shipped.crop and t["epochs_run"] == [2]
    assert [s["kind"] for s in t["sources"]] == ["crops", "door"]
    assert t["source_weights"] == {small_name(t): 1.0, "door": 4.0} and t["sources"][1]["weight"] == 4.0
    assert t["keras"] == {"file": "model.keras", "sha256": sha256_of(out / "model.keras")}
    assert card.sha256 != shipped.sha256
    # it learnt the door: on the door's training crops its p moves toward the labels, away from the door model's
    train_photos, _ = split_scenes(door_labels)
    door = load_scene_crops(door_labels, train_photos, 128, card.crop)
    truth = (door.labels != LABELS.index("with_mask")).astype(float)
    before = np.abs(MaskClassifier(SHIPPED).predict(door.images) - truth).mean()
    after = np.abs(MaskClassifier(out / "mask_classifier.tflite").predict(door.images) - truth).mean()
    assert after < before


def small_name(training: dict) -> str:
    return training["sources"][0]["name"]


def test_init_from_a_model_this_kit_trained_takes_its_keras_checkpoint(fine_tuned, tmp_path):
    import shutil

    from training.train import TrainConfig, start_from

    out, _ = fine_tuned
    init = start_from(TrainConfig(data=[], out=tmp_path, init=out / "mask_classifier.tflite"))
    assert init.info["weights"] == f"its Keras checkpoint model.keras (sha256 {sha256_of(out / 'model.keras')})"
    assert init.fixes == {"crop_margin": 0.15, "crop_align": False, "input_size": 128, "classes": 3}
    # a checkpoint that is not the one the card names is not used: the int8 weights are recovered instead
    moved = tmp_path / "m"
    moved.mkdir()
    for name in ("mask_classifier.tflite", "mask_classifier.json"):
        shutil.copy(out / name, moved / name)
    (moved / "model.keras").write_bytes(b"another run's checkpoint")

    init = start_from(TrainConfig(data=[], out=tmp_path, init=moved / "mask_classifier.tflite",
                                  base_weights=str(WEIGHTS_100)))
    assert init.info["weights"].startswith("recovered from the int8 model")


def test_a_door_weighs_a_quarter_of_the_training_unless_told(tmp_path):
    from training.data import CropSet
    from training.train import DOOR_SHARE, Source, TrainConfig, source_weights

    def source(name: str, kind: str, n: int) -> Source:
        crops = CropSet(np.zeros((n, 1, 1, 3), np.uint8), np.zeros(n, np.int64), [f"{i}" for i in range(n)])
        return Source(name, crops, crops, {"kind": kind})

    cfg = TrainConfig(data=[], out=tmp_path)
    shared, door = source("mask-crops", "crops", 300), source("shop-1", "door", 20)
    w = source_weights(cfg, [shared, door])
    assert DOOR_SHARE == 0.25 and w == {"mask-crops": 1.0, "shop-1": 5.0}  # 20 x 5 = 100 = a quarter of 400
    assert source_weights(cfg, [shared, source("shop-1", "door", 200)])["shop-1"] == 1.0  # never below 1
    told = source_weights(TrainConfig(data=[], out=tmp_path, weights={"shop-1": 2, "mask-crops": 0.5}),
                          [shared, door])
    assert told == {"mask-crops": 0.5, "shop-1": 2.0}
    with pytest.raises(DataError, match=r"--weight shop-2=3: no data source is named 'shop-2' \(sources: "
                                        r"mask-crops, shop-1\)"):
        source_weights(TrainConfig(data=[], out=tmp_path, weights={"shop-2": 3}), [shared, door])
    with pytest.raises(DataError, match="--weight shop-1=0: must be above 0"):
        source_weights(TrainConfig(data=[], out=tmp_path, weights={"shop-1": 0}), [shared, door])


def test_init_and_weight_mistakes_are_one_line(tmp_path, small_crops, capsys):

    from training.cli import main

    base = ["train", str(small_crops), "--out", str(tmp_path), "--input-size", "32"]
    assert main([*base, "--init", str(tmp_path / "none.tflite")]) == 2  # bad input
    assert capsys.readouterr().err.strip() == f"mask-train: --init {tmp_path / 'none.tflite'}: no such file (give " \
                                              "the door's .tflite, its card beside it, or a model.keras)"
    assert main([*base, "--weight", "shop-1"]) == 2  # bad input
    assert capsys.readouterr().err.strip() == "mask-train: --weight shop-1: not SOURCE=WEIGHT (e.g. shop-1=5)"
    assert main([*base, "--init", str(SHIPPED), "--classes", "2"]) == 2  # bad input
    assert capsys.readouterr().err.strip().endswith("mask_classifier.tflite: it has 3 classes, not --classes 2")
    assert main([*base, "--threshold-scenes", str(tmp_path / "none.csv")]) == 2  # bad input
    assert capsys.readouterr().err.strip() == f"mask-train: --threshold-scenes {tmp_path / 'none.csv'}: scene " \
                                              "labels not found"
    assert main([*base, "--made-incorrect", "-5"]) == 2  # bad input
    assert capsys.readouterr().err.strip() == "mask-train: --made-incorrect -5: must be 0 or more"
    assert main([*base, "--made-incorrect", "5"]) == 2  # two classes only: the made third one could not be validated
    assert capsys.readouterr().err.strip() == "mask-train: --made-incorrect 5: no data source has real " \
                                              "incorrect_mask faces to validate the made ones on (add a scene set " \
                                              "that has them, or --classes 2)"
    (tmp_path / "notes.txt").write_text("x")
    assert main([*base, "--init", str(tmp_path / "notes.txt")]) == 2  # bad input
    assert capsys.readouterr().err.strip().endswith("notes.txt: not a .tflite or .keras file")
