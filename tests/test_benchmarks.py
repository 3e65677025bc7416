"""The benchmarks' own logic: the classifier benchmark classifies exactly the crops the appliance would."""

from __future__ import annotations

import sys

import numpy as np
from support.data import REPO, SCENES, SHIPPED

from appliance.seeing.classifier import MaskClassifier
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


def test_detector_sweep_scores_each_setting_on_a_labelled_part(tmp_path):
    import detector as sweep_bench

    assert sweep_bench.parse_set("max_side=640,score_threshold=0.5") == {"max_side": 640, "score_threshold": 0.5}
    rows = (SCENES / "labels.csv").read_text().splitlines()
    (tmp_path / "images").symlink_to(SCENES / "images")
    (tmp_path / "labels.csv").write_text("\n".join(rows[:21]) + "\n")  # header and 20 faces
    loose, strict = sweep_bench.sweep(tmp_path / "labels.csv", "all", [{"score_threshold": 0.3},
                                                                      {"score_threshold": 0.95}])
    assert loose["faces"] == strict["faces"] > 0
    # a lower score threshold finds at least the faces a higher one finds, at either match level
    assert 0 < loose["recall_iou0.3"] <= 1 and loose["recall_iou0.3"] >= strict["recall_iou0.3"]
    assert loose["recall_iou0.3"] >= loose["recall_iou0.5"] and loose["median_ms"] > 0


def test_compare_runs_our_pipeline_with_the_appliances_labels():
    import compare

    files = sorted((SCENES / "images").iterdir())[:3]
    result = compare.run_ours(files, threads=1)
    model = MaskClassifier(SHIPPED)
    assert result["threshold"] == model.threshold and result["faces"] == sum(map(len, result["detections"].values()))
    assert all(len(result["times"][stage]) == 3 for stage in compare.STAGES)
    for found in result["detections"].values():
        assert all(0 <= p <= 1 for _, p in found)
