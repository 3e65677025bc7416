"""Folders of face crops -> arrays, a stratified split, and the classic augmentation as Keras layers."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from appliance.card import LABELS
from appliance.imaging import IMAGE_SUFFIXES, pad_to_square, read_bgr

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data folder is missing, empty or unusable."""


@dataclass
class CropSet:
    images: np.ndarray  # N x S x S x 3, RGB uint8
    labels: np.ndarray  # N, int (index into LABELS)
    paths: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable files, "path: reason"

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(LABELS)}

    def subset(self, idx: np.ndarray) -> CropSet:
        return CropSet(self.images[idx], self.labels[idx], [self.paths[i] for i in idx])


def list_crops(root: Path) -> list[tuple[Path, int]]:
    """(path, label index) for every file under root/<label>/, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    items: list[tuple[Path, int]] = []
    for index, label in enumerate(LABELS):
        folder = root / label
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder missing (expected one sub-folder per class: {', '.join(LABELS)})")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{folder}: class {label!r} has no files")
        items.extend((p, index) for p in files)
    return items


def load_crops(root: Path, size: int) -> CropSet:
    """Read every crop under root/<label>/ padded square and resized to size; skip and list what cannot be read."""
    from tqdm import tqdm

    images, labels, paths, skipped = [], [], [], []
    # disable=None: a progress bar on a terminal, silence in logs and CI.
    for path, label in tqdm(list_crops(root), desc=f"reading {Path(root).name}", unit="img", disable=None):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path}: not an image file")
            continue
        bgr = read_bgr(path)
        if bgr is None:
            skipped.append(f"{path}: unreadable or corrupt image")
            continue
        images.append(cv2.cvtColor(pad_to_square(bgr, size), cv2.COLOR_BGR2RGB))
        labels.append(label)
        paths.append(str(path))
    for line in skipped:
        log.warning("skipped %s", line)
    labels_arr = np.array(labels, dtype=np.int64)
    for index, label in enumerate(LABELS):
        if not (labels_arr == index).any():
            raise DataError(f"{Path(root) / label}: class {label!r} has no readable images")
    return CropSet(np.stack(images), labels_arr, paths, skipped)


def content_hash(crops: CropSet) -> str:
    """sha256 over (label, file bytes) of every crop used, in order: names the exact data a model saw."""
    digest = hashlib.sha256()
    for path, label in zip(crops.paths, crops.labels, strict=True):
        digest.update(f"{LABELS[label]}\0".encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each class split by the same fraction with a fixed seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights, mean 1, as Keras' `class_weight` takes them."""
    counts = np.bincount(labels, minlength=len(LABELS)).astype(float)
    return {i: float(len(labels) / (len(LABELS) * c)) for i, c in enumerate(counts) if c}


def augmentation():
    """The classic recipe (rotation 20 degrees, zoom 0.15, shifts 0.2, shear 0.15, horizontal flip) as layers."""
    import keras

    layers = [
        keras.layers.RandomRotation(20 / 360, fill_mode="nearest"),
        keras.layers.RandomZoom(0.15, fill_mode="nearest"),
        keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest"),
        keras.layers.RandomShear(x_factor=0.15, y_factor=0.15, fill_mode="nearest"),
        keras.layers.RandomFlip("horizontal"),
    ]
    return keras.Sequential(layers, name="augmentation")
