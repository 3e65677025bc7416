"""A 3-class smoke training run from two data sources (crop folders and a labelled scene set), and what the
appliance makes of its model: labels, p(not properly masked), p_incorrect_mask, the card's sources and threshold."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.data import CROPS, SHARED, WEIGHTS_100

from appliance.seeing.card import LABELS, load_card
from appliance.seeing.classifier import MaskClassifier, load_model
from appliance.seeing.imaging import read_bgr

ILC = SHARED / "datasets" / "scenes-ilc"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """20 real crops per class, and the first 80 photos of scenes-ilc with their labels (paths made absolute)."""
    root = tmp_path_factory.mktemp("three")
    for label in ("with_mask", "without_mask"):
        (root / "crops" / label).mkdir(parents=True)
        for src in sorted((CROPS / label).iterdir())[:20]:
            shutil.copy(src, root / "crops" / label / src.name)
    with open(ILC / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    photos = sorted({r["image_path"] for r in rows})[:80]
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "image_path": str(ILC / r["image_path"])} for r in rows if r["image_path"] in photos)
    return root / "crops", root / "labels.csv"


@pytest.fixture(scope="module")
def trained3(sources, tmp_path_factory):
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run3")
    summary = train(TrainConfig(data=list(sources), out=out, base_weights=str(WEIGHTS_100), input_size=128,
                                epochs=4, learning_rate=1e-3, calibration_samples=32, augment=False,
                                min_agreement=0.85, made_incorrect=10))
    return out, summary


def test_card_records_three_classes_each_source_and_the_chosen_threshold(trained3, sources):
    from training.splits import split_scenes

    out, summary = trained3
    card = load_card(out / "mask_classifier.json")
    assert card.labels == LABELS and card.incorrect_index == 2
    by_kind = {s["kind"]: s for s in card.training["sources"]}
    assert by_kind["crops"]["counts"] == {"with_mask": 20, "without_mask": 20, "incorrect_mask": 0}
    assert by_kind["crops"]["validation_counts"] == {"with_mask": 4, "without_mask": 4, "incorrect_mask": 0}
    scenes = by_kind["scenes"]
    train_photos, val_photos = split_scenes(sources[1])
    assert (scenes["train_photos"], scenes["validation_photos"]) == (len(train_photos), len(val_photos))
    with open(sources[1], newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(scenes["counts"].values()) == len(rows)
    assert scenes["counts"]["incorrect_mask"] == sum(r["label"] == "incorrect_mask" for r in rows) > 0
    # Each source's sha256, recomputed from the files by training's recipes (training/data.py): the crops, class by
    # class in name order, as class name, NUL and bytes; the scenes, as the labels file's bytes, then every photo
    # it names, in name order.
    crops = hashlib.sha256()
    for label in ("with_mask", "without_mask"):
        for path in sorted((sources[0] / label).iterdir()):
            crops.update(f"{label}\0".encode() + path.read_bytes())
    assert by_kind["crops"]["sha256"] == crops.hexdigest()
    photos = hashlib.sha256(sources[1].read_bytes())
    for photo in sorted({r["image_path"] for r in rows}):
        photos.update(Path(photo).read_bytes())
    assert scenes["sha256"] == photos.hexdigest()
    # one hash names the whole combination of sources: each one's name and sha256, in the card's order
    combined = "".join(f"{s['name']}\0{s['sha256']}\n" for s in card.training["sources"])
    assert card.training["data_sha256"] == hashlib.sha256(combined.encode()).hexdigest()
    assert [s["kind"] for s in card.training["sources"]] == ["crops", "scenes", "made"]
    choice = card.metrics["threshold_choice"]
    assert card.threshold == choice["threshold"] and "TNR >= 0.97" in choice["rule"]
    assert choice["source"].endswith("validation part")
    assert set(card.metrics["validation_by_source"]) == {"crops", sources[1].parent.name}  # made: training only
    made = by_kind["made"]
    assert made["train_counts"] == {"with_mask": 0, "without_mask": 0, "incorrect_mask": 10}
    assert sum(made["validation_counts"].values()) == 0
    assert made["sha256"] not in (scenes["sha256"], by_kind["crops"]["sha256"]) and len(made["sha256"]) == 64
    assert card.training["train_counts"]["incorrect_mask"] == scenes["train_counts"]["incorrect_mask"] + 10
    tables = json.loads((out / "thresholds.json").read_text())
    assert all(len(t) == 9 for t in tables.values())
    assert card.metrics["parity"]["agreement"] >= card.metrics["parity"]["min_agreement"] == 0.85


def test_a_three_class_model_gives_not_properly_masked_and_incorrect(trained3):
    out, _ = trained3
    model = load_model(out / "mask_classifier.tflite", 2)
    assert model.n_classes == 3
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (5, 128, 128, 3), dtype=np.uint8)
    probs = model.predict_all(crops)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(axis=1), 1, atol=0.02)
    np.testing.assert_allclose(model.predict(crops), 1 - probs[:, 0], atol=1e-6)


def test_the_pipeline_reports_p_incorrect_mask_for_a_three_class_model(trained3, sources):
    from appliance import config as config_mod
    from appliance.seeing.detector import make_detector
    from appliance.seeing.pipeline import Pipeline
    from appliance.seeing.sources import Frame

    out, _ = trained3
    cfg = config_mod.parse({}, "<defaults>")
    pipeline = Pipeline(make_detector(cfg.detector), MaskClassifier(out / "mask_classifier.tflite"))
    with open(sources[1], newline="") as f:
        photo = next(r["image_path"] for r in csv.DictReader(f) if r["label"] == "incorrect_mask")
    results = pipeline.run(Frame(read_bgr(photo), 0.0, 0))
    assert results
    for r in results:
        assert r.p_incorrect_mask is not None and 0 <= r.p_incorrect_mask <= r.p_without_mask + 0.01
        assert r.label in LABELS and (r.label == "with_mask") == (r.p_without_mask < pipeline.threshold)
        record = r.to_json()
        assert set(record) == {"box", "score", "p_without_mask", "label", "p_incorrect_mask"}


def test_folding_trains_two_classes_and_still_scores_incorrect_masks(sources, tmp_path):
    from training.train import TrainConfig, train

    summary = train(TrainConfig(data=list(sources), out=tmp_path, base_weights=str(WEIGHTS_100), input_size=128,
                                epochs=1, learning_rate=1e-3, calibration_samples=16, augment=False, classes=2,
                                threshold=0.5, patience=1, min_agreement=0.85))
    card = load_card(tmp_path / "mask_classifier.json")
    assert card.labels == LABELS[:2] and card.incorrect_index is None and card.threshold == 0.5
    # the validation part still has its incorrect masks, scored as "stopped" or not
    assert summary["validation_tflite"]["n_incorrect_mask"] > 0
    assert 0 <= summary["validation_tflite"]["incorrect_stopped"] <= 1
