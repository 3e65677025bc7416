"""One frame -> faces with p(without_mask): the detector and classifier stages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.card import LABELS, POSITIVE
from appliance.classifier import MaskClassifier
from appliance.detector import Face, FaceDetector
from appliance.sources import Frame


@dataclass
class FaceResult:
    face: Face
    p_without_mask: float
    label: str

    def to_json(self) -> dict:
        return {
            "box": [round(v, 1) for v in self.face.box],
            "score": round(self.face.score, 4),
            "p_without_mask": round(self.p_without_mask, 4),
            "label": self.label,
        }


class Pipeline:
    def __init__(self, detector: FaceDetector, classifier: MaskClassifier, threshold: float | None = None):
        self.detector, self.classifier = detector, classifier
        self.threshold_override = threshold

    @property
    def threshold(self) -> float:
        return self.threshold_override if self.threshold_override is not None else self.classifier.threshold

    def run(self, frame: Frame) -> list[FaceResult]:
        small = frame.lores if frame.lores is not None else frame.image
        faces = self.detector.detect(small)
        if small is not frame.image:  # boxes found on the low-res stream, in main-stream pixels
            sx = frame.image.shape[1] / small.shape[1]
            sy = frame.image.shape[0] / small.shape[0]
            faces = [Face((f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy), f.score,
                          tuple((x * sx, y * sy) for x, y in f.landmarks)) for f in faces]
        probs = self.classifier.classify(frame.image, [f.box for f in faces]) if faces else np.zeros(0)
        negative = LABELS[1 - LABELS.index(POSITIVE)]
        return [FaceResult(f, float(p), POSITIVE if p >= self.threshold else negative)
                for f, p in zip(faces, probs, strict=True)]
