"""Face crops -> p(not properly masked), with a LiteRT interpreter and what the model card says about the model.

A 2-class model gives p(without_mask); a 3-class model (with_mask, without_mask, incorrect_mask) gives
1 - p(with_mask), since a mask under the nose or chin protects nobody. `predict_all` gives every class."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from appliance.seeing.card import Crop, ModelCard, card_path_for, load_card
from appliance.seeing.imaging import aligned_crop, square_crop, usable_landmarks

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model file or its card cannot be used."""


def interpreter_class():
    # LiteRT is the Pi's runtime; the older names are fallbacks for machines that have only those.
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf  # a desktop with only TensorFlow

            Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter


def crop_faces(frame_bgr: np.ndarray, boxes: Sequence[Sequence[float]], crop: Crop, size: int,
               landmarks: Sequence[Sequence[tuple[float, float]]] | None = None) -> np.ndarray:
    """N x size x size x 3 RGB crops of `boxes` from a BGR frame, squared and padded as the card says. With the
    card's `crop.align`, a box whose `landmarks` (one entry per box: the Face's five points, or () for none) are
    usable is cut aligned instead; the others, and every box where no landmarks are given, by the box."""
    if landmarks is None or not crop.align:
        landmarks = [()] * len(boxes)
    crops = [aligned_crop(frame_bgr, lm, size) if usable_landmarks(lm, b) else
             square_crop(frame_bgr, (b[0], b[1], b[2], b[3]), crop.margin, size)
             for b, lm in zip(boxes, landmarks, strict=True)]
    if not crops:
        return np.zeros((0, size, size, 3), np.uint8)
    return cv2.cvtColor(np.concatenate(crops, axis=0), cv2.COLOR_BGR2RGB).reshape(len(crops), size, size, 3)


class MaskClassifier:
    """A .tflite model and its card. `predict` takes RGB crops (N x S x S x 3 uint8) and returns p(not properly
    masked); `predict_all` returns every class's probability in the card's label order."""

    def __init__(self, model_path: Path, num_threads: int = 2, card: ModelCard | None = None):
        self.path = Path(model_path)
        self.card = card or load_card(card_path_for(self.path))
        try:
            # Read once and run from memory: the interpreter would otherwise mmap the file, and a file copied over
            # in place would change the model under the running service. The hash is of the very bytes that run.
            content = self.path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"{self.path}: model file not found") from None
        self.sha256 = hashlib.sha256(content).hexdigest()
        if self.sha256 != self.card.sha256:
            raise ModelError(f"{self.path}: sha256 {self.sha256[:12]}... does not match its card's "
                             f"{self.card.sha256[:12]}...")
        try:
            self._interp = interpreter_class()(model_content=content, num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: not a loadable TFLite model ({exc})") from None
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        s = self.card.input_size
        if tuple(inp["shape"][1:]) != (s, s, 3):
            raise ModelError(f"{self.path}: input shape {list(inp['shape'])} does not match card size {s}")
        if out["shape"][-1] != len(self.card.labels):
            raise ModelError(f"{self.path}: output shape {list(out['shape'])} does not match card labels")
        if np.dtype(inp["dtype"]).name != self.card.input.dtype:
            raise ModelError(f"{self.path}: input dtype {np.dtype(inp['dtype']).name} is not the card's "
                             f"{self.card.input.dtype}")
        self._in, self._out = inp, out
        self._batch = int(inp["shape"][0])
        self._positive = self.card.positive_index
        self._masked = self.card.masked_index

    @property
    def labels(self) -> tuple[str, ...]:
        return self.card.labels

    @property
    def n_classes(self) -> int:
        return len(self.card.labels)

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def _quantize(self, rgb: np.ndarray) -> np.ndarray:
        t = self.card.input
        if t.quant is None:
            return rgb.astype(np.float32)
        info = np.iinfo(np.dtype(t.dtype))
        q = np.round(rgb.astype(np.float32) / t.quant.scale + t.quant.zero_point)
        return np.clip(q, info.min, info.max).astype(t.dtype)

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        t = self.card.output
        if t.quant is None:
            return raw.astype(np.float32)
        return (raw.astype(np.float32) - t.quant.zero_point) * t.quant.scale

    def predict_all(self, crops_rgb: np.ndarray) -> np.ndarray:
        """N x classes probabilities, in the card's label order."""
        if len(crops_rgb) == 0:
            return np.zeros((0, self.n_classes), np.float32)
        x = self._quantize(crops_rgb)
        probs = []
        # The model has a fixed batch of one (what LiteRT runs fastest on a Pi): a tight loop over the crops.
        for i in range(0, len(x), self._batch):
            chunk = x[i : i + self._batch]
            self._interp.set_tensor(self._in["index"], chunk)
            self._interp.invoke()
            probs.append(self._dequantize(self._interp.get_tensor(self._out["index"])))
        return np.clip(np.concatenate(probs), 0.0, 1.0)

    def not_masked(self, probs: np.ndarray) -> np.ndarray:
        """p(not properly masked) from `predict_all`'s rows."""
        if self.n_classes == 2:  # exactly the 2-class model's own output, as before the third class
            return probs[:, self._positive]
        return np.clip(1.0 - probs[:, self._masked], 0.0, 1.0)

    def predict(self, crops_rgb: np.ndarray) -> np.ndarray:
        """p(not properly masked) for each crop."""
        return self.not_masked(self.predict_all(crops_rgb))

    def classify_all(self, frame_bgr: np.ndarray, boxes: Sequence[Sequence[float]],
                     landmarks: Sequence[Sequence[tuple[float, float]]] | None = None) -> np.ndarray:
        """N x classes probabilities for each box of a BGR frame (with each face's landmarks, where the detector
        gave them: an aligned model's card uses them)."""
        return self.predict_all(crop_faces(frame_bgr, boxes, self.card.crop, self.card.input_size, landmarks))

    def classify(self, frame_bgr: np.ndarray, boxes: Sequence[Sequence[float]],
                 landmarks: Sequence[Sequence[tuple[float, float]]] | None = None) -> np.ndarray:
        """p(not properly masked) for each box of a BGR frame (and its landmarks, as classify_all)."""
        return self.not_masked(self.classify_all(frame_bgr, boxes, landmarks))


def load_model(path: Path, threads: int) -> MaskClassifier:
    """A model that loads, matches its card (sha256, shapes) and gives sane output on a test inference."""
    model = MaskClassifier(path, num_threads=threads)
    s = model.input_size
    probe = np.stack([np.full((s, s, 3), 128, np.uint8), np.random.default_rng(0).integers(0, 255, (s, s, 3),
                                                                                         dtype=np.uint8)])
    p = model.predict_all(probe)
    if p.shape != (2, model.n_classes) or not np.isfinite(p).all():
        raise ModelError(f"{path}: test inference gave {p!r}")
    return model
