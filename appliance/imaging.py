"""Small image helpers both sides share: safe reading and square, padded resizing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_bgr(path: Path) -> np.ndarray | None:
    """The image at `path` as BGR uint8, or None where it is missing, unreadable, corrupt or not an image."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    except OSError:  # no permission, an I/O error: skipped and counted like a corrupt file
        return None
    if data is None or data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        return None
    return image


def square_crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float, size: int) -> np.ndarray:
    """Cut box (x1, y1, x2, y2), grown by `margin` on each side and squared around its centre, out of `image`,
    padding with edge pixels where it leaves the frame, and resize it to size x size. Nothing is stretched."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side_px = max(1, int(round(side)))
    h, w = image.shape[:2]
    sx1, sy1 = max(0, left), max(0, top)
    sx2, sy2 = min(w, left + side_px), min(h, top + side_px)
    if sx2 <= sx1 or sy2 <= sy1:
        return np.zeros((size, size, 3), dtype=image.dtype)
    patch = image[sy1:sy2, sx1:sx2]
    pad = (sy1 - top, top + side_px - sy2, sx1 - left, left + side_px - sx2)
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, cv2.BORDER_REPLICATE)
    interp = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def pad_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """A whole crop padded (edge pixels) to a square and resized to size x size."""
    h, w = image.shape[:2]
    return square_crop(image, (0, 0, w, h), 0.0, size)
