"""One frame -> faces with p(not properly masked): the detector and classifier stages."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from appliance.config import Config
from appliance.seeing.card import INCORRECT, MASKED, POSITIVE
from appliance.seeing.classifier import MaskClassifier, load_model
from appliance.seeing.detector import Face, FaceDetector, make_detector
from appliance.seeing.sources import Frame


@dataclass
class FaceResult:
    """One face in one frame, as the pipeline labels it (what `detect --json` prints per face)."""

    face: Face
    p_without_mask: float  # p(not properly masked) = 1 - p(with_mask); p(without_mask) for a 2-class model
    label: str  # "with_mask", "without_mask" or (3-class models only) "incorrect_mask"
    p_incorrect_mask: float | None = None  # None for a 2-class model

    def to_json(self) -> dict:
        out = {
            "box": [round(v, 1) for v in self.face.box],
            "score": round(self.face.score, 4),
            "p_without_mask": round(self.p_without_mask, 4),
            "label": self.label,
        }
        if self.p_incorrect_mask is not None:
            out["p_incorrect_mask"] = round(self.p_incorrect_mask, 4)
        return out


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Seconds one `Pipeline.run` spent in each of its two stages (time.perf_counter, wall clock)."""

    detect: float  # every detector look (two for a large still photo with photos=True) and the lores -> main scaling
    classify: float  # cropping, the model and labelling; exactly 0.0 when no face was found (nothing to classify)


def label_of(probs: np.ndarray, labels: tuple[str, ...], p_not_masked: float, threshold: float) -> str:
    """The face's label: with_mask below the threshold; above it, whichever unmasked class is more likely."""
    if p_not_masked < threshold:
        return MASKED
    if INCORRECT in labels and probs[labels.index(INCORRECT)] > probs[labels.index(POSITIVE)]:
        return INCORRECT
    return POSITIVE


class Pipeline:
    """Detect, then classify every face found: `run(frame)` gives each face's label and probabilities, and leaves
    in `times` how long each stage took on that frame (the frame loop reports them as the stage histograms)."""

    def __init__(self, detector: FaceDetector, classifier: MaskClassifier, threshold: float | None = None):
        self.detector, self.classifier = detector, classifier
        self.threshold_override = threshold
        # An attribute beside run()'s result, not in it: run() keeps its return value for every other caller
        # (detect, evaluate, visits, the tests that wrap it). Read it right after run(), on the same thread.
        self.times = StageTimes(0.0, 0.0)

    @classmethod
    def from_config(cls, cfg: Config, model: MaskClassifier | None = None, photos: bool = False) -> Pipeline:
        """The detector of `[detector]`, the classifier of `[classifier]` (or `model`, already loaded: the service's
        model watcher and `mask-train evaluate` load their own) and `[classifier] threshold` (unset: the card's).
        `photos`: for still photos (`mask-appliance detect`, scoring on labelled photos), whose detector may take a
        second look ([detector] photo_sides); the door's frame loop, videos and visits leave it off.

        Raises what make_detector and load_model raise (a missing asset, a model that fails its card) before
        anything is returned, so a caller never holds half a pipeline."""
        detector = make_detector(cfg.detector, photos)
        if model is None:
            model = load_model(cfg.classifier.model, cfg.classifier.threads)
        return cls(detector, model, cfg.classifier.threshold)

    @property
    def threshold(self) -> float:
        return self.threshold_override if self.threshold_override is not None else self.classifier.threshold

    def run(self, frame: Frame) -> list[FaceResult]:
        """The faces of `frame`, labelled; `self.times` then holds this frame's detect and classify seconds."""
        started = time.perf_counter()
        faces = self.detect(frame)
        detected = time.perf_counter()
        results = self.classify(frame, faces)
        self.times = StageTimes(detected - started, time.perf_counter() - detected if faces else 0.0)
        return results

    def detect(self, frame: Frame) -> list[Face]:
        """The faces of `frame`, found on its low-res stream where it has one, with boxes in main-stream pixels."""
        small = frame.lores if frame.lores is not None else frame.image
        faces = self.detector.detect(small)
        if small is not frame.image:  # boxes found on the low-res stream, in main-stream pixels
            sx = frame.image.shape[1] / small.shape[1]
            sy = frame.image.shape[0] / small.shape[0]
            faces = [Face((f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy), f.score,
                          tuple((x * sx, y * sy) for x, y in f.landmarks)) for f in faces]
        return faces

    def classify(self, frame: Frame, faces: list[Face]) -> list[FaceResult]:
        """`faces` (found in `frame`, e.g. by another pipeline's detect) labelled by this pipeline's model at its
        threshold: several models can judge one detection pass. No face, no model run. Leaves `times` alone."""
        if not faces:
            return []
        model = self.classifier
        probs = model.classify_all(frame.image, [f.box for f in faces])
        p_not = model.not_masked(probs)
        incorrect = model.card.incorrect_index
        return [FaceResult(f, float(p), label_of(row, model.labels, float(p), self.threshold),
                           None if incorrect is None else float(row[incorrect]))
                for f, row, p in zip(faces, probs, p_not, strict=True)]
