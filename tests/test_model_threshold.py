"""Three-class door rates and the door's threshold rule, on cases worked out by hand, and the rule run again on the
shipped model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from support.data import SHARED, SHIPPED

from appliance.seeing.card import LABELS, Crop
from appliance.seeing.classifier import load_model
from appliance.seeing.pipeline import label_of
from training import report
from training.data import load_scene_crops
from training.evaluate import labelled_box_scores, read_scene_labels
from training.splits import split_scenes

W, U, INC = (LABELS.index(n) for n in ("with_mask", "without_mask", "incorrect_mask"))


def test_rates_count_incorrect_masks_apart():
    p = np.array([0.1, 0.6, 0.9, 0.2, 0.7, 0.4])
    y = np.array([W, W, U, U, INC, INC])
    r = report.rates(p, y, 0.5)
    assert r["fnr"] == pytest.approx(0.5) and r["tnr"] == pytest.approx(0.5)
    assert r["incorrect_stopped"] == pytest.approx(0.5)
    # accuracy: flagged exactly when not properly masked: faces 0, 2, 4 right
    assert r["accuracy"] == pytest.approx(0.5)
    assert (r["n_with_mask"], r["n_without_mask"], r["n_incorrect_mask"]) == (2, 2, 2)
    assert math.isnan(report.rates(p[:4], y[:4], 0.5)["incorrect_stopped"])  # none of that class: NaN, not 0


def test_threshold_is_the_lowest_fnr_that_still_catches_97_percent():
    # 100 unmasked faces: 97 score 0.40 or more, 3 score 0.05; masked faces score 0.30 (10) and 0.02 (90)
    y = np.array([U] * 100 + [W] * 100)
    p = np.array([0.9] * 90 + [0.4] * 7 + [0.05] * 3 + [0.3] * 10 + [0.02] * 90)
    choice = report.choose_threshold(p, y)
    assert choice["met"] and choice["tnr"] == pytest.approx(0.97) and choice["fnr"] == 0.0
    assert 0.3 < choice["threshold"] <= 0.4
    assert choice["threshold"] == pytest.approx(0.31)  # the lowest such threshold: most unmasked caught
    strict = report.choose_threshold(p, y, min_tnr=0.99)  # only catching the 0.05s reaches 0.99: FNR 0.1
    assert strict["met"] and strict["tnr"] == 1.0 and strict["fnr"] == pytest.approx(0.1)
    assert strict["threshold"] == pytest.approx(0.03)


def test_threshold_rule_says_when_it_cannot_be_met():
    y = np.array([U] * 10 + [W] * 10)
    p = np.array([0.0] * 5 + [0.8] * 5 + [0.1] * 10)  # half the unmasked faces look masked whatever the threshold
    choice = report.choose_threshold(p, y)
    assert not choice["met"] and "TNR >= 0.97" in choice["rule"]
    # the best TNR there is (0.5), and of those the lowest FNR (0 above 0.1), and of those the lowest threshold
    assert choice["tnr"] == pytest.approx(0.5) and choice["fnr"] == 0.0 and choice["threshold"] == pytest.approx(0.11)


def test_a_face_above_the_threshold_takes_the_likelier_unmasked_class():
    three = LABELS
    assert label_of(np.array([0.7, 0.2, 0.1]), three, 0.3, 0.5) == "with_mask"
    assert label_of(np.array([0.3, 0.2, 0.5]), three, 0.7, 0.5) == "incorrect_mask"
    assert label_of(np.array([0.3, 0.5, 0.2]), three, 0.7, 0.5) == "without_mask"
    assert label_of(np.array([0.4, 0.6]), LABELS[:2], 0.6, 0.5) == "without_mask"
    assert label_of(np.array([0.6, 0.4]), LABELS[:2], 0.4, 0.5) == "with_mask"


def test_evaluate_reruns_the_training_runs_threshold_rule_on_the_shipped_model_without_training():
    """`mask-train evaluate --scenes` prints the threshold train.py's rule would choose on the labelled boxes it
    scores: the same faces (cut by the card's crop, as load_scene_crops cuts them for training) and the same rule, so a
    shipped model's threshold can be checked again when a set's labels are corrected."""
    ilc = SHARED / "datasets" / "scenes-ilc" / "labels.csv"
    photos = split_scenes(ilc)[1][:40]  # 40 photos of the validation part: the rule's own result, quickly
    model = load_model(SHIPPED, 2)
    labels = {k: v for k, v in read_scene_labels(ilc).items() if k in set(photos)}
    scored = labelled_box_scores(model, labels, model.threshold)["threshold_choice"]
    crops = load_scene_crops(Path(ilc), photos, model.input_size, Crop(margin=model.card.crop.margin))
    trained = report.choose_threshold(model.predict(crops.images), crops.labels)
    assert scored == trained and scored["n"] == len(crops.labels) > 40
