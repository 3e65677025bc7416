"""The training kit: data handling, a smoke training run, the export's parity gate and the model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.assets import sha256_of
from appliance.card import LABELS, load_card
from appliance.classifier import MaskClassifier
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
    assert len(card.training["data_sha256"]) == 64
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
    from conftest import SHIPPED

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
    assert rc == 1
    assert capsys.readouterr().err.strip().endswith("none.csv: scene labels not found")


def test_cli_reports_a_missing_weights_file(tmp_path, small_crops, capsys):
    from training.cli import main

    rc = main(["train", str(small_crops), "--out", str(tmp_path), "--base-weights", str(tmp_path / "no.h5")])
    assert rc == 1
    assert "no.h5: no such file" in capsys.readouterr().err


def test_export_re_exports_a_trained_float_model_without_training(trained, small_crops, tmp_path):
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
    assert main(["export", "--keras", str(tmp_path / "none.keras"), str(small_crops), "--out", str(tmp_path)]) == 1
