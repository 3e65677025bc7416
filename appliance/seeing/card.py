"""The model card: the JSON file beside a .tflite model that tells the appliance how to use it.

Training writes it and the appliance reads it, so labels, input size, pixel range, crop geometry, quantization
and the decision threshold are defined once, here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
# Every class a model may have, in output order. A 2-class model has the first two; a 3-class one all three.
LABELS = ("with_mask", "without_mask", "incorrect_mask")
LABELS_2 = LABELS[:2]
LABEL_SETS = (LABELS_2, LABELS)
MASKED = "with_mask"  # the only class the door lets through: p(not properly masked) = 1 - p(with_mask)
POSITIVE = "without_mask"  # the class the door reacts to
INCORRECT = "incorrect_mask"  # a mask under the nose or chin: not properly masked


class CardError(ValueError):
    """A model card is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Quant:
    """An int8 tensor's quantization: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class Tensor:
    """A model input's or output's type, and its quantization where it is an integer."""

    dtype: str  # "int8", "uint8" or "float32"
    quant: Quant | None = None


@dataclass(frozen=True)
class Crop:
    """How a face box becomes a classifier input: grown by `margin` of its size on each side, squared around its
    centre, padded with edge pixels where it leaves the frame, then resized (never stretched). With `align`, a face
    with usable landmarks is instead turned upright and scaled onto a fixed five-point template
    (imaging.aligned_crop, framed like the square crop of a YuNet box); the others are still cut by their box."""

    margin: float = 0.15
    square: bool = True
    align: bool = False

    def to_dict(self) -> dict[str, Any]:
        """As a card writes it: `align` only when on, so a card of a box-crop model reads as it always did."""
        d = asdict(self)
        if not self.align:
            del d["align"]
        return d


@dataclass(frozen=True)
class ModelCard:
    """The model card (the .json beside the model): the one place both sides read the labels, input size, crop
    and threshold from, with the model's sha256 and the figures that chose it."""

    model_file: str
    sha256: str
    input_size: int
    input: Tensor
    output: Tensor
    labels: tuple[str, ...] = LABELS_2
    # Pixels go in as RGB 0..255; the model rescales them itself (MobileNetV2's x/127.5 - 1 is its first layer).
    color: str = "RGB"
    crop: Crop = field(default_factory=Crop)
    threshold: float = 0.5
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def positive_index(self) -> int:
        return self.labels.index(POSITIVE)

    @property
    def masked_index(self) -> int:
        return self.labels.index(MASKED)

    @property
    def incorrect_index(self) -> int | None:
        """The output of the incorrect_mask class, or None for a 2-class model."""
        return self.labels.index(INCORRECT) if INCORRECT in self.labels else None

    def to_json(self) -> str:
        d = {**asdict(self), "crop": self.crop.to_dict()}  # same key order: crop stays where asdict put it
        return json.dumps(finite(d), indent=2, sort_keys=False, allow_nan=False) + "\n"

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (a rate over no faces) made None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def card_path_for(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def _tensor(d: dict[str, Any]) -> Tensor:
    q = d.get("quant")
    return Tensor(dtype=d["dtype"], quant=Quant(float(q["scale"]), int(q["zero_point"])) if q else None)


def load_card(path: Path) -> ModelCard:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CardError(f"{path}: model card not found (it must sit beside the .tflite file)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: unreadable model card ({exc})") from None
    try:
        if d.get("schema") != SCHEMA:
            raise CardError(f"{path}: schema {d.get('schema')!r} is not {SCHEMA}")
        card = ModelCard(
            model_file=d["model_file"],
            sha256=d["sha256"],
            input_size=int(d["input_size"]),
            input=_tensor(d["input"]),
            output=_tensor(d["output"]),
            labels=tuple(d["labels"]),
            color=d.get("color", "RGB"),
            crop=Crop(**d.get("crop", {})),
            threshold=float(d["threshold"]),
            training=d.get("training", {}),
            metrics=d.get("metrics", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CardError):
            raise
        raise CardError(f"{path}: missing or bad field {exc}") from None
    if not any(set(card.labels) == set(ls) and len(card.labels) == len(ls) for ls in LABEL_SETS):
        raise CardError(f"{path}: labels {list(card.labels)} are not {list(LABELS_2)} or {list(LABELS)}")
    if not 0.0 < card.threshold < 1.0:
        raise CardError(f"{path}: threshold {card.threshold} is not between 0 and 1")
    if not isinstance(card.crop.align, bool):  # "false" or 0 would read as a choice nobody made
        raise CardError(f"{path}: crop.align {card.crop.align!r} is not true or false")
    return card
