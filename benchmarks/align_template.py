"""Where YuNet's five landmarks fall inside today's square crop: the numbers behind imaging.ALIGN_TEMPLATE.

    python benchmarks/align_template.py [--scenes ../shared/datasets/scenes-ilc/labels.csv] [--limit 0]

Runs the photo detector ([detector] defaults: expand_top 0.2, expand_side 0.1, expand_bottom 0.05) on every photo
of the scene set, takes the frontal faces (score >= 0.9, shorter side >= 48 px, box not cut by the frame, eye line
within 5 degrees of level, nose within 0.1 eye distances of the eyes' centre across), and gives each landmark's
median position in the square crop of its box at the card's default margin (0 = the crop's left or top edge, 1 = its
right or bottom edge), for all of them and by the label of the labelled face each one overlaps (IoU > 0.3). The
template is those medians made mirror-symmetric: eyes and mouth corners at the same height, pairs at the same
distance either side of the centre, nose on the centre line.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.boxes import pair  # noqa: E402
from appliance.config import DetectorConfig  # noqa: E402
from appliance.seeing.card import LABELS, Crop  # noqa: E402
from appliance.seeing.detector import Face, make_detector  # noqa: E402
from appliance.seeing.imaging import read_bgr  # noqa: E402
from training.evaluate import LOOSE_IOU, read_scene_labels  # noqa: E402

SCENES = REPO.parent / "shared" / "datasets" / "scenes-ilc" / "labels.csv"


def in_crop(face: Face, margin: float) -> np.ndarray:
    """The face's landmarks (5 x 2) in its square crop's coordinates, 0..1 (square_crop's geometry, unrounded)."""
    x1, y1, x2, y2 = face.box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    corner = np.array([(x1 + x2 - side) / 2, (y1 + y2 - side) / 2])
    return (np.array(face.landmarks) - corner) / side


def frontal(face: Face, shape: tuple[int, ...]) -> bool:
    lm = np.array(face.landmarks)
    (rx, ry), (lx, ly) = lm[0], lm[1]
    eyes = math.hypot(lx - rx, ly - ry)
    x1, y1, x2, y2 = face.box
    inside = x1 > 0 and y1 > 0 and x2 < shape[1] and y2 < shape[0]  # _expand clips at the frame: a cut box shifts
    return (face.score >= 0.9 and face.size >= 48 and inside and eyes > 0
            and abs(math.degrees(math.atan2(ly - ry, lx - rx))) <= 5 and abs(lm[2, 0] - (rx + lx) / 2) <= 0.1 * eyes)


def symmetric(median: np.ndarray) -> np.ndarray:
    """5 x 2 medians mirrored about the crop's vertical centre line (x = 0.5)."""
    out = median.copy()
    for a, b in ((0, 1), (3, 4)):
        half = ((0.5 - median[a, 0]) + (median[b, 0] - 0.5)) / 2
        y = (median[a, 1] + median[b, 1]) / 2
        out[a], out[b] = (0.5 - half, y), (0.5 + half, y)
    out[2, 0] = 0.5
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=Path, default=SCENES)
    p.add_argument("--limit", type=int, default=0, help="first N photos only (0: all)")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    detector = make_detector(DetectorConfig(), photos=True)
    margin = Crop().margin
    labelled = read_scene_labels(args.scenes)
    photos = sorted(labelled)[: args.limit or None]
    points: dict[str, list[np.ndarray]] = {"all": [], **{name: [] for name in LABELS}}
    faces_seen = 0
    for photo in photos:
        image = read_bgr(Path(photo))
        if image is None:
            continue
        faces = detector.detect(image)
        faces_seen += len(faces)
        truth = labelled[photo]
        owner = pair([f.box for f in faces], [t.box for t in truth], LOOSE_IOU)
        for face, j in zip(faces, owner, strict=True):
            if not face.landmarks or not frontal(face, image.shape):
                continue
            lm = in_crop(face, margin)
            points["all"].append(lm)
            if j is not None:
                points[LABELS[truth[j].label]].append(lm)
    names = ("right eye", "left eye", "nose tip", "right mouth", "left mouth")
    print(f"{len(photos)} photos, {faces_seen} faces found, {len(points['all'])} frontal")
    for group, rows in points.items():
        if not rows:
            continue
        median = np.median(np.stack(rows), axis=0)
        print(f"{group} ({len(rows)}): " + ", ".join(f"{n} ({x:.3f}, {y:.3f})" for n, (x, y) in zip(
            names, median, strict=True)))
    template = symmetric(np.median(np.stack(points["all"]), axis=0))
    print("template: " + ", ".join(f"({x:.3f}, {y:.3f})" for x, y in template))
    return 0


if __name__ == "__main__":
    sys.exit(main())
