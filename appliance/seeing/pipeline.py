"""One frame -> faces with p(not properly masked): the detector and classifier stages.

`run(frame)` detects and classifies every frame it is given (still photos, evaluation). `step(frame)` is the door's:
one frame of a stream, whose detector runs only where the motion gate (motion.py) says something changed, or every
`[detector] idle_every` seconds; in between, the faces last found are carried forward unchanged, so the policy's
tracks go on as if the detector had found them again (it would: the frame is the one they were found on, within the
motion threshold). And step() runs the model only on the faces that need it (schedule.py, `[schedule]`): a settled
face that barely moved keeps its last verdict for a few frames."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from appliance.config import Config, ScheduleConfig
from appliance.seeing.card import INCORRECT, MASKED, POSITIVE
from appliance.seeing.classifier import MaskClassifier, load_model
from appliance.seeing.detector import Face, FaceDetector, make_detector
from appliance.seeing.motion import MotionGate
from appliance.seeing.schedule import FaceSchedule
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

    detect: float  # every detector look (two for a large still photo with photos=True) and the lores -> main scaling;
    # with step(), also the motion gate's look (all of it on a frame the gate let pass)
    classify: float  # cropping, the model and labelling; exactly 0.0 when no face was found (nothing to classify)
    detected: bool = True  # the detector ran on this frame (False: step()'s gate carried the last faces forward)
    classified: int = 0  # faces the model ran on


def label_of(probs: np.ndarray, labels: tuple[str, ...], p_not_masked: float, threshold: float) -> str:
    """The face's label: with_mask below the threshold; above it, whichever unmasked class is more likely."""
    if p_not_masked < threshold:
        return MASKED
    if INCORRECT in labels and probs[labels.index(INCORRECT)] > probs[labels.index(POSITIVE)]:
        return INCORRECT
    return POSITIVE


def _moved(result: FaceResult, face: Face) -> FaceResult:
    """`result`'s verdict on `face`, its box on this frame."""
    return FaceResult(face, result.p_without_mask, result.label, result.p_incorrect_mask)


class Pipeline:
    """Detect, then classify every face found: `run(frame)` gives each face's label and probabilities, and leaves
    in `times` how long each stage took on that frame (the frame loop reports them as the stage histograms).
    `step(frame)` is the same for the door's stream of frames, with motion gating and per-face scheduling."""

    def __init__(self, detector: FaceDetector, classifier: MaskClassifier, threshold: float | None = None,
                 schedule: ScheduleConfig | None = None):
        self.detector, self.classifier = detector, classifier
        self.schedule_cfg = schedule or ScheduleConfig()
        self.threshold_override = threshold
        # An attribute beside run()'s result, not in it: run() keeps its return value for every other caller
        # (detect, evaluate, visits, the tests that wrap it). Read it right after run(), on the same thread.
        self.times = StageTimes(0.0, 0.0)
        self.gate = MotionGate()  # step()'s: the frames of one stream
        self._faces: list[Face] = []  # the faces step() last found
        self._gated_for: FaceDetector | None = None  # the detector the gate's reference was detected with
        self.schedule = FaceSchedule()  # step()'s: which faces the model runs on

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
        return cls(detector, model, cfg.classifier.threshold, cfg.schedule)

    @property
    def threshold(self) -> float:
        return self.threshold_override if self.threshold_override is not None else self.classifier.threshold

    def run(self, frame: Frame) -> list[FaceResult]:
        """The faces of `frame`, labelled; `self.times` then holds this frame's detect and classify seconds."""
        started = time.perf_counter()
        faces = self.detect(frame)
        detected = time.perf_counter()
        results = self.classify(frame, faces)
        self.times = StageTimes(detected - started, time.perf_counter() - detected if faces else 0.0, True, len(faces))
        return results

    def step(self, frame: Frame) -> list[FaceResult]:
        """One frame of a stream (the door's frame loop): as run(), but with `[detector] motion_gating` the detector
        runs only on a frame the motion gate finds changed, the first, and one every `idle_every` seconds; on the
        others the faces found last are carried forward (and classified again on this frame). `times.detected` says
        which it was. Only the faces the schedule says are due are classified (`times.classified`); the others keep
        their last verdict with their new box. Tell the schedule which faces' tracks are settled with settled()."""
        started = time.perf_counter()
        cfg = self.detector.cfg
        if self._gated_for is not self.detector:  # a reload brought another detector: look again at once
            self.gate.reset()
            self._gated_for = self.detector
        small = frame.lores if frame.lores is not None else frame.image
        detected = not cfg.motion_gating or self.gate.look(small, frame.t, cfg)
        if detected:
            self._faces = self.detect(frame)
        faces = self._faces
        looked = time.perf_counter()
        model, threshold = self.classifier, self.threshold
        plan = self.schedule.plan(faces, self.schedule_cfg, model, threshold)
        fresh = self.classify(frame, [faces[i] for i in plan.due])  # in the order that reaches a deny soonest
        got = dict(zip(plan.due, fresh, strict=True))
        results = [got[i] if i in got else _moved(plan.reuse[i].result, f) for i, f in enumerate(faces)]
        self.schedule.remember(results, plan, model, threshold)
        self.times = StageTimes(looked - started, time.perf_counter() - looked if faces else 0.0, detected,
                                len(plan.due))
        return results

    def settled(self, flags: list[bool]) -> None:
        """Whether the track of each face the last step() gave (in its order) is settled: the frame loop says so
        after the policy has seen them, and only a settled face may keep its verdict on the next frame."""
        self.schedule.settle(flags)

    def restart(self) -> None:
        """A new stream (a visit, a reopened source): the next step() detects and classifies every face."""
        self.gate.reset()
        self.schedule.reset()

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
        probs = model.classify_all(frame.image, [f.box for f in faces], [f.landmarks for f in faces])
        p_not = model.not_masked(probs)
        incorrect = model.card.incorrect_index
        return [FaceResult(f, float(p), label_of(row, model.labels, float(p), self.threshold),
                           None if incorrect is None else float(row[incorrect]))
                for f, row, p in zip(faces, probs, p_not, strict=True)]
