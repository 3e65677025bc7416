"""The classifier stage: crops, the model card contract, and refusals of bad models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from support.data import SCENES, SHIPPED, scene_images

from appliance.seeing.card import CardError, load_card
from appliance.seeing.classifier import MaskClassifier, ModelError, crop_faces
from appliance.seeing.imaging import read_bgr, square_crop


def test_square_crop_pads_with_edge_pixels_and_never_stretches():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = 255  # left half white
    crop = square_crop(image, (0, 0, 100, 50), margin=0.0, size=20)
    assert crop.shape == (20, 20, 3)
    # a 100x50 box becomes a 100x100 square centred on it, reaching 25 px above the frame: edge pixels fill it
    assert crop[:, :, 0].mean() == pytest.approx(255, abs=1)
    wide = square_crop(image, (50, 0, 150, 100), margin=0.0, size=20)
    assert wide[:, :9].mean() == pytest.approx(255, abs=1) and wide[:, 11:].mean() == pytest.approx(0, abs=1)


def test_the_shipped_model_tells_masked_from_unmasked_faces_on_real_scenes():
    model = MaskClassifier(SHIPPED)

    from training.evaluate import read_scene_labels

    labels = read_scene_labels(SCENES / "labels.csv")
    picked = [p for p in scene_images("with_mask", limit=3) + scene_images("without_mask", limit=3)]
    for path in picked:
        faces = labels[str(SCENES / "images" / path.name)]
        p = model.classify(read_bgr(path), [f.box for f in faces])
        assert len(p) == len(faces)
        assert [bool(x >= model.threshold) for x in p] == [f.label == 1 for f in faces], path.name


def test_all_faces_of_a_frame_are_classified_in_one_call():
    """One call for a frame's faces gives each face what classifying it alone gives: no face's crop or output is
    mixed with another's, whatever their order (real faces of one photo, masked and not, and a box off the edge)."""
    import csv

    model = MaskClassifier(SHIPPED)
    with open(SCENES / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["image_path"] == "images/scene_0002.jpg"]
    assert {r["label"] for r in rows} == {"with_mask", "without_mask"}
    image = read_bgr(SCENES / rows[0]["image_path"])
    boxes = [tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2")) for r in rows] + [(-20, -20, 30, 30)]
    crops = crop_faces(image, boxes, model.card.crop, model.input_size)
    assert crops.shape == (len(boxes), model.input_size, model.input_size, 3)
    alone = np.array([model.classify_all(image, [box])[0] for box in boxes])
    together = model.classify_all(image, boxes)
    np.testing.assert_allclose(together, alone, atol=1e-6)
    for i, box in enumerate(boxes):
        np.testing.assert_array_equal(crops[i], crop_faces(image, [box], model.card.crop, model.input_size)[0])
    p = model.classify(image, boxes)
    np.testing.assert_allclose(p, model.not_masked(alone), atol=1e-6)
    assert p.min() < model.threshold <= p.max()  # faces on both sides of the threshold, each kept apart
    np.testing.assert_allclose(model.classify(image, boxes[::-1]), p[::-1], atol=1e-6)
    assert model.classify(image, []).shape == (0,)


def test_a_model_copied_over_in_place_does_not_change_the_running_one(model_dir):
    model = MaskClassifier(model_dir / "mask_classifier.tflite")
    image = read_bgr(scene_images("without_mask", limit=1)[0])
    before = model.classify(image, [(100, 100, 300, 300)])
    (model_dir / "mask_classifier.tflite").write_bytes(b"\0" * 4096)
    assert model.classify(image, [(100, 100, 300, 300)]) == pytest.approx(before)


def test_a_model_that_does_not_match_its_card_is_refused(model_dir):
    path = model_dir / "mask_classifier.tflite"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelError, match="does not match its card"):
        MaskClassifier(path)


def test_a_model_whose_card_is_missing_or_wrong_is_refused(model_dir, tmp_path):
    lone = tmp_path / "lone.tflite"
    shutil.copy(SHIPPED, lone)
    with pytest.raises(CardError, match="lone.json: model card not found"):
        MaskClassifier(lone)
    card = json.loads((model_dir / "mask_classifier.json").read_text())
    card["input_size"] = 224
    (model_dir / "mask_classifier.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not match card size 224"):
        MaskClassifier(model_dir / "mask_classifier.tflite")
    card["labels"] = ["cat", "dog"]
    (model_dir / "mask_classifier.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match="labels"):
        load_card(model_dir / "mask_classifier.json")


def test_garbage_with_a_matching_card_is_refused(tmp_path):
    import hashlib

    garbage = tmp_path / "g.tflite"
    garbage.write_bytes(b"not a flatbuffer at all")
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    card["sha256"] = hashlib.sha256(garbage.read_bytes()).hexdigest()
    garbage.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a loadable TFLite model"):
        MaskClassifier(garbage)


def test_a_card_whose_labels_do_not_match_the_model_outputs_is_refused(model_dir):
    from appliance.seeing.card import LABELS

    path = model_dir / "mask_classifier.json"
    card = json.loads(path.read_text())
    n = len(card["labels"])
    card["labels"] = list(LABELS[:2] if n == 3 else LABELS)  # the other accepted label set
    path.write_text(json.dumps(card))
    assert len(load_card(path).labels) == 5 - n  # a valid card on its own...
    with pytest.raises(ModelError, match="does not match card labels"):  # ...but not for this model
        MaskClassifier(model_dir / "mask_classifier.tflite")
    card["labels"] = ["with_mask", "without_mask", "without_mask"]
    path.write_text(json.dumps(card))
    with pytest.raises(CardError, match=r"labels \['with_mask', 'without_mask', 'without_mask'\] are not"):
        load_card(path)


def test_p_not_properly_masked_is_one_minus_p_with_mask(model_dir):
    from appliance.seeing.classifier import load_model

    model = load_model(model_dir / "mask_classifier.tflite", 2)
    image = read_bgr(scene_images("without_mask", limit=1)[0])
    boxes = [(100, 100, 300, 300), (10, 10, 90, 90)]
    probs = model.classify_all(image, boxes)
    assert probs.shape == (2, len(model.labels))
    p = model.classify(image, boxes)
    if len(model.labels) == 2:  # a 2-class model's own p(without_mask), exactly as before the third class
        np.testing.assert_array_equal(p, probs[:, model.card.positive_index])
    else:
        np.testing.assert_allclose(p, 1 - probs[:, model.card.masked_index], atol=1e-6)


def test_a_card_writes_rates_over_no_faces_as_null(model_dir):
    from dataclasses import replace

    path = model_dir / "mask_classifier.json"
    card = load_card(path)
    replace(card, metrics={"validation": {"incorrect_stopped": float("nan"), "tnr": 0.98}}).save(path)
    text = path.read_text()
    assert '"incorrect_stopped": null' in text and "NaN" not in text
    assert load_card(path).metrics["validation"] == {"incorrect_stopped": None, "tnr": 0.98}
