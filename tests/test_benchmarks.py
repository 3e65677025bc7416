"""The benchmarks' own logic: the classifier benchmark classifies exactly the crops the appliance would."""

from __future__ import annotations

import sys

import numpy as np
from conftest import REPO, SCENES, SHIPPED

from appliance.classifier import MaskClassifier
from training.evaluate import label_crops, read_scene_labels

sys.path.insert(0, str(REPO / "benchmarks"))
import classifier as bench  # noqa: E402


def test_label_face_crops_are_the_appliances_crops_of_every_labelled_face(tmp_path):
    rows = (SCENES / "labels.csv").read_text().splitlines()
    (tmp_path / "images").symlink_to(SCENES / "images")
    (tmp_path / "labels.csv").write_text("\n".join(rows[:41]) + "\n")  # header and 40 faces
    model = MaskClassifier(SHIPPED)
    crops, labels = bench.label_face_crops(tmp_path / "labels.csv", model.card)
    assert crops.shape == (40, 128, 128, 3) and crops.dtype == np.uint8
    truth, p_appliance = label_crops(read_scene_labels(tmp_path / "labels.csv"), model.classify)
    assert labels.tolist() == truth.tolist() and 0 < labels.sum() < 40  # both labels among them
    np.testing.assert_array_equal(model.predict(crops), p_appliance)
