"""One rendering and detection pass for several models (training.visits.door_runs, what `mask-train gate` judges its
door visits with): each model gets exactly the frames `door_visits` gives it alone, and the real detector runs once
per frame, not once per model. The models are the shipped int8 model under its own card and under a card with a
0.99 threshold (the same faces, labelled differently); the visits are seeded from scenes-ilc's validation part."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.data import SHARED, SHIPPED

from appliance import config
from appliance.seeing import pipeline as pipeline_mod
from appliance.seeing.classifier import MaskClassifier, load_model
from training import gate, visits

ILC = SHARED / "datasets" / "scenes-ilc" / "labels.csv"
SHORT = visits.Render(seconds=1.0, fps=10)  # 10 frames a visit: enough to compare, quick to run


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[MaskClassifier]:
    """The shipped model at its card's threshold, and the same model under a card with threshold 0.99."""
    folder = tmp_path_factory.mktemp("t0.99")
    strict = folder / "mask_classifier.tflite"
    shutil.copy(SHIPPED, strict)
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    card["threshold"] = 0.99
    strict.with_suffix(".json").write_text(json.dumps(card))
    return [load_model(SHIPPED, 1), load_model(strict, 1)]


@pytest.fixture
def looks(monkeypatch) -> list[int]:
    """Every look of every real detector made from here on, as the frame's pixel count (a count of calls)."""
    seen: list[int] = []
    real = pipeline_mod.make_detector

    def counted(*args, **kwargs):
        detector = real(*args, **kwargs)
        detect = detector.detect

        def counting(frame_bgr):
            seen.append(frame_bgr.shape[0] * frame_bgr.shape[1])
            return detect(frame_bgr)

        detector.detect = counting
        return detector

    monkeypatch.setattr(pipeline_mod, "make_detector", counted)
    return seen


def test_one_pass_gives_each_model_exactly_what_door_visits_gives_it_alone(models, looks):
    cfg = config.load(None)
    shared = visits.door_runs(cfg, models, ILC, "val", 2, 1, 17, SHORT)
    n_frames = len(shared[0].visits) * SHORT.n_frames
    assert len(shared) == 2 and len(shared[0].visits) == 9  # 2 per label, 1 of each pair kind
    assert len(looks) == n_frames  # one detector look per frame for both models, and no still photos
    assert all(run.still is None for run in shared)
    looks.clear()
    alone = [visits.door_visits(cfg, m, ILC, "val", 2, 1, 17, SHORT) for m in models]
    photos = {f.image for v in shared[0].visits for f in v.faces}
    assert len(looks) == 2 * (n_frames + len(photos))  # each alone: every frame again, then each still photo once
    for one, other in zip(shared, alone, strict=True):
        assert [v.id for v in one.visits] == [v.id for v in other.visits]
        assert one.frames == other.frames  # every frame's boxes, p and labels, exactly
        assert one.threshold == other.threshold
    assert shared[1].threshold == 0.99 and shared[0].threshold < 0.99
    # The two models judged the same faces with the same p, and labelled some of them differently.
    faces = []
    for vid, seen in shared[0].frames.items():
        for (_, fa), (_, fb) in zip(seen, shared[1].frames[vid], strict=True):
            faces += zip(fa, fb, strict=True)
    assert len(faces) > n_frames // 2
    assert all(a.box == b.box and a.p_without_mask == b.p_without_mask for a, b in faces)
    assert any(a.label != b.label for a, b in faces)
    # Still figures when asked for: door_visits' own, each face the visits use once on its photo. A pair may reuse a
    # one-person visit's face (12 visitors, 11 faces since scenes-ilc's labels were corrected): counted once.
    with_still = visits.door_runs(cfg, models[:1], ILC, "val", 2, 1, 17, SHORT, still=True)[0]
    used = {(f.image, f.box) for v in shared[0].visits for f in v.faces}
    assert 10 <= len(used) <= 12
    assert with_still.still == alone[0].still and sum(s["faces"] for s in with_still.still.values()) == len(used)


def test_the_gate_judges_both_models_on_one_detection_pass(models, looks):
    both = gate.door_figures(models, ILC, 3)
    assert len(looks) == 12 * visits.Render().n_frames  # 3 per label and 1 of each pair kind, each frame once
    assert both[0]["unmasked"] == both[1]["unmasked"] == 5  # 3 alone, 1 beside someone masked, 1 pair of two
    assert both[0]["masked"] == both[1]["masked"] == 4 and both[0]["incorrect"] == both[1]["incorrect"] == 3
    # Each model's own figures, in the order given: at 0.99 fewer frames vote, so fewer incorrect masks are stopped
    assert both[1]["incorrect_denied"] < both[0]["incorrect_denied"]
    assert both[1]["masked_denied"] <= both[0]["masked_denied"]


def test_door_runs_needs_a_model():
    with pytest.raises(ValueError, match="door_runs needs at least one model"):
        visits.door_runs(config.load(None), [], ILC, "val", 2, 1, 17, SHORT)


def test_classify_labels_faces_found_by_another_pipeline_as_run_does(models):
    from appliance.seeing.imaging import read_bgr
    from appliance.seeing.sources import Frame

    cfg = config.load(None)
    plain, strict = (pipeline_mod.Pipeline.from_config(cfg, m) for m in models)
    image = read_bgr(Path(visits.plan_set(ILC, "val", 1, 0, 17, 150)[1].faces[0].image))  # someone unmasked
    frame = Frame(image, 0.0, 0)
    faces = plain.detect(frame)
    assert faces
    assert strict.classify(frame, faces) == strict.run(frame)
    assert plain.classify(frame, faces) == plain.run(frame)
    assert strict.classify(frame, []) == []
