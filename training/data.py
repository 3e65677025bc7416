"""Training data sources -> arrays: folders of face crops (stratified split) and scene sets with labelled face
boxes (cut as the appliance cuts them, split by photo with training.splits)."""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from appliance.seeing.card import LABELS, LABELS_2, Crop
from appliance.seeing.imaging import IMAGE_SUFFIXES, aligned_crop, pad_to_square, read_bgr, usable_landmarks

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data folder is missing, empty or unusable."""


@dataclass
class CropSet:
    images: np.ndarray  # N x S x S x 3, RGB uint8
    labels: np.ndarray  # N, int (index into LABELS)
    paths: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable files, "path: reason"
    aligned: int | None = None  # as loaded: how many crops were cut aligned by landmarks (None: not asked for)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(LABELS)}

    def subset(self, idx: np.ndarray) -> CropSet:
        return CropSet(self.images[idx], self.labels[idx], [self.paths[i] for i in idx])

    @staticmethod
    def concat(sets: list[CropSet]) -> CropSet:
        return CropSet(np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets]),
                       [p for s in sets for p in s.paths], [k for s in sets for k in s.skipped])


def list_crops(root: Path) -> list[tuple[Path, int]]:
    """(path, label index) for every file under root/<label>/, in a stable order. with_mask/ and without_mask/ are
    needed; incorrect_mask/ is optional."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    items: list[tuple[Path, int]] = []
    for index, label in enumerate(LABELS):
        folder = root / label
        if label not in LABELS_2 and not folder.exists():
            continue
        if not folder.is_dir():
            raise DataError(f"{folder}: class folder missing (expected one sub-folder per class: "
                            f"{', '.join(LABELS_2)}, optionally {LABELS[2]})")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{folder}: class {label!r} has no files")
        items.extend((p, index) for p in files)
    return items


def load_crops(root: Path, size: int, align: bool = False) -> CropSet:
    """Read every crop under root/<label>/ padded square and resized to size; skip and list what cannot be read.
    With `align`, each padded crop in which YuNet finds a face with usable landmarks is aligned by them
    (imaging.aligned_crop, as the door cuts an aligned model's faces); the others stay as they are."""
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
        if (label in LABELS_2 or (Path(root) / label).exists()) and not (labels_arr == index).any():
            raise DataError(f"{Path(root) / label}: class {label!r} has no readable images")
    crops = CropSet(np.stack(images), labels_arr, paths, skipped)
    return _aligned(crops, root) if align else crops


def _aligned(crops: CropSet, root: Path) -> CropSet:
    """`crops` (just read: changed in place) with each one whose own landmarks (YuNet on the crop itself) are usable
    replaced by its aligned crop."""
    from training.synth import landmarks  # synth imports this module

    size = crops.images.shape[1]
    aligned = 0
    for i, lm in enumerate(landmarks(crops.images)):
        if usable_landmarks(lm, (0, 0, size, size)):
            crops.images[i] = aligned_crop(crops.images[i], lm, size)
            aligned += 1
    log.info("%s: %d crops aligned by their landmarks, %d kept padded (no usable landmarks found)", root, aligned,
             len(crops) - aligned)
    crops.aligned = aligned
    return crops


# Which boxes a scene set's faces are cut from (--scene-boxes). "labelled": the set's own boxes. "detected": the
# detector's box paired with each labelled face (IoU > DETECTED_IOU; the labelled box where none is), which is what
# the door cuts, whatever convention the set was labelled by. "both": every labelled box, and the detected ones too.
# With an aligned crop (Crop.align) the paired detection's landmarks cut the face whatever the choice; "both" then
# cuts the labelled box by the box, else it would give the same aligned crop twice.
SCENE_BOXES = ("labelled", "detected", "both")
DETECTED_IOU = 0.3


def load_scene_crops(labels_csv: Path, photos: list[str], size: int, crop: Crop, boxes: str = "labelled") -> CropSet:
    """Every labelled face of `photos` (paths as split_scenes gives them) cut as the appliance cuts a detected box
    (the card's crop), RGB, from the boxes `boxes` names (SCENE_BOXES). `paths` name the photo and the box. With
    `crop.align`, a face paired with a detection is cut aligned by that detection's landmarks, the others by box."""
    from appliance.seeing.classifier import crop_faces

    if boxes not in SCENE_BOXES:
        raise DataError(f"scene boxes {boxes!r}: expected one of {', '.join(SCENE_BOXES)}")
    detector = _photo_detector() if boxes != "labelled" or crop.align else None
    by_image = read_scene_labels(labels_csv)
    images: list = []
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[str] = []
    aligned = 0
    for photo in photos:
        faces = by_image.get(photo, [])
        bgr = read_bgr(Path(photo))
        if bgr is None:
            skipped.append(f"{photo}: unreadable or corrupt image")
            continue
        cut: list[tuple] = [(f.box, f.label, ()) for f in faces]
        if detector is not None:
            cut = _detected_cuts(bgr, faces, detector, boxes)
        images.append(crop_faces(bgr, [box for box, _, _ in cut], crop, size, [lm for _, _, lm in cut]))
        labels.extend(label for _, label, _ in cut)
        paths.extend(f"{photo}#{','.join(str(round(v)) for v in box)}" for box, _, _ in cut)
        aligned += sum(usable_landmarks(lm, box) for box, _, lm in cut) if crop.align else 0
    for line in skipped:
        log.warning("skipped %s", line)
    if not labels:
        raise DataError(f"{labels_csv}: no readable labelled faces")
    if crop.align:
        log.info("%s: %d faces cut aligned by their detection's landmarks, %d by their box", labels_csv, aligned,
                 len(labels) - aligned)
    return CropSet(np.concatenate(images), np.array(labels, dtype=np.int64), paths, skipped,
                   aligned if crop.align else None)


def _photo_detector():
    from appliance.config import DetectorConfig
    from appliance.seeing.detector import make_detector

    return make_detector(DetectorConfig(), photos=True)


def _detected_cuts(bgr: np.ndarray, faces: list[LabelledFace], detector, boxes: str) -> list[tuple]:
    """(box, label, landmarks) to cut for each labelled face: with a paired detection, its landmarks and the box
    `boxes` names (for "both", the labelled box without landmarks as well); without one, the labelled box alone."""
    from appliance.boxes import pair

    found = detector.detect(bgr)
    cuts: list[tuple] = []
    for face, j in zip(faces, pair([f.box for f in faces], [f.box for f in found], DETECTED_IOU), strict=True):
        if j is None or boxes == "both":
            cuts.append((face.box, face.label, ()))
        if j is not None:
            cuts.append((face.box if boxes == "labelled" else found[j].box, face.label, found[j].landmarks))
    return cuts


def file_hash(paths: list[Path]) -> str:
    """sha256 over the bytes of the given files, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def content_hash(crops: CropSet) -> str:
    """sha256 over (label, file bytes) of every crop used, in order: names the exact data a model saw."""
    digest = hashlib.sha256()
    for path, label in zip(crops.paths, crops.labels, strict=True):
        digest.update(f"{LABELS[label]}\0".encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def fold_incorrect(labels: np.ndarray) -> np.ndarray:
    """Labels for a 2-class model: incorrect_mask counts as without_mask (a mask under the nose protects nobody)."""
    return np.where(labels == LABELS.index("incorrect_mask"), LABELS.index("without_mask"), labels)


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


def class_weights(labels: np.ndarray, power: float = 1.0) -> dict[int, float]:
    """Inverse-frequency weights over the classes present, as Keras' `class_weight` takes them: (share of the
    class)^-power, scaled so that the average crop weighs 1. power 1: each class weighs as much in all; 0.5: the
    square root of that, which lifts a rare class less far above the others."""
    counts = np.bincount(labels, minlength=len(LABELS)).astype(float)
    present = int((counts > 0).sum())
    raw = {i: (len(labels) / (present * c)) ** power for i, c in enumerate(counts) if c}
    scale = len(labels) / sum(raw[i] * counts[i] for i in raw)
    return {i: float(w * scale) for i, w in raw.items()}


@dataclass
class LabelledFace:
    image: str
    box: tuple[float, float, float, float]
    label: int  # index into LABELS

    @property
    def size(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


def read_scene_labels(labels_csv: Path) -> dict[str, list[LabelledFace]]:
    """labels.csv (image_path,x1,y1,x2,y2,label; paths relative to its folder) grouped by image."""
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise FileNotFoundError(f"{labels_csv}: scene labels not found")
    by_image: dict[str, list[LabelledFace]] = defaultdict(list)
    with open(labels_csv, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
                label = LABELS.index(row["label"])
            except (KeyError, ValueError, TypeError):
                raise ValueError(f"{labels_csv}:{line}: bad row {row}") from None
            path = str(labels_csv.parent / row["image_path"])
            by_image[path].append(LabelledFace(path, box, label))  # type: ignore[arg-type]
    return dict(by_image)
