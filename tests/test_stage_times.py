"""The service's stage histograms: detect and classify timed apart, on real photos through the real frame loop."""

from __future__ import annotations

import cv2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.data import scene_images
from support.service import make_service

from appliance.reporting.metrics import Metrics
from appliance.seeing.imaging import read_bgr
from appliance.seeing.sources import ImageSource

STILL = 2  # frames per photo


class Frames:
    """An event-log output that keeps every frame's statistics, as the metrics receive them."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_record(self, record: dict) -> None:
        pass

    def on_status(self, status: dict) -> None:
        pass

    def on_frame(self, frame: dict) -> None:
        self.seen.append({"stages": dict(frame["stages"]), "faces": sum(frame["faces"].values())})

    def close(self) -> None:
        pass


def _stage(metrics: Metrics, sample: str, stage: str, **labels: str) -> float:
    """One sample of mask_appliance_stage_seconds from /metrics' text, through prometheus_client's own parser."""
    want = {"stage": stage, **labels}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == f"mask_appliance_stage_seconds_{sample}" and s.labels == want:
                return s.value
    raise AssertionError(f"no {sample} sample for {want}")


def test_detect_and_classify_histograms_count_every_frame_with_real_times(model_dir, tmp_path):
    """Three real photos with faces and one real crop without any, two frames each: each stage is observed once a
    frame; classify holds the model's time on frames with faces and exactly 0 on the frames without."""
    photos = [*scene_images("without_mask", limit=2), *scene_images("with_mask", limit=1)]
    image = read_bgr(photos[0])
    empty = tmp_path / "no_face.png"  # the bottom quarter of a real photo, below its face (PNG: lossless)
    assert cv2.imwrite(str(empty), image[int(image.shape[0] * 0.75):])

    service = make_service(model_dir, tmp_path)
    metrics, frames = Metrics(), Frames()
    service.events.subscribe(metrics)
    service.events.subscribe(frames)
    assert service.run(ImageSource([*photos, empty], still_frames=STILL)) == 0  # closes the log: all delivered

    runs = 4 * STILL
    assert service.frames == len(frames.seen) == runs
    with_faces = [f["stages"] for f in frames.seen if f["faces"]]
    without = [f["stages"] for f in frames.seen if not f["faces"]]
    assert len(with_faces) == 3 * STILL and len(without) == STILL
    assert all(s["detect"] > 0 and s["classify"] > 0 for s in with_faces)
    assert all(s["detect"] > 0 and s["classify"] == 0.0 for s in without)

    for stage in ("detect", "classify"):
        assert _stage(metrics, "count", stage) == runs
        assert _stage(metrics, "sum", stage) == pytest.approx(sum(f["stages"][stage] for f in frames.seen))
    classify = sum(s["classify"] for s in with_faces)
    assert classify > 0 and _stage(metrics, "sum", "classify") == pytest.approx(classify)
    assert _stage(metrics, "sum", "detect") > 0
    # The zeros of the faceless frames sit in the lowest bucket, with any face frame classified that quickly.
    quick = sum(s["classify"] <= 0.005 for s in with_faces)
    assert _stage(metrics, "bucket", "classify", le="0.005") == STILL + quick


def test_frames_whose_detector_motion_gating_skipped_are_counted_and_still_timed(model_dir, tmp_path):
    """Still photos shown three frames each: the first frame of each photo is detected, its two repeats are not (the
    picture did not change); /metrics counts them, and their detect stage (the motion gate's look) is still observed."""
    photos = [*scene_images("without_mask", limit=2), *scene_images("with_mask", limit=1)]
    service = make_service(model_dir, tmp_path)
    metrics, frames = Metrics(), Frames()
    service.events.subscribe(metrics)
    service.events.subscribe(frames)
    assert service.run(ImageSource(photos, still_frames=3)) == 0

    assert [f["stages"]["gated"] for f in frames.seen] == [0.0, 1.0, 1.0] * 3
    samples = {s.name: s.value for fam in text_string_to_metric_families(metrics.render().decode())
               for s in fam.samples}
    assert samples["mask_appliance_gated_frames_total"] == 6
    assert samples["mask_appliance_classified_faces_total"] == sum(f["stages"]["classified"] for f in frames.seen)
    assert all(f["stages"]["detect"] > 0 for f in frames.seen)  # the gate's look is the detect stage's time too
    # Every frame still hands its faces on: the repeats carry the photo's faces forward.
    assert all(f["faces"] == frames.seen[i - i % 3]["faces"] > 0 for i, f in enumerate(frames.seen))
