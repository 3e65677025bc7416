"""Still photos from a high-resolution camera: the faces found with and without [detector] photo_tiles.

    python benchmarks/tiles.py [--scenes ../shared/datasets/scenes-ilc/labels.csv] [--part validation] [--grid 4]
                               [--crowded N] [--photo-top-k K]

The scene sets' photos are at most 1280 px, so a large photo is made: the photos of the part, --grid x --grid at a
time, each unshrunk in a cell of one photo as large as the part's largest photo (scenes-ilc: 1024 px, so 4096 px at
--grid 4, a 12 MP camera's size). Its faces keep
their own sizes, as in a wide shot from such a camera, while the detector's shrunk looks see them --grid times
smaller. Prints, for photo_tiles off and on, the share of labelled faces of 32 px or more found (IoU > 0.3 with a
detection), the detections paired with no such face (other faces, smaller ones, or none), and the seconds taken.
--crowded N takes only the part's N photos with the most such faces (a crowd); --photo-top-k sets [detector]
photo_top_k, the most faces a photo keeps.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    from appliance.boxes import pair
    from appliance.config import DetectorConfig
    from appliance.seeing.detector import make_detector
    from appliance.seeing.imaging import read_bgr
    from training.data import read_scene_labels
    from training.evaluate import LOOSE_IOU, scene_part

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=Path, default=REPO.parent / "shared/datasets/scenes-ilc/labels.csv")
    parser.add_argument("--part", choices=("all", "train", "validation"), default="validation")
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument("--crowded", type=int, help="only the N photos with the most faces of 32 px or more")
    parser.add_argument("--photo-top-k", type=int, default=DetectorConfig().photo_top_k)
    args = parser.parse_args(argv)
    photos = list(scene_part(read_scene_labels(args.scenes), args.scenes, args.part).items())
    if args.crowded:
        photos = sorted(photos, key=lambda item: -sum(f.size >= 32 for f in item[1]))[: args.crowded]
    n = args.grid
    if len(photos) < n * n:
        raise SystemExit(f"--grid {n} needs {n * n} photos; {args.part} part{' (--crowded)' if args.crowded else ''}"
                         f" has {len(photos)}")
    images = {path: read_bgr(Path(path)) for path, _ in photos}
    cell = max(max(image.shape[:2]) for image in images.values() if image is not None)
    cfg = replace(DetectorConfig(), photo_top_k=args.photo_top_k)
    detectors = {tiles: make_detector(replace(cfg, photo_tiles=tiles), photos=True)
                 for tiles in (False, True)}
    found = dict.fromkeys(detectors, 0)
    other = dict.fromkeys(detectors, 0)
    seconds = dict.fromkeys(detectors, 0.0)
    total = 0
    for start in range(0, len(photos) - n * n + 1, n * n):
        canvas = np.full((cell * n, cell * n, 3), 127, np.uint8)
        boxes = []
        for k, (path, faces) in enumerate(photos[start:start + n * n]):
            image = images[path]
            if image is None:
                continue
            y, x = (k // n) * cell, (k % n) * cell
            canvas[y:y + image.shape[0], x:x + image.shape[1]] = image
            boxes += [(f.box[0] + x, f.box[1] + y, f.box[2] + x, f.box[3] + y) for f in faces if f.size >= 32]
        total += len(boxes)
        for tiles, detector in detectors.items():
            started = time.perf_counter()
            detections = detector.detect(canvas)
            seconds[tiles] += time.perf_counter() - started
            paired = sum(j is not None for j in pair(boxes, [d.box for d in detections], LOOSE_IOU))
            found[tiles] += paired
            other[tiles] += len(detections) - paired
    print(f"{args.scenes} ({args.part}) as {n}x{n} photos of {n * cell} px: {total} labelled faces >= 32 px "
          f"(photo_top_k {args.photo_top_k})")
    for tiles in detectors:
        print(f"  photo_tiles {str(tiles).lower():5s}: found {found[tiles] / total:.3f} ({found[tiles]}), "
              f"other detections {other[tiles]}, {seconds[tiles]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
