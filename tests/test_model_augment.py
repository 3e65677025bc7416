"""The failure-aimed augmentation: what each step changes, and what it must never hide."""

from __future__ import annotations

import numpy as np
import pytest
from support.data import CROPS

from training import augment
from training.data import load_crops

S = 128
# The protected mouth-and-nose region in pixels of a 128 px crop.
X1, Y1, X2, Y2 = (int(v * S) for v in augment.MOUTH_NOSE)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> np.ndarray:
    import shutil

    root = tmp_path_factory.mktemp("aug")
    for label in ("with_mask", "without_mask"):
        (root / label).mkdir()
        for src in sorted((CROPS / label).iterdir())[:6]:
            shutil.copy(src, root / label / src.name)
    return load_crops(root, S).images


def test_erasing_never_touches_mouth_and_nose(faces):
    rng = np.random.default_rng(0)
    changed = 0
    for i in range(300):
        img = faces[i % len(faces)]
        out = augment.erase(img, rng)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert (out[Y1:Y2, X1:X2] == img[Y1:Y2, X1:X2]).all(), i
        changed += not (out == img).all()
    assert changed > 250  # and it does erase something nearly every time


def test_a_neighbour_stays_at_the_border(faces):
    rng = np.random.default_rng(1)
    for i in range(100):
        img, other = faces[i % len(faces)], faces[(i + 1) % len(faces)]
        out = augment.neighbour(img, other, rng)
        assert (out[:, X1:X2] == img[:, X1:X2]).all()
        diff = (out != img).any(axis=(0, 2))
        assert diff.any() and (diff[:X1].any() != diff[X2:].any())  # one side only


def test_photometric_steps_change_pixels_but_not_shape(faces):
    rng = np.random.default_rng(2)
    img = faces[0]
    for step in (augment.colour, augment.low_light, augment.blur, augment.down_up, augment.jpeg, augment.geometric):
        out = step(img, rng)
        assert out.shape == img.shape and out.dtype == np.uint8, step.__name__
        assert np.abs(out.astype(int) - img).mean() > 0.5, step.__name__
    dark = augment.low_light(img, np.random.default_rng(3))
    assert dark.mean() < img.mean() - 10  # darker, as at night


def test_an_epoch_of_batches_covers_every_crop_once(faces):
    labels = np.arange(len(faces))
    seen = []
    for x, y in augment.batches(faces, labels, 5, seed=4):
        assert x.dtype == np.float32 and x.shape[1:] == (S, S, 3) and len(x) == len(y) <= 5
        seen.extend(y.tolist())
    assert sorted(seen) == labels.tolist()
    plain = next(augment.batches(faces, labels, len(faces), seed=4, enabled=False))
    assert (plain[0] == faces[plain[1]]).all()  # without augmentation the crops go in as they are
    other = next(augment.batches(faces, labels, len(faces), seed=5, enabled=False))
    assert plain[1].tolist() != other[1].tolist()  # a new seed, a new order
