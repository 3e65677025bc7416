"""training/splits.py: scene sets split by photo, near-duplicates kept together, the same split every time."""

from __future__ import annotations

import shutil

import cv2
from support.data import SHARED

from training import splits

ILC = SHARED / "datasets" / "scenes-ilc" / "labels.csv"


def test_scenes_ilc_splits_by_photo_about_a_quarter_to_validation_and_the_same_every_time():
    train, val = splits.split_scenes(ILC)
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == splits.scene_photos(ILC)
    assert 0.20 < len(val) / (len(train) + len(val)) < 0.30
    assert splits.split_scenes(ILC) == (train, val)
    other_train, other_val = splits.split_scenes(ILC, seed=1)
    assert other_val != val


def test_a_resized_recompressed_copy_lands_on_the_same_side_as_its_original(tmp_path):
    photos = splits.scene_photos(ILC)[:40]
    for path in photos:
        shutil.copy(path, tmp_path)
    original = tmp_path / "zz-original.jpg"  # named to sort last, so its group is named by another photo
    shutil.copy(photos[0], original)
    image = cv2.imread(str(original))
    copy = cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "aa-copy.jpg"), copy, [cv2.IMWRITE_JPEG_QUALITY, 60])
    names = sorted(str(p) for p in tmp_path.glob("*.jpg"))
    groups = splits.photo_groups(names)
    together = [g for g in groups if str(tmp_path / "aa-copy.jpg") in g][0]
    assert str(original) in together and str(tmp_path / photos[0].rsplit("/", 1)[-1]) in together
    assert sum(len(g) for g in groups) == len(names)
    # unrelated photos stay apart: nearly every group is one photo
    assert sum(len(g) == 1 for g in groups) >= len(groups) - 2
    for seed in range(5):
        train, val = splits.split_photos(names, seed=seed)
        assert (str(tmp_path / "aa-copy.jpg") in val) == (str(original) in val)


def test_an_unreadable_photo_is_its_own_group(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert splits.dhash(broken) is None
    assert splits.photo_groups([str(broken)]) == [[str(broken)]]
