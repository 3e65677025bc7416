"""Keras model -> full-integer int8 TFLite (calibrated on real crops), a parity gate, and the model card.

Longer than this project's 200-line guide: export, the parity check and the int8-to-float recovery share the same
quantization details.
"""

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

from appliance.seeing.card import LABELS, LABELS_2, MASKED, Crop, ModelCard, Quant, Tensor, card_path_for
from appliance.seeing.classifier import MaskClassifier

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
        return self.agreement >= min_agreement and self.accuracy_drop <= max_drop(min_agreement)


def max_drop(min_agreement: float) -> float:
    """The accuracy the int8 model may lose: MAX_ACCURACY_DROP, or as many decisions as a lowered agreement gate lets
    differ (a smoke run on a few dozen crops, where one crop is several points)."""
    return max(MAX_ACCURACY_DROP, 1.0 - min_agreement)


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
    from appliance.seeing.classifier import interpreter_class

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
                f"{check.accuracy_drop * 100:.2f} points (allowed <= {max_drop(min_agreement) * 100:.1f})"
            )
        card = replace(card, metrics={**card.metrics, "parity": {**check.__dict__, "min_agreement": min_agreement}})
        # The card goes first, then the model by atomic rename: a reader never sees a model without its card.
        card.save(card_path_for(out_path))
        tmp_model.replace(out_path)
    return card, check


# -- back: int8 TFLite -> Keras -----------------------------------------------------------------------------------
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


class RecoveryError(ValueError):
    """The .tflite is not a model this kit exported, so its weights cannot be put back into the Keras network."""


def _dequantized(interp, index: int) -> np.ndarray:
    detail = next(t for t in interp.get_tensor_details() if t["index"] == index)
    q = interp.get_tensor(index)
    scales = detail["quantization_parameters"]["scales"]
    if not scales.size:  # stored as float already
        return q.astype(np.float32)
    zero = detail["quantization_parameters"]["zero_points"]
    axis = detail["quantization_parameters"]["quantized_dimension"]
    shape = [1] * q.ndim
    if scales.size > 1:
        shape[axis] = scales.size
    return ((q.astype(np.float32) - zero.reshape(shape).astype(np.float32)) * scales.reshape(shape)).astype(np.float32)


def keras_from_tflite(model_path: Path, base_weights: str | None = None, alpha: float | None = None):
    """The Keras network (training.model.build_model) with the weights of an int8 model this kit exported: each
    convolution and dense layer gets its dequantized int8 kernel and int32 bias. The converter folded every batch
    norm into the convolution before it, so each batch norm becomes the identity plus that bias. The float model
    this gives reproduces the int8 model as the float model it was exported from did (within quantization);
    `mask-train train --init` fine-tunes from it when the model's own Keras checkpoint is not at hand.
    `base_weights` is not needed (every weight is replaced); `alpha`: default the card's."""
    import keras
    import tensorflow as tf

    from appliance.seeing.card import load_card
    from training.model import build_model

    model_path = Path(model_path)
    card = load_card(card_path_for(model_path))
    data = model_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != card.sha256:
        raise RecoveryError(f"{model_path}: its sha256 is not its card's; refusing to fine-tune from it")
    alpha = alpha if alpha is not None else float(card.training.get("config", {}).get("alpha", 1.0))
    model = build_model(card.input_size, alpha, base_weights, len(card.labels))
    interp = tf.lite.Interpreter(model_content=data)
    interp.allocate_tensors()
    ops = [op for op in interp._get_ops_details() if op["op_name"] in WEIGHTED_OPS]
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    layers = [(layer, base.layers) for layer in base.layers
              if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)]
    layers += [(layer, model.layers) for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if len(ops) != len(layers):
        raise RecoveryError(f"{model_path}: {len(ops)} weighted operations, but the network has {len(layers)} "
                            f"weighted layers (MobileNetV2 alpha {alpha}, {len(card.labels)} classes)")
    for op, (layer, siblings) in zip(ops, layers, strict=True):
        kernel = _dequantized(interp, op["inputs"][1])
        bias = _dequantized(interp, op["inputs"][2]) if len(op["inputs"]) > 2 and op["inputs"][2] >= 0 else None
        if op["op_name"] == "CONV_2D":
            kernel = kernel.transpose(1, 2, 3, 0)  # O,h,w,I -> h,w,I,O
        elif op["op_name"] == "DEPTHWISE_CONV_2D":
            want = layer.kernel.shape  # h,w,C,M
            kernel = kernel[0].reshape(want)  # 1,h,w,C*M -> h,w,C,M
        else:
            kernel = kernel.T  # O,I -> I,O
        if tuple(kernel.shape) != tuple(layer.kernel.shape):
            raise RecoveryError(f"{model_path}: operation {op['index']} ({op['op_name']}) has a {kernel.shape} "
                                f"kernel where layer {layer.name} wants {tuple(layer.kernel.shape)}")
        bias = np.zeros(kernel.shape[-1] if op["op_name"] != "DEPTHWISE_CONV_2D" else kernel.shape[2] *
                        kernel.shape[3], np.float32) if bias is None else bias
        if isinstance(layer, keras.layers.Dense):
            layer.set_weights([kernel, bias])
            continue
        norm = siblings[siblings.index(layer) + 1]
        if not isinstance(norm, keras.layers.BatchNormalization) or layer.use_bias:
            raise RecoveryError(f"{model_path}: layer {layer.name} is not followed by a batch norm")
        layer.set_weights([kernel])
        ones = np.ones_like(bias)
        # y = gamma * (x - mean) / sqrt(var + eps) + beta with mean 0, var 1, gamma sqrt(1 + eps): y = x + beta.
        norm.set_weights([np.sqrt(ones + norm.epsilon).astype(np.float32), bias.astype(np.float32),
                          np.zeros_like(bias), ones])
    return model
