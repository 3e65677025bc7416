"""Pipeline.from_config: one frame -> faces with p(not properly masked), built from a Config alone."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from support.data import SHIPPED, scene_images

from appliance import config as config_mod
from appliance.seeing.classifier import MaskClassifier, ModelError
from appliance.seeing.detector import SSDDetector, YuNetDetector
from appliance.seeing.imaging import read_bgr
from appliance.seeing.pipeline import Pipeline
from appliance.seeing.sources import Frame


def _cfg(**sections) -> config_mod.Config:
    return config_mod.parse({"classifier": {"model": str(SHIPPED)}, **sections}, "<test>")


def test_from_config_builds_the_configured_detector_model_and_threshold():
    pipeline = Pipeline.from_config(_cfg())
    assert isinstance(pipeline.detector, YuNetDetector)
    assert pipeline.detector.cfg.max_side == 480
    assert pipeline.detector.sides == (480,)  # frames: one look at max_side
    assert Pipeline.from_config(_cfg(), pipeline.classifier, photos=True).detector.sides == (640, 1024)
    assert pipeline.classifier.path == SHIPPED
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert pipeline.threshold == pytest.approx(card["threshold"])  # unset in the config: the card's

    pipeline = Pipeline.from_config(_cfg(detector={"kind": "ssd", "score_threshold": 0.6},
                                         classifier={"model": str(SHIPPED), "threshold": 0.3, "threads": 1}))
    assert isinstance(pipeline.detector, SSDDetector)
    assert pipeline.detector.cfg.score_threshold == 0.6
    assert pipeline.threshold == 0.3


def test_from_config_uses_a_model_already_loaded_instead_of_loading_one(tmp_path):
    model = MaskClassifier(SHIPPED)
    # The config names a model that does not exist: given one, from_config never reads the config's.
    cfg = _cfg()
    cfg.classifier.model = tmp_path / "absent.tflite"
    pipeline = Pipeline.from_config(cfg, model)
    assert pipeline.classifier is model


def test_from_config_refuses_a_model_that_fails_its_card(tmp_path):
    bad = tmp_path / "mask_classifier.tflite"
    bad.write_bytes(SHIPPED.read_bytes()[:-16] + b"\0" * 16)  # same length, other bytes: the card's sha256 differs
    shutil.copy(SHIPPED.with_suffix(".json"), bad.with_suffix(".json"))
    with pytest.raises(ModelError, match="mask_classifier.tflite"):
        Pipeline.from_config(_cfg(classifier={"model": str(bad)}))


def test_a_pipeline_from_config_finds_and_flags_unmasked_faces_on_real_photos():
    pipeline = Pipeline.from_config(_cfg())
    for i, path in enumerate(scene_images("without_mask", limit=2)):
        faces = pipeline.run(Frame(read_bgr(path), 0.0, i))
        assert faces, path
        assert any(f.label == "without_mask" and f.p_without_mask >= pipeline.threshold for f in faces), path
    for i, path in enumerate(scene_images("with_mask", limit=2)):
        faces = pipeline.run(Frame(read_bgr(path), 0.0, i))
        assert faces, path
        assert any(f.label == "with_mask" and f.p_without_mask < pipeline.threshold for f in faces), path


def _timed(fn, spans: list[float]):
    """`fn`, recording how long each call took in `spans`."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spans.append(time.perf_counter() - t0)
    return wrapper


def test_run_times_detection_and_classification_apart_on_real_photos():
    """`times` holds this frame's stages: both detector looks of a still photo in detect, the model in classify,
    and classify exactly 0 on a frame where no face was found (nothing was classified)."""
    pipeline = Pipeline.from_config(_cfg(), photos=True)
    looks: list[float] = []
    classified: list[float] = []
    for look in pipeline.detector._looks:  # the two looks are what photos=True adds
        look.rows = _timed(look.rows, looks)
    pipeline.classifier.classify_all = _timed(pipeline.classifier.classify_all, classified)
    image = read_bgr(scene_images("without_mask", limit=1)[0])
    assert max(image.shape[:2]) > pipeline.detector.sides[0]  # large enough for the second look

    t0 = time.perf_counter()
    faces = pipeline.run(Frame(image, 0.0, 0))
    wall = time.perf_counter() - t0
    times = pipeline.times
    assert faces and len(looks) == 2 and len(classified) == 1
    assert times.detect >= sum(looks) > 0  # both looks are detection
    assert times.classify >= classified[0] > 0
    assert times.detect + times.classify <= wall  # two spans inside run(), not overlapping

    nothing = image[int(image.shape[0] * 0.75):]  # below the face: the detector finds none there
    assert pipeline.run(Frame(nothing, 1.0, 1)) == []
    assert len(classified) == 1  # the model never ran
    assert pipeline.times.classify == 0.0 and pipeline.times.detect > 0


def test_step_gives_what_run_gives_and_carries_the_faces_of_an_unchanged_frame_forward():
    """step() is the door's run(): on the first frame it detects and classifies as run() does; on the same picture
    again (nothing moved, well within idle_every) it skips the detector and classifies the same faces again."""
    image = read_bgr(scene_images("without_mask", limit=1)[0])
    gated = Pipeline.from_config(_cfg())
    every = Pipeline.from_config(_cfg(detector={"motion_gating": False}), gated.classifier)
    want = [r.to_json() for r in gated.run(Frame(image, 0.0, 0))]
    assert want and gated.times.detected and gated.times.classified == len(want)
    for pipeline in (gated, every):
        assert [r.to_json() for r in pipeline.step(Frame(image, 10.0, 0))] == want
        assert pipeline.times.detected
        assert [r.to_json() for r in pipeline.step(Frame(image.copy(), 10.2, 1))] == want
        assert pipeline.times.classified == len(want)  # not settled (no policy said so): every face classified
    assert every.times.detected and not gated.times.detected
    assert gated.step(Frame(image, 11.2, 2)) and gated.times.detected  # idle_every (1 s) later: looked again
