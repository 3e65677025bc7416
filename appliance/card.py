"""The model card: the JSON file beside a .tflite model that tells the appliance how to use it.

Training writes it and the appliance reads it, so labels, input size, pixel range, crop geometry, quantization
and the decision threshold are defined once, here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
LABELS = ("with_mask", "without_mask")
POSITIVE = "without_mask"  # the class the door reacts to


class CardError(ValueError):
    """A model card is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Quant:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Tensor:
    dtype: str  # "int8", "uint8" or "float32"
    quant: Quant | None = None


@dataclass(frozen=True)
class Crop:
    """How a face box becomes a classifier input: grown by `margin` of its size on each side, squared around its
    centre, padded with edge pixels where it leaves the frame, then resized (never stretched)."""

    margin: float = 0.15
    square: bool = True


@dataclass(frozen=True)
class ModelCard:
    model_file: str
    sha256: str
    input_size: int
    input: Tensor
    output: Tensor
    labels: tuple[str, ...] = LABELS
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())


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
    if set(card.labels) != set(LABELS):
        raise CardError(f"{path}: labels {list(card.labels)} are not {list(LABELS)}")
    if not 0.0 < card.threshold < 1.0:
        raise CardError(f"{path}: threshold {card.threshold} is not between 0 and 1")
    return card
