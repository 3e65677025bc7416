"""Small image helpers both sides share: safe reading and square, padded resizing.

Reading checks the image's size from the file's header (Pillow reads only the header on open) before OpenCV decodes
it: a 12000x12000 JPEG or an 875 kB PNG that decodes to 30000x30000 would otherwise cost about 0.8 and 5 GB before
anyone could say no. OpenCV has no header-only size query, and its own limit (OPENCV_IO_MAX_IMAGE_PIXELS, 2^30) is
read once when cv2 loads, so it cannot follow the config."""

from __future__ import annotations

import os
import re
import stat
import warnings
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
