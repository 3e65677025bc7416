"""The benchmarks' own logic: the classifier benchmark classifies exactly the crops the appliance would."""

from __future__ import annotations

import sys

import numpy as np
from support.data import REPO, SCENES, SHIPPED, scene_images

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
    """run_ours re-implements the pipeline to time its stages one by one: on real photos it must find exactly the
    faces the appliance's own Pipeline finds, with the same p(not properly masked) and so the same labels."""
    import compare

    from appliance import config
    from appliance.seeing.imaging import read_bgr
    from appliance.seeing.pipeline import Pipeline
    from appliance.seeing.sources import Frame

    files = scene_images("with_mask", limit=1) + scene_images("without_mask", limit=2)
    result = compare.run_ours(files, threads=1)
    pipeline = Pipeline.from_config(config.parse({}, "<defaults>"))
    assert result["threshold"] == pipeline.threshold
    labels = []
    for i, path in enumerate(files):
        appliance = pipeline.run(Frame(read_bgr(path), 0.0, i))
        assert appliance, f"{path.name}: the appliance finds no face (pick another photo)"
        ours = result["detections"][str(path)]
        assert [box for box, _ in ours] == [r.face.box for r in appliance], path.name
        np.testing.assert_allclose([p for _, p in ours], [r.p_without_mask for r in appliance], atol=1e-6)
        labels += [r.label for r in appliance]
    assert all(len(result["times"][stage]) == len(files) for stage in compare.STAGES)
    # both sides of the threshold were compared: masked visitors and unmasked ones
    assert {"with_mask", "without_mask"} <= set(labels) and result["faces"] == len(labels)
