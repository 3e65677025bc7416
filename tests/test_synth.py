"""Made under-nose masks (training/synth.py) on real scenes-ilc training crops: the target keeps its eyes and nose,
the donor's mask covers its mouth, the result is labelled incorrect_mask, and the same seed makes the same faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.data import SHARED

from appliance.seeing.classifier import Crop
from training import synth
from training.data import LABELS, CropSet, load_scene_crops
from training.splits import split_scenes

ILC = SHARED / "datasets" / "scenes-ilc" / "labels.csv"


@pytest.fixture(scope="module")
def train_crops() -> CropSet:
    """The masked and unmasked faces of the first 60 training photos of scenes-ilc, cut as the appliance cuts."""
    train_photos, _ = split_scenes(ILC)
    crops = load_scene_crops(ILC, sorted(train_photos)[:60], 128, Crop(margin=0.15))
    keep = np.flatnonzero(crops.labels != LABELS.index("incorrect_mask"))
    return crops.subset(keep)


def test_made_faces_are_incorrect_masks_of_the_requested_number_and_repeatable(train_crops):
    made = synth.under_nose(train_crops, 12, seed=3)
    assert len(made) == 12 and made.images.shape == (12, 128, 128, 3) and made.images.dtype == np.uint8
    assert (made.labels == LABELS.index("incorrect_mask")).all()
    assert all(p.startswith("made: ") and " wearing the mask of " in p for p in made.paths)
    again = synth.under_nose(train_crops, 12, seed=3)
    assert np.array_equal(made.images, again.images) and made.paths == again.paths
    assert not np.array_equal(made.images, synth.under_nose(train_crops, 12, seed=4).images)


def test_the_target_keeps_its_eyes_and_nose_and_wears_the_mask_over_its_mouth(train_crops):
    lm = synth.landmarks(train_crops.images)
    ok = synth.usable(lm, 128)
    target = next(i for i in np.flatnonzero(ok) if train_crops.labels[i] == LABELS.index("without_mask"))
    donor = next(i for i in np.flatnonzero(ok) if train_crops.labels[i] == LABELS.index("with_mask"))
    t, d = train_crops.images[target], train_crops.images[donor]
    made = synth.move_mask(t, lm[target], d, lm[donor], np.random.default_rng(0))
    assert made is not None
    eyes_y = int(lm[target][synth.EYES, 1].mean())
    nose = lm[target][synth.NOSE]
    mouth = lm[target][synth.MOUTH].mean(axis=0)
    # Above the nose tip nothing changes (eyes, brows); the nose tip itself stays the target's own.
    assert np.abs(made[: eyes_y + 2].astype(int) - t[: eyes_y + 2]).max() <= 1
    nx, ny = int(nose[0]), int(nose[1])
    assert np.abs(made[ny - 2:ny + 1, nx - 2:nx + 3].astype(int) - t[ny - 2:ny + 1, nx - 2:nx + 3]).mean() < 3
    # Below the lips the face is the mask now: far from the target's own mouth.
    mx, my = int(mouth[0]), int(min(127, mouth[1] + 4))
    assert np.abs(made[my - 3:my + 4, mx - 6:mx + 7].astype(int) - t[my - 3:my + 4, mx - 6:mx + 7]).mean() > 12


def test_faces_without_landmarks_turned_or_tiny_neither_give_nor_take_a_mask():
    eyes_apart = np.array([[40, 50], [88, 50], [64, 75], [48, 95], [80, 95]], np.float32)
    turned = eyes_apart.copy()
    turned[synth.NOSE, 0] = 64 + 0.3 * 48  # nose tip 0.3 eye distances off centre: a head turned away
    tiny = eyes_apart / 4
    missing = np.full((5, 2), np.nan, np.float32)
    assert synth.usable(np.stack([eyes_apart, turned, tiny, missing]), 128).tolist() == [True, False, False, False]
    assert synth.usable(np.stack([eyes_apart]), 512).tolist() == [False]  # 48 px apart is small in a 512 px crop


def test_no_donor_or_no_target_makes_nothing(train_crops):
    only_masked = train_crops.subset(np.flatnonzero(train_crops.labels == LABELS.index("with_mask")))
    assert len(synth.under_nose(only_masked, 5, seed=1)) == 0
    assert len(synth.under_nose(train_crops, 0, seed=1)) == 0
    # faces in which YuNet finds no face: nothing to move a mask from or to, and no crash
    noise = np.random.default_rng(0).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    assert len(synth.under_nose(CropSet(noise, np.array([0, 1, 0, 1, 0, 1]), [f"n{i}" for i in range(6)]), 5, 1)) == 0


def test_a_training_run_makes_its_masks_from_training_crops_only():
    from training.train import TrainConfig, _prepare

    sources, train_set, val_set, *_ = _prepare(TrainConfig(data=[ILC], out=Path("unused"), input_size=128,
                                                           made_incorrect=20))
    made = sources[-1]
    assert made.info["kind"] == "made" and len(made.train) == 20 and len(made.val) == 0
    used = {q for p in made.train.paths for q in p.removeprefix("made: ").split(" wearing the mask of ")}
    assert len(used) > 20 and used <= set(sources[0].train.paths) and not used & set(val_set.paths)
