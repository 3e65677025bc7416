"""Scene scoring: IoU matching and the published rates, checked on hand-made cases and on scenes-dev."""

from __future__ import annotations

import pytest
from support.data import CROPS, SCENES, SHIPPED

from training.evaluate import LabelledFace, detect_scenes, match, read_scene_labels, scene_part, score_scenes

ILC = SCENES.parent / "scenes-ilc"


def test_matching_needs_iou_above_half_and_is_one_to_one():
    truth = [LabelledFace("a", (0, 0, 100, 100), 0), LabelledFace("a", (200, 0, 300, 100), 1)]
    dets = [((5, 5, 105, 105), 0.2), ((0, 0, 100, 100), 0.9), ((260, 0, 360, 100), 0.8)]
    # the exact box wins the first face; the second detection overlaps the second face by IoU 0.25 only
    assert match(truth, dets) == [0.9, None]
    # at the looser level the second face is matched too, and still one detection per face
    assert match(truth, dets, min_iou=0.2) == [0.9, 0.8]


def test_rates_on_a_known_case(tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((200, 400, 3), np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    (tmp_path / "labels.csv").write_text(
        "image_path,x1,y1,x2,y2,label\n"
        "a.jpg,0,0,100,100,with_mask\n"
        "a.jpg,100,0,200,100,without_mask\n"
        "a.jpg,200,0,240,40,without_mask\n"
        "a.jpg,300,0,330,30,with_mask\n"
        "broken.jpg,0,0,10,10,with_mask\n"
    )
    labels = read_scene_labels(tmp_path / "labels.csv")
    boxes = {(0, 0, 100, 100): 0.7, (100, 0, 200, 100): 0.9, (200, 0, 240, 40): 0.1}  # last face missed

    detections, skipped = detect_scenes(labels, lambda image: list(boxes.items()))
    result = score_scenes(labels, detections, 0.5, skipped)
    assert result["images"] == 1 and len(result["skipped_images"]) == 1
    everything = result["all"]
    assert everything["faces"] == 4 and everything["matched"] == 3 and everything["recall"] == pytest.approx(0.75)
    assert everything["accuracy"] == pytest.approx(1 / 3)  # masked flagged, unmasked caught, unmasked missed
    assert everything["tnr"] == pytest.approx(0.5) and everything["fnr"] == pytest.approx(1.0)
    assert result[">=64px"]["faces"] == 2 and result[">=64px"]["tnr"] == pytest.approx(1.0)
    # the headline: of both unmasked faces (both found, one let through), one is stopped
    assert everything["stopped_without_mask_of_all"] == pytest.approx(0.5)
    assert everything["recall_without_mask"] == 1.0 and everything["recall_with_mask"] == pytest.approx(0.5)
    sizes = result["recall_by_size"]
    assert sizes["32-63px"]["without_mask"] == {"faces": 1, "recall": 1.0}
    assert sizes["<32px"]["with_mask"] == {"faces": 1, "recall": 0.0}
    assert sizes["64-127px"]["all"] == {"faces": 2, "recall": 1.0}


def test_three_classes_and_two_match_levels(tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((200, 400, 3), np.uint8))
    (tmp_path / "labels.csv").write_text(
        "image_path,x1,y1,x2,y2,label\n"
        "a.jpg,0,0,100,100,with_mask\n"
        "a.jpg,100,0,200,100,incorrect_mask\n"
        "a.jpg,200,0,300,100,incorrect_mask\n"
        "a.jpg,300,0,400,100,without_mask\n"
    )
    labels = read_scene_labels(tmp_path / "labels.csv")
    assert [f.label for f in labels[str(tmp_path / "a.jpg")]] == [0, 2, 2, 1]
    # the incorrect masks: one found and flagged, one found and let through; the unmasked face is found only by a
    # box that is loose (IoU 0.4)
    found = [((0, 0, 100, 100), 0.1), ((100, 0, 200, 100), 0.8), ((200, 0, 300, 100), 0.3),
             ((300, 0, 400, 140), 0.9)]
    detections, _ = detect_scenes(labels, lambda image: found)
    strict = score_scenes(labels, detections, 0.5)["all"]
    loose = score_scenes(labels, detections, 0.5, min_iou=0.3)["all"]
    assert strict["matched"] == 4 and loose["matched"] == 4  # (300,0,400,140) overlaps by 100/140 = 0.71
    assert strict["incorrect_stopped"] == pytest.approx(0.5) and strict["fnr"] == 0.0 and strict["tnr"] == 1.0
    assert strict["stopped_incorrect_mask_of_all"] == pytest.approx(0.5)
    found[3] = ((300, 0, 400, 250), 0.9)  # IoU 100/250 = 0.4: a miss at 0.5, a match at 0.3
    detections, _ = detect_scenes(labels, lambda image: found)
    strict = score_scenes(labels, detections, 0.5)["all"]
    loose = score_scenes(labels, detections, 0.5, min_iou=0.3)["all"]
    assert strict["recall_without_mask"] == 0.0 and loose["recall_without_mask"] == 1.0
    assert strict["stopped_without_mask_of_all"] == 0.0 and loose["stopped_without_mask_of_all"] == 1.0


def test_scenes_ilc_labels_and_its_split_by_photo():
    labels = read_scene_labels(ILC / "labels.csv")
    faces = [f for group in labels.values() for f in group]
    assert len(labels) == 1195 and len(faces) == 2940
    # as corrected on 2026-12-04 (../shared/datasets/README.md: 15 labels; 1516 and 1072 before)
    assert [sum(f.label == k for f in faces) for k in range(3)] == [1521, 1067, 352]
    val = scene_part(labels, ILC / "labels.csv", "validation")
    train = scene_part(labels, ILC / "labels.csv", "train")
    assert not set(val) & set(train) and len(val) + len(train) == 1195
    assert 0.2 < len(val) / 1195 < 0.3


def test_scenes_dev_labels_read_as_documented():
    labels = read_scene_labels(SCENES / "labels.csv")
    faces = [f for group in labels.values() for f in group]
    assert len(labels) == 458 and len(faces) == 1103
    assert sum(f.label == 0 for f in faces) == 515 and sum(f.label == 1 for f in faces) == 588


def test_a_bad_label_row_names_the_line(tmp_path):
    (tmp_path / "labels.csv").write_text("image_path,x1,y1,x2,y2,label\na.jpg,0,0,10,10,hat\n")
    with pytest.raises(ValueError, match="labels.csv:2: bad row"):
        read_scene_labels(tmp_path / "labels.csv")


def test_mask_train_evaluate_scores_the_shipped_model_on_crops_and_scenes(tmp_path, capsys):
    import csv
    import json
    import shutil

    from training.cli import main

    crops = tmp_path / "crops"
    for label in ("with_mask", "without_mask"):
        (crops / label).mkdir(parents=True)
        for src in sorted((CROPS / label).iterdir())[-15:]:
            shutil.copy(src, crops / label / src.name)
    with open(SCENES / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["image_path"] in {f"images/scene_{i:04d}.jpg" for i in range(6)}]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "image_path": str(SCENES / r["image_path"])} for r in rows)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(SHIPPED), "--crops", str(crops), "--scenes", str(tmp_path / "labels.csv"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "crops (30, 0 skipped)" in printed and ">=64px" in printed and "IoU>0.3" in printed
    assert "detector recall by face size and class" in printed and "labelled boxes classified directly" in printed
    result = json.loads((out / "evaluation.json").read_text())
    assert result["crops"]["n"] == 30 and result["crops"]["accuracy"] >= 0.9
    scenes = result["scenes"]
    assert scenes["images"] == 6 and scenes["all"]["faces"] == len(rows)
    assert 0.5 < scenes["all"]["recall"] <= scenes["iou_0.3"]["all"]["recall"] <= 1
    assert scenes["all"]["accuracy"] >= 0.8
    assert scenes["label_crops"]["all"]["n"] == len(rows) and scenes["label_crops"]["all"]["accuracy"] >= 0.8
    assert (out / "roc.png").stat().st_size > 1000
