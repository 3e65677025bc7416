"""The shipped model against the aims of issue 11, on the validation part of scenes-ilc (never trained on)."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pytest
from support.data import CROPS, SHARED, SHIPPED

from appliance.seeing.card import LABELS, load_card
from appliance.seeing.classifier import load_model
from training.evaluate import labelled_box_scores, read_scene_labels, scene_part

ILC = SHARED / "datasets" / "scenes-ilc" / "labels.csv"


# The 15 labels of scenes-ilc corrected on 2026-12-04 (../shared/datasets/README.md), as they were before:
# (photo, "x1,y1" of the box or None for every box of the photo) -> the label it had.
BEFORE_CORRECTION = {("121343d040bc441b", None): "without_mask", ("378857c322ec32e6", "66,163"): "without_mask",
                     ("91e4ea354167b1df", None): "without_mask", ("96034669db128018", "329,193"): "without_mask",
                     ("129c97cd11ec6ded", None): "with_mask", ("1957b21a772e5c8a", None): "with_mask"}


def ilc_labels_before_correction() -> bytes:
    """scenes-ilc's labels.csv, byte for byte, as it was before the 15 corrections."""
    lines, changed = [], 0
    for line in ILC.read_bytes().decode().split("\r\n"):
        cells = line.split(",")
        if len(cells) == 6:
            for (photo, corner), label in BEFORE_CORRECTION.items():
                if Path(cells[0]).stem == photo and corner in (None, ",".join(cells[1:3])):
                    assert cells[5] != label, line
                    cells[5], changed = label, changed + 1
        lines.append(",".join(cells))
    assert changed == 15
    return "\r\n".join(lines).encode()


def scenes_sha256(labels_csv: bytes) -> str:
    """training's recipe for a scene source: sha256 over the labels file's bytes, then every photo it names, in
    name order."""
    digest = hashlib.sha256(labels_csv)
    for photo in sorted({row["image_path"] for row in csv.DictReader(io.StringIO(labels_csv.decode()))}):
        digest.update((ILC.parent / photo).read_bytes())
    return digest.hexdigest()


def crops_sha256(root: Path) -> str:
    """training's recipe for a crop folder: sha256 over each crop's class name, a NUL and the crop's bytes, class by
    class (with_mask, without_mask), each folder's files in name order."""
    digest = hashlib.sha256()
    for label in ("with_mask", "without_mask"):
        for path in sorted((root / label).iterdir()):
            digest.update(f"{label}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def test_the_card_records_its_sources_and_how_its_threshold_was_chosen():
    card = load_card(SHIPPED.with_suffix(".json"))
    sources = {s["name"]: s for s in card.training["sources"]}
    assert sources["scenes-ilc"]["kind"] == "scenes" and sources["mask-crops"]["kind"] == "crops"
    # Each source's sha256 is that of the data beside the repo, recomputed here from the files.
    assert sources["mask-crops"]["sha256"] == crops_sha256(CROPS)
    assert sources["mask-crops"]["counts"] == {"with_mask": 2164, "without_mask": 1930, "incorrect_mask": 0}
    # The shipped model was trained before scenes-ilc's 15 labels were corrected: its card names the labels as
    # they were then (with the same photos), and counts them so. A model trained since names the corrected file.
    versions = {"before the correction": ilc_labels_before_correction(), "corrected": ILC.read_bytes()}
    named = [name for name, text in versions.items() if scenes_sha256(text) == sources["scenes-ilc"]["sha256"]]
    assert named, "the card's scenes-ilc sha256 is that of neither version of its labels"
    rows = list(csv.DictReader(io.StringIO(versions[named[0]].decode())))
    assert sources["scenes-ilc"]["counts"] == {k: sum(r["label"] == k for r in rows) for k in LABELS}
    assert sources["scenes-ilc"]["photos"] == len({r["image_path"] for r in rows}) == 1195
    # One hash names the whole combination: each source's name and sha256, in the card's order.
    combined = "".join(f"{s['name']}\0{s['sha256']}\n" for s in card.training["sources"])
    assert card.training["data_sha256"] == hashlib.sha256(combined.encode()).hexdigest()
    choice = card.metrics["threshold_choice"]
    assert choice["met"] and choice["source"] == "scenes-ilc validation part"
    assert card.threshold == choice["threshold"] and choice["tnr"] >= 0.97


@pytest.fixture(scope="module")
def ilc_validation_boxes():
    model = load_model(SHIPPED, 2)
    labels = scene_part(read_scene_labels(ILC), ILC, "validation")
    return labelled_box_scores(model, labels, model.threshold)


def test_on_labelled_boxes_of_32_px_and_more_it_meets_the_door_aims(ilc_validation_boxes):
    big = ilc_validation_boxes[">=32px"]
    assert big["n"] == 593
    assert big["tnr"] >= 0.97 and big["fnr"] <= 0.03 and big["incorrect_stopped"] >= 0.80
    # the figures the README quotes, on the labels as corrected on 2026-12-04: of 190 unmasked faces 188 stopped,
    # 7 of 332 masked faces flagged, 59 of 71 masks worn wrong stopped (before: 188 of 192 and 7 of 330, TNR 0.979)
    assert (big["tnr"], big["fnr"], big["incorrect_stopped"]) == pytest.approx((188 / 190, 7 / 332, 59 / 71))
