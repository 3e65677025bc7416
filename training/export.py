"""Keras model -> full-integer int8 TFLite (calibrated on real crops), a parity gate, and the model card."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from appliance.card import LABELS, LABELS_2, MASKED, Crop, ModelCard, Quant, Tensor, card_path_for
from appliance.classifier import MaskClassifier

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.005


class ParityError(RuntimeError):
    """The quantized model disagrees with the float model too much to ship."""


@dataclass(frozen=True)
class Parity:
    agreement: float
    float_accuracy: float
    quant_accuracy: float
    n: int

    @property
    def accuracy_drop(self) -> float:
        return self.float_accuracy - self.quant_accuracy

    def passes(self, min_agreement: float = MIN_AGREEMENT) -> bool:
        return self.agreement >= min_agreement and self.accuracy_drop <= MAX_ACCURACY_DROP


def convert(model, representative: np.ndarray, io_dtype: str = "int8", float16: bool = False) -> bytes:
    """TFLite bytes: full-integer with `io_dtype` input/output, calibrated on `representative` RGB crops
    (real images, one at a time), or a float16-weight model with float input/output."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    quiet = contextlib.redirect_stdout(io.StringIO())  # the converter prints every captured tensor
    if float16:
        converter.target_spec.supported_types = [tf.float16]
        with quiet:
            return converter.convert()

    def samples():
        for crop in representative:
            yield [crop[None].astype(np.float32)]

    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8 if io_dtype == "int8" else tf.uint8
    converter.inference_output_type = converter.inference_input_type
    with quiet:
        return converter.convert()


def _io_tensors(tflite_path: Path) -> tuple[Tensor, Tensor]:
    from appliance.classifier import interpreter_class

    interp = interpreter_class()(model_path=str(tflite_path))
    details = [interp.get_input_details()[0], interp.get_output_details()[0]]
    tensors = []
    for d in details:
        dtype = np.dtype(d["dtype"]).name
        scale, zero = d["quantization"]
        tensors.append(Tensor(dtype, Quant(float(scale), int(zero)) if dtype in ("int8", "uint8") else None))
    return tensors[0], tensors[1]


def not_masked(probs: np.ndarray) -> np.ndarray:
    """p(not properly masked) from a float model's N x classes output (LABELS order): p(without_mask) for two
    classes, as MaskClassifier computes it, else 1 - p(with_mask)."""
    if probs.shape[1] == 2:
        return probs[:, LABELS.index("without_mask")]
    return np.clip(1.0 - probs[:, LABELS.index(MASKED)], 0.0, 1.0)


def parity(classifier: MaskClassifier, float_probs: np.ndarray, images: np.ndarray, labels: np.ndarray) -> Parity:
    """Compare the quantized model's door decisions with the float model's (both at the card's threshold);
    `float_probs` is the float model's p(not properly masked), `labels` index LABELS."""
    t = classifier.threshold
    quant = classifier.predict(images) >= t
    flt = float_probs >= t
    truth = labels != LABELS.index(MASKED)
    return Parity(
        agreement=float((quant == flt).mean()),
        float_accuracy=float((flt == truth).mean()),
        quant_accuracy=float((quant == truth).mean()),
        n=len(labels),
    )


def export(
    model,
    out_path: Path,
    representative: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    *,
    threshold: float | Callable[[MaskClassifier], float] = 0.5,
    crop: Crop | None = None,
    training: dict | None = None,
    metrics: dict | None = None,
    io_dtype: str = "int8",
    float16: bool = False,
    min_agreement: float = MIN_AGREEMENT,
) -> tuple[ModelCard, Parity]:
    """Convert, check parity on the validation crops, and only then write `out_path` and its card. `threshold` may
    be a function that picks it from the converted model (which then runs under a card with threshold 0.5)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = convert(model, representative, io_dtype=io_dtype, float16=float16)
    float_probs = not_masked(model.predict(val_images.astype(np.float32), batch_size=64, verbose=0))
    n_classes = int(model.output_shape[-1])
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        tmp_model = Path(tmp) / out_path.name
        tmp_model.write_bytes(data)
        inp, out = _io_tensors(tmp_model)
        card = ModelCard(
            model_file=out_path.name,
            sha256=hashlib.sha256(data).hexdigest(),
            input_size=int(model.input_shape[1]),
            input=inp,
            output=out,
            labels=LABELS_2 if n_classes == 2 else LABELS,
            crop=crop or Crop(),
            threshold=0.5 if callable(threshold) else threshold,
            training=training or {},
            metrics=metrics or {},
        )
        if callable(threshold):
            card = replace(card, threshold=float(threshold(MaskClassifier(tmp_model, card=card))))
        check = parity(MaskClassifier(tmp_model, card=card), float_probs, val_images, val_labels)
        log.info("parity on %d crops: agreement %.4f, float accuracy %.4f, tflite accuracy %.4f",
                 check.n, check.agreement, check.float_accuracy, check.quant_accuracy)
        if not check.passes(min_agreement):
            raise ParityError(
                f"{out_path.name}: refused, quantized model agrees with the float model on {check.agreement:.2%} "
                f"of {check.n} validation crops (need >= {min_agreement:.0%}) and its accuracy drops by "
                f"{check.accuracy_drop * 100:.2f} points (allowed <= {MAX_ACCURACY_DROP * 100:.1f})"
            )
        card = replace(card, metrics={**card.metrics, "parity": {**check.__dict__, "min_agreement": min_agreement}})
        # The card goes first, then the model by atomic rename: a reader never sees a model without its card.
        card.save(card_path_for(out_path))
        tmp_model.replace(out_path)
    return card, check
