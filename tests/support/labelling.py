"""Labelling helpers: a pulled door folder of real labelled faces, the system Chromium the pages are driven in, and
where the browser tests' screenshots go."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import cv2

from appliance.seeing.classifier import crop_faces, load_model
from support.data import SCENES, SHIPPED

CHROMIUM = "/usr/bin/chromium"


def publish_screenshot(shot: Path) -> None:
    """Copy a screenshot a test took into $MASK_APPLIANCE_SCREENSHOTS, which only scripts/screenshots sets (to
    docs/results): a plain test run writes nothing into the checkout."""
    folder = os.environ.get("MASK_APPLIANCE_SCREENSHOTS")
    if folder:
        shutil.copyfile(shot, Path(folder) / shot.name)


def make_door(root: Path, n: int, host: str = "pi-a", start: int = 0) -> dict[str, str]:
    """n real labelled faces of scenes-dev as a pulled door folder: root/host/*.jpg (the classifier's crop, as the
    Collector writes it) and root/host/index.jsonl with the shipped model's p. Returns {path in root: true label}."""
    model = load_model(SHIPPED, 1)
    with open(SCENES / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[start:start + n]
    folder = root / host
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    with open(folder / "index.jsonl", "a") as index:
        for i, row in enumerate(rows, start=start):
            frame = cv2.imread(str(SCENES / row["image_path"]))
            box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
            crop = crop_faces(frame, [box], model.card.crop, model.input_size)[0]
            name = f"20261130T08{i // 60 % 60:02d}{i % 60:02d}-{i % 1000:03d}-{i:06x}.jpg"
            cv2.imwrite(str(folder / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            p = float(model.predict(crop[None])[0])
            index.write(json.dumps({"file": name, "p_without_mask": p, "label": "without_mask" if p >= 0.5 else
                                    "with_mask", "host": host}) + "\n")
            truth[f"{host}/{name}"] = row["label"]
    return truth
