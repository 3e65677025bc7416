"""Small image helpers both sides share: safe reading, and face crops: square and padded, or aligned by landmarks.

Reading checks the image's size from the file's header (Pillow reads only the header on open) before OpenCV decodes
it: a 12000x12000 JPEG or an 875 kB PNG that decodes to 30000x30000 would otherwise cost about 0.8 and 5 GB before
anyone could say no. OpenCV has no header-only size query, and its own limit (OPENCV_IO_MAX_IMAGE_PIXELS, 2^30) is
read once when cv2 loads, so it cannot follow the config."""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 50_000_000  # [source] max_pixels' default in appliance/config.py (a test holds them equal)
# No image file needs more than 8 bytes a pixel (16-bit RGBA, uncompressed) plus its metadata; a larger one is
# padded (e.g. junk appended to a small image) and would cost its whole size in memory when read.
BYTES_PER_PIXEL = 8
METADATA_BYTES = 16 * 2**20


class Skip(StrEnum):
    """Why an image or video was not decoded: the kinds a source counts and logs once each."""

    UNREADABLE = "unreadable"  # missing, not a file, no permission, not an image, corrupt
    TOO_LARGE = "too large"  # over [source] max_pixels, by its header


@dataclass(frozen=True)
class Refused:
    """An image that was not decoded and why. str() is one line naming the file, for a log or the console:
    `door.jpg: too large: 12000x12000 = 144000000 pixels, more than [source] max_pixels = 50000000`."""

    path: Path
    why: Skip
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}: {self.detail}"


def _over(pixels: int, described: str, max_pixels: int) -> str | None:
    return f"{described}, more than [source] max_pixels = {max_pixels}" if pixels > max_pixels else None


def too_large(width: int, height: int, max_pixels: int) -> str | None:
    """Why a width x height frame is over the limit, or None where it is not."""
    return _over(width * height, f"{width}x{height} = {width * height} pixels", max_pixels)


def _header_pixels(f: BinaryIO) -> tuple[int, str]:
    """The image's pixel count from its header, and its size in words ("WxH = N pixels", or "N pixels" where Pillow
    will not tell the size, over its own limit). Nothing is decoded. Raises where no header can be read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, not Pillow's
        try:
            with Image.open(f) as im:  # a file object: Pillow leaves it open
                width, height = im.size
                return width * height, f"{width}x{height} = {width * height} pixels"
        except Image.DecompressionBombError as e:
            # Over 2 x Image.MAX_IMAGE_PIXELS (179 MP) Pillow's open refuses before it gives the size, and names
            # only the pixel count (its wording since Pillow 5). Our limit may be higher: judge that count.
            found = re.search(r"Image size \((\d+) pixels\)", str(e))
            if found is None:
                raise ValueError(f"Pillow would not read its size: {e}") from e
            return int(found.group(1)), f"{found.group(1)} pixels"


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | Refused:
    """The image at `path` as BGR uint8, or why not (Refused): missing, not a regular file, unreadable, not an image,
    corrupt, or over `max_pixels` (width x height, read from the header before anything is decoded)."""
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO named like an image must not hang the loop; fstat then refuses anything but a file.
        # One descriptor for the header and the bytes: both are the same file's, even if the name is replaced.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return Refused(path, Skip.UNREADABLE, e.strerror or str(e))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return Refused(path, Skip.UNREADABLE, "not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            if info.st_size == 0:
                return Refused(path, Skip.UNREADABLE, "empty file")
            try:
                pixels, described = _header_pixels(f)
            except UnidentifiedImageError:
                return Refused(path, Skip.UNREADABLE, "no image header that gives its size")
            except Exception as e:  # any header that cannot be read: the size is unknown, so nothing is decoded
                return Refused(path, Skip.UNREADABLE, f"its header cannot be read ({e})")
            reason = _over(pixels, described, max_pixels)
            if reason:
                return Refused(path, Skip.TOO_LARGE, reason)
            if info.st_size > BYTES_PER_PIXEL * pixels + METADATA_BYTES:
                return Refused(path, Skip.TOO_LARGE, f"a file of {info.st_size} bytes, more than any image of "
                                                     f"{pixels} pixels needs")
            f.seek(0)
            data = np.fromfile(f, dtype=np.uint8)
        except OSError as e:  # an I/O error while reading
            return Refused(path, Skip.UNREADABLE, e.strerror or str(e))
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:  # a decoder that throws rather than returning nothing
        return Refused(path, Skip.UNREADABLE, f"OpenCV cannot decode it ({str(e).strip().splitlines()[-1]})")
    if image is None or image.size == 0:
        return Refused(path, Skip.UNREADABLE, "OpenCV cannot decode it (corrupt or an unsupported format)")
    return image


def read_bgr(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The image at `path` as BGR uint8, or None where read_image() refuses it (it says why)."""
    image = read_image(path, max_pixels)
    return None if isinstance(image, Refused) else image


def _window(image: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray | None:
    """image[top : top + height, left : left + width], padded with edge pixels where it leaves the image; None where
    it misses the image altogether."""
    h, w = image.shape[:2]
    sx1, sy1 = max(0, left), max(0, top)
    sx2, sy2 = min(w, left + width), min(h, top + height)
    if sx2 <= sx1 or sy2 <= sy1:
        return None
    patch = image[sy1:sy2, sx1:sx2]
    pad = (sy1 - top, top + height - sy2, sx1 - left, left + width - sx2)
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, cv2.BORDER_REPLICATE)
    return patch


def square_crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float, size: int) -> np.ndarray:
    """Cut box (x1, y1, x2, y2), grown by `margin` on each side and squared around its centre, out of `image`,
    padding with edge pixels where it leaves the frame, and resize it to size x size. Nothing is stretched."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side_px = max(1, int(round(side)))
    patch = _window(image, left, top, side_px, side_px)
    if patch is None:
        return np.zeros((size, size, 3), dtype=image.dtype)
    interp = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


# Where a face's five landmarks (YuNet's order: right eye, left eye, nose tip, right and left mouth corners, as the
# image shows them) go in an aligned crop, as shares of its side (x right, y down). Measured, so that an aligned crop
# frames a face as square_crop frames a YuNet box (expand_top 0.2, expand_side 0.1, expand_bottom 0.05, margin
# 0.15): benchmarks/align_template.py ran the photo detector on scenes-ilc's 1195 photos and took the median of
# each landmark in the square crop of the 579 frontal faces it found (score >= 0.9, side >= 48 px, eye line level
# within 5 degrees, nose centred), then made them mirror-symmetric about x = 0.5. Masked, unmasked and incorrectly
# masked faces' medians are within 0.011 of these, and scenes-dev's 343 frontal faces give the same to 0.001.
ALIGN_TEMPLATE = np.array([[0.390, 0.477], [0.610, 0.477], [0.500, 0.600], [0.407, 0.690], [0.593, 0.690]])
# Landmarks whose eyes are closer than this share of the face box's longer side (a face in profile, a bad fit) would
# blow the face up past the crop: such a face is cut by its box instead. A frontal face's eyes are ~0.3 of it.
MIN_EYES = 0.04


def usable_landmarks(landmarks: Sequence[tuple[float, float]], box: Sequence[float]) -> bool:
    """Whether `landmarks` (five (x, y) points) can align the face in `box`: all five, finite, eyes apart."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        return False
    side = max(box[2] - box[0], box[3] - box[1])
    return float(np.linalg.norm(points[1] - points[0])) >= MIN_EYES * side


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + shift that maps the points `src` onto `dst` with the least squared error.

    Plain least squares, not cv2.estimateAffinePartial2D's LMEDS (OpenCV offers only it or RANSAC). Where all five
    points fit, LMEDS ends in the same least-squares fit; where they do not (a face turned aside), it drops some, and
    which it drops flips with a pixel of landmark noise: on a turned face of scenes-dev, with 2% of the eye distance
    of noise added 200 times, LMEDS's angle varied 2.1 degrees (sd) and its crop's centre up to 3.1 px at 128 px,
    least squares' 0.7 degrees and 1.0 px; on frontal faces the two are the same. Its robustness buys nothing here:
    YuNet's points are never wild on a face it found (masked faces' medians sit within 0.011 of bare faces')."""
    x, y = src[:, 0], src[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    rows = np.concatenate([np.stack([x, -y, one, zero], axis=1), np.stack([y, x, zero, one], axis=1)])
    (c, s, tx, ty), *_ = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    return np.array([[c, -s, tx], [s, c, ty]])


def aligned_crop(image: np.ndarray, landmarks: Sequence[tuple[float, float]], size: int) -> np.ndarray:
    """The face whose five `landmarks` (YuNet's order, pixels of `image`) are given, turned upright and scaled so
    that they fall on ALIGN_TEMPLATE, size x size, padded with edge pixels where it leaves the image. Check the
    landmarks with usable_landmarks() first."""
    m = similarity(np.asarray(landmarks, dtype=np.float64), ALIGN_TEMPLATE * size)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if scale < 1.0:
        # Shrinking: warpAffine has no INTER_AREA (it samples bilinearly, which aliases a face shrunk 2x or more),
        # so the part of the image the crop covers is first shrunk by area, as square_crop does, then warped ~1:1.
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inv[:, :2].T + inv[:, 2]
        left, top = (int(v) for v in np.floor(corners.min(axis=0)))
        width, height = (int(v) for v in np.ceil(corners.max(axis=0)) - (left, top))
        patch = _window(image, left, top, width, height)
        if patch is not None:
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            fx, fy = width / w, height / h  # a pixel of the shrunk patch is this many of the image's
            # patch pixel (u, v) is image pixel (left + (u + 0.5) fx - 0.5, top + (v + 0.5) fy - 0.5) (cv2.resize)
            to_image = np.array([[fx, 0, left + 0.5 * fx - 0.5], [0, fy, top + 0.5 * fy - 0.5], [0, 0, 1]])
            m = m @ to_image
            image = cv2.resize(patch, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pad_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """A whole crop padded (edge pixels) to a square and resized to size x size."""
    h, w = image.shape[:2]
    return square_crop(image, (0, 0, w, h), 0.0, size)
