"""Landmark-aligned face crops (Crop.align): the crop itself on real photos, its fall-backs, the card key, the door's
path (classifier, pipeline, collection) and training's loaders, which must cut the faces as the door does."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from support.data import CROPS, SHARED, SHIPPED, scene_images

from appliance.boxes import pair
from appliance.config import DetectorConfig
from appliance.reporting.collect import CollectConfig
from appliance.reporting.emitter import Emitter
from appliance.seeing.card import CardError, Crop, load_card
from appliance.seeing.classifier import MaskClassifier, crop_faces
from appliance.seeing.detector import make_detector
from appliance.seeing.imaging import (
    ALIGN_TEMPLATE,
    aligned_crop,
    pad_to_square,
    read_bgr,
    similarity,
    square_crop,
)
from appliance.seeing.pipeline import Pipeline
from appliance.seeing.sources import Frame
from training import cli
from training.data import load_crops, load_scene_crops, read_scene_labels
from training.evaluate import label_crops
from training.splits import split_scenes
from training.synth import landmarks

ILC = SHARED / "datasets" / "scenes-ilc" / "labels.csv"
S = 128  # the shipped model's input size


@pytest.fixture(scope="module")
def detector():
    return make_detector(DetectorConfig(), photos=True)


@pytest.fixture(scope="module")
def aligned_model() -> MaskClassifier:
    """The shipped model told to take aligned crops (its card's crop only: the sha256 is the .tflite's)."""
    card = load_card(SHIPPED.with_suffix(".json"))
    return MaskClassifier(SHIPPED, card=replace(card, crop=replace(card.crop, align=True)))


def _eyes(crop_bgr: np.ndarray) -> np.ndarray:
    """YuNet's two eye points on a crop (2 x 2), found on the crop alone."""
    return landmarks(cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)[None])[0, :2]


def _roll(eyes: np.ndarray) -> float:
    """The eye line's angle from level, degrees."""
    (rx, ry), (lx, ly) = eyes
    return math.degrees(math.atan2(ly - ry, lx - rx))


def test_aligned_crops_put_the_eyes_on_the_templates_eye_row(detector):
    """On frontal faces (nose within 0.12 eye distances of the eyes' centre) YuNet, run again on the aligned crop
    alone, finds the eyes within 6 px (5% of 128) of the template's, 4 px or less for most."""
    errors = []
    for path in scene_images("without_mask", limit=6) + scene_images("with_mask", limit=6):
        image = read_bgr(path)
        face = detector.detect(image)[0]
        lm = np.array(face.landmarks)
        if abs(lm[2, 0] - lm[:2, 0].mean()) > 0.12 * np.linalg.norm(lm[1] - lm[0]):
            continue
        errors.append(np.abs(_eyes(aligned_crop(image, face.landmarks, S)) - ALIGN_TEMPLATE[:2] * S).max())
    assert len(errors) >= 6
    assert max(errors) <= 6 and np.median(errors) <= 4


def test_a_tilted_face_comes_out_level_and_its_square_crop_does_not(detector):
    """A frontal, level face (nose centred, eye line within 1 degree) turned 20 degrees either way with its photo:
    YuNet, run on each crop alone, finds the aligned crop's eyes level within 3 degrees and the square crop's tilted
    (by less than 20: YuNet reads tilted faces' eye lines short, the detection's as well)."""
    for path in scene_images("without_mask", limit=12):
        image = read_bgr(path)
        face = detector.detect(image)[0]
        lm = np.array(face.landmarks)
        if abs(lm[2, 0] - lm[:2, 0].mean()) <= 0.05 * np.linalg.norm(lm[1] - lm[0]) and abs(_roll(lm[:2])) <= 1:
            break
    else:
        pytest.fail("no frontal, level face")
    centre = ((face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2)
    for angle in (20, -20):
        turned = cv2.warpAffine(image, cv2.getRotationMatrix2D(centre, angle, 1.0), image.shape[1::-1],
                                borderMode=cv2.BORDER_REPLICATE)
        tilted = detector.detect(turned)[0]
        assert abs(_roll(np.array(tilted.landmarks[:2]))) > 15  # the detector sees the tilt
        assert abs(_roll(_eyes(aligned_crop(turned, tilted.landmarks, S)))) <= 3
        assert abs(_roll(_eyes(square_crop(turned, tilted.box, 0.15, S)))) > 9


def test_an_aligned_crop_is_the_same_face_whatever_the_photos_resolution(detector):
    """The photo at full size and shrunk 4x (landmarks scaled with it) give the same crop, to under 2.5 grey levels
    on average: shrinking is by area. warpAffine alone would sample the large photo bilinearly, 4 or more off."""
    for path in scene_images("without_mask", limit=3):
        image = read_bgr(path)
        lm = np.array(detector.detect(image)[0].landmarks)
        small = cv2.resize(image, (image.shape[1] // 4, image.shape[0] // 4), interpolation=cv2.INTER_AREA)
        f = np.array([image.shape[1] / small.shape[1], image.shape[0] / small.shape[0]])
        want = aligned_crop(small, (lm + 0.5) / f - 0.5, S).astype(int)  # pixel centres, as cv2.resize maps them
        assert np.abs(aligned_crop(image, lm, S).astype(int) - want).mean() < 2.5
        sampled = cv2.warpAffine(image, similarity(lm, ALIGN_TEMPLATE * S), (S, S), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(sampled.astype(int) - want).mean() > 4


@pytest.mark.parametrize("marks", [(), ((10.0, 10.0),) * 5, ((10.0, 10.0), (12.0, 10.0), (11.0, 14.0),
                                                              (10.0, 18.0), (12.0, 18.0)),
                                   ((math.nan, 1.0),) + ((10.0, 10.0),) * 4])
def test_a_face_without_usable_landmarks_is_cut_by_its_box(marks):
    """No landmarks, eyes on one spot, eyes 2 px apart in a 100 px box (under 4%), a NaN: the box crop, exactly."""
    image = read_bgr(scene_images("without_mask", limit=1)[0])
    box = (100.0, 80.0, 200.0, 180.0)
    got = crop_faces(image, [box], Crop(align=True), S, [marks])
    np.testing.assert_array_equal(got, crop_faces(image, [box], Crop(), S))


def test_crop_faces_aligns_only_the_faces_with_landmarks_and_only_for_an_aligned_card(detector):
    image = read_bgr(scene_images("with_mask", limit=1)[0])
    faces = detector.detect(image)[:1] * 3
    boxes = [f.box for f in faces]
    marks = [faces[0].landmarks, (), faces[0].landmarks]
    got = crop_faces(image, boxes, Crop(align=True), S, marks)
    aligned = cv2.cvtColor(aligned_crop(image, faces[0].landmarks, S), cv2.COLOR_BGR2RGB)
    boxed = crop_faces(image, boxes[:1], Crop(), S)[0]
    assert got.shape == (3, S, S, 3)
    np.testing.assert_array_equal(got[0], aligned)
    np.testing.assert_array_equal(got[1], boxed)
    np.testing.assert_array_equal(got[2], aligned)
    assert np.abs(aligned.astype(int) - boxed).mean() > 5  # two different crops, not two names for one
    np.testing.assert_array_equal(crop_faces(image, boxes, Crop(), S, marks), np.stack([boxed] * 3))
    with pytest.raises(ValueError):  # one entry of landmarks per box
        crop_faces(image, boxes, Crop(align=True), S, marks[:2])


def test_the_card_carries_align_and_an_old_card_reads_as_before(tmp_path):
    shipped = load_card(SHIPPED.with_suffix(".json"))
    assert shipped.crop == Crop(margin=0.15, square=True, align=False)
    assert json.loads(shipped.to_json())["crop"] == {"margin": 0.15, "square": True}  # written as it always was
    aligned = replace(shipped, crop=Crop(margin=0.2, align=True))
    aligned.save(tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text())["crop"] == {"margin": 0.2, "square": True, "align": True}
    assert load_card(tmp_path / "m.json").crop == Crop(margin=0.2, square=True, align=True)
    d = json.loads((tmp_path / "m.json").read_text())
    d["crop"]["align"] = "yes"
    (tmp_path / "m.json").write_text(json.dumps(d))
    with pytest.raises(CardError, match=r"crop.align 'yes' is not true or false"):
        load_card(tmp_path / "m.json")


def test_the_pipeline_classifies_the_aligned_crop_of_each_detected_face(aligned_model):
    pipeline = Pipeline(make_detector(DetectorConfig()), aligned_model)
    # two faces the model judges differently aligned and boxed (most faces it is sure of either way)
    image = read_bgr(ILC.parent / "images" / "0dc0559d86a5eabb.jpg")
    results = pipeline.run(Frame(image, 0.0, 0))
    faces = [r.face for r in results]
    assert faces and all(len(f.landmarks) == 5 for f in faces)
    boxes, marks = [f.box for f in faces], [f.landmarks for f in faces]
    by_marks = aligned_model.classify(image, boxes, marks)
    np.testing.assert_allclose([r.p_without_mask for r in results], by_marks, atol=1e-6)
    by_box = aligned_model.classify(image, boxes)  # no landmarks: the box crops, another input
    assert np.abs(by_marks - by_box).max() > 0.3
    # step(): the second frame is the first again, so the motion gate carries the faces forward, landmarks too
    pipeline.step(Frame(image, 0.0, 1))
    again = pipeline.step(Frame(image, 0.1, 2))
    assert not pipeline.times.detected and pipeline.times.classified == len(faces)
    np.testing.assert_allclose([r.p_without_mask for r in again], by_marks, atol=1e-6)


def test_a_collected_crop_is_the_aligned_crop_the_model_judged(aligned_model):
    """The emitter offers collection the crop the model judged: aligned (a stand-in collector, log and decision)."""
    image = read_bgr(scene_images("with_mask", limit=1)[0])
    pipeline = Pipeline(make_detector(DetectorConfig()), aligned_model)
    frame = Frame(image, 0.0, 0)
    results = pipeline.run(frame)[:1]
    offered: list[np.ndarray] = []
    collector = SimpleNamespace(cfg=CollectConfig(enabled=True, band=(0.0, 1.0)),
                                offer=lambda crop, info, t: offered.append(crop))
    events = SimpleNamespace(faces_dir=None, frame=lambda stats: None)
    decision = SimpleNamespace(changed=False, state="idle", faces=[SimpleNamespace(disagreed=False, id=1)])
    Emitter(events, collector, snapshot=False).emit(frame, results, decision, "closed", aligned_model, {})
    face = results[0].face
    np.testing.assert_array_equal(offered[0], cv2.cvtColor(aligned_crop(image, face.landmarks, S), cv2.COLOR_BGR2RGB))
    assert float(aligned_model.predict(offered[0][None])[0]) == pytest.approx(results[0].p_without_mask, abs=1e-6)


def test_labelled_boxes_fall_back_to_box_crops_for_an_aligned_model(aligned_model):
    """evaluate's and the gate's label_crops hand over boxes alone: an aligned model scores the box crops."""
    labels = dict(list(read_scene_labels(ILC).items())[:4])
    plain = MaskClassifier(SHIPPED)
    ys, probs = label_crops(labels, aligned_model.classify_all)
    ys_plain, probs_plain = label_crops(labels, plain.classify_all)
    assert len(ys) >= 4 and ys.tolist() == ys_plain.tolist()
    np.testing.assert_array_equal(probs, probs_plain)


def test_crop_folders_are_aligned_where_yunet_finds_landmarks_on_the_crop(tmp_path):
    for label in ("with_mask", "without_mask"):
        (tmp_path / label).mkdir()
        for src in sorted((CROPS / label).iterdir())[:4]:
            shutil.copy(src, tmp_path / label / src.name)
    # a crop with no face in it (a patch of wall from a scene photo): no landmarks, kept as the padded crop
    cv2.imwrite(str(tmp_path / "with_mask" / "wall.jpg"), read_bgr(scene_images("with_mask", limit=1)[0])[:60, :60])
    plain = load_crops(tmp_path, S)
    aligned = load_crops(tmp_path, S, align=True)
    assert plain.aligned is None and len(aligned) == len(plain) == 9 and aligned.paths == plain.paths
    found = landmarks(plain.images)
    wall = plain.paths.index(str(tmp_path / "with_mask" / "wall.jpg"))
    assert np.isnan(found[wall]).all()
    changed = [not np.array_equal(a, p) for a, p in zip(aligned.images, plain.images, strict=True)]
    assert aligned.aligned == sum(changed) == 8
    for image, was, lm, moved in zip(aligned.images, plain.images, found, changed, strict=True):
        if moved:
            np.testing.assert_array_equal(image, aligned_crop(was, lm, S))
        else:
            np.testing.assert_array_equal(image, was)
    # found again on the aligned crops, the eyes sit on the template's eye row (YuNet's own scatter: a few px)
    rows = np.abs(landmarks(aligned.images[changed])[:, :2, 1] - ALIGN_TEMPLATE[0, 1] * S)
    assert rows.max() <= 6 and np.median(rows) <= 3
    padded = pad_to_square(read_bgr(tmp_path / "with_mask" / "wall.jpg"), S)
    np.testing.assert_array_equal(aligned.images[wall], cv2.cvtColor(padded, cv2.COLOR_BGR2RGB))


def test_scene_faces_are_aligned_by_their_paired_detection_and_boxed_without_one(detector):
    photos = split_scenes(ILC)[0][:8]
    by_image = read_scene_labels(ILC)
    plain = load_scene_crops(ILC, photos, S, Crop())
    aligned = load_scene_crops(ILC, photos, S, Crop(align=True))
    assert aligned.paths == plain.paths and aligned.labels.tolist() == plain.labels.tolist()
    i, paired = 0, 0
    for photo in photos:
        image = read_bgr(photo)
        faces = by_image[photo]
        found = detector.detect(image)
        for face, j in zip(faces, pair([f.box for f in faces], [f.box for f in found], 0.3), strict=True):
            want = plain.images[i] if j is None else crop_faces(image, [face.box], Crop(align=True), S,
                                                                [found[j].landmarks])[0]
            np.testing.assert_array_equal(aligned.images[i], want)
            paired += j is not None
            i += 1
    assert i == len(plain) and aligned.aligned == paired and 0.5 * len(plain) <= paired < len(plain)
    # aligned, the landmarks decide, not the box: "detected" cuts the same pixels; "both" adds the labelled boxes'
    detected = load_scene_crops(ILC, photos, S, Crop(align=True), "detected")
    np.testing.assert_array_equal(detected.images, aligned.images)
    both = load_scene_crops(ILC, photos, S, Crop(align=True), "both")
    assert len(both) == len(plain) + paired and both.aligned == paired
    boxed = [p for p in both.images if any(np.array_equal(p, q) for q in plain.images)]
    assert len(boxed) == len(plain)


def test_crop_align_reaches_the_training_config(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("training.train.train", lambda cfg: seen.append(cfg))
    monkeypatch.setattr("training.train.export_trained", lambda cfg, keras: seen.append(cfg))
    assert cli.main(["train", str(CROPS), "--out", str(tmp_path)]) == 0
    assert cli.main(["train", str(CROPS), "--out", str(tmp_path), "--crop-align"]) == 0
    assert cli.main(["export", str(CROPS), "--out", str(tmp_path), "--keras", "m.keras", "--crop-align"]) == 0
    assert [c.crop_align for c in seen] == [False, True, True]
