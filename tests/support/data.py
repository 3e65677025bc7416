"""Where the tests' data lives (the repository, the read-only ../shared folder, the shipped model) and pickers of
real scene photos."""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
SCENES = SHARED / "datasets" / "scenes-dev"
CROPS = SHARED / "datasets" / "mask-crops"
WEIGHTS_100 = SHARED / "assets" / "imagenet" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
SHIPPED = REPO / "models" / "mask_classifier.tflite"


def scene_images(label: str, min_face: int = 80, limit: int = 3) -> list[Path]:
    """Scene photos whose labelled faces all carry `label`, largest faces first (chosen by labels alone)."""
    faces = defaultdict(list)
    with open(SCENES / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            size = min(float(row["x2"]) - float(row["x1"]), float(row["y2"]) - float(row["y1"]))
            faces[row["image_path"]].append((row["label"], size))
    chosen = [(min(s for _, s in v), k) for k, v in faces.items()
              if all(lab == label for lab, _ in v) and min(s for _, s in v) >= min_face]
    return [SCENES / k for _, k in sorted(chosen, reverse=True)[:limit]]


def pi_service_config(state: Path, tmp_path: Path, source: str, extra: str = "") -> Path:
    """A fake Pi: the shipped model in state/models, one unmasked scene photo as the camera, and a config file
    for `mask-appliance run` on them (`source`: more [source] lines; `extra`: more sections)."""
    (state / "models").mkdir(parents=True)
    for suffix in (".tflite", ".json"):
        shutil.copy(SHIPPED.with_suffix(suffix), state / "models" / f"mask_classifier{suffix}")
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(scene_images("without_mask", limit=1)[0], frames)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[source]\nspec = "{frames}"\n{source}'
                   f'[classifier]\nmodel = "{state}/models/mask_classifier.tflite"\n'
                   f'[events]\ndatabase = "{state}/events.db"\n{extra}')
    return cfg
