"""A labelled scene set split by photo: never two faces of one photo, nor two near-duplicate photos, on both sides.

Photos are grouped by a 64-bit difference hash (dHash) of their grey thumbnail: two photos whose hashes differ in
at most NEAR_BITS bits are the same picture re-encoded, resized or lightly cropped, and land in one group. A group
goes to validation when a seeded hash of its first photo's name falls below the validation fraction, so the split
depends only on the file names, the pixels and the seed: it is the same on every machine and in every command that
asks for it (training, evaluation, door visits).
"""

from __future__ import annotations

import csv
import functools
import hashlib
from pathlib import Path

import cv2
import numpy as np

from appliance.seeing.imaging import read_bgr

NEAR_BITS = 6  # of 64: re-encodes and resizes stay within 3-4 bits; unrelated photos sit around 32
DEFAULT_SEED = 20261130
DEFAULT_VAL_FRACTION = 0.25


@functools.cache  # training, evaluation and visits each ask for the split of the same photos
def dhash(path: Path) -> int | None:
    """The photo's 64-bit difference hash, or None when it cannot be read."""
    image = read_bgr(path)
    if image is None:
        return None
    grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (9, 8), interpolation=cv2.INTER_AREA)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def photo_groups(photos: list[str]) -> list[list[str]]:
    """Photos (paths) grouped with their near-duplicates, each group and the list in name order."""
    names = sorted(photos)
    hashes = [dhash(Path(p)) for p in names]
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(hashes):
        if a is None:
            continue
        for j in range(i + 1, len(names)):
            b = hashes[j]
            if b is not None and (a ^ b).bit_count() <= NEAR_BITS:
                parent[root(j)] = root(i)
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        groups.setdefault(root(i), []).append(name)
    return sorted(groups.values())


def _in_validation(name: str, seed: int, fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{Path(name).name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_photos(photos: list[str], val_fraction: float = DEFAULT_VAL_FRACTION,
                 seed: int = DEFAULT_SEED) -> tuple[list[str], list[str]]:
    """(train, validation) photo paths, near-duplicates always on the same side."""
    train: list[str] = []
    val: list[str] = []
    for group in photo_groups(photos):
        (val if _in_validation(group[0], seed, val_fraction) else train).extend(group)
    return sorted(train), sorted(val)


def scene_photos(labels_csv: Path) -> list[str]:
    """Every photo that labels.csv names, as a path (relative to the csv's folder, as read_scene_labels gives it)."""
    labels_csv = Path(labels_csv)
    with open(labels_csv, newline="") as f:
        return sorted({str(labels_csv.parent / row["image_path"]) for row in csv.DictReader(f)})


def split_scenes(labels_csv: Path, val_fraction: float = DEFAULT_VAL_FRACTION,
                 seed: int = DEFAULT_SEED) -> tuple[list[str], list[str]]:
    """The (train, validation) photos of a labelled scene set, split by photo and near-duplicate group."""
    return split_photos(scene_photos(labels_csv), val_fraction, seed)
