"""Frames -> face boxes, with YuNet (cv2.FaceDetectorYN, the default) or OpenCV's res10 SSD."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from appliance.assets import resolve
from appliance.config import ConfigError, DetectorConfig


@dataclass(frozen=True)
class Face:
    """A face found in a frame: its box (grown by [detector] expand_*), the detector's score, its landmarks."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the frame given to detect()
    score: float
    landmarks: tuple[tuple[float, float], ...] = ()

    @property
    def size(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


class FaceDetector(Protocol):
    """What a detector plugin gives: the faces of a BGR frame; `cfg` is the [detector] section it was built from
    (the pipeline's motion gate reads its settings there, so a reload that rebuilds the detector changes them too)."""

    cfg: DetectorConfig

    def detect(self, frame_bgr: np.ndarray) -> list[Face]: ...


def _scale_for(shape: tuple[int, ...], max_side: int) -> float:
    return min(1.0, max_side / max(shape[0], shape[1]))


def shrunk(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """(width, height) of an image of `shape` scaled by `scale`, never 0: a 4000x4 frame shrinks to 480x1, not 480x0
    (which OpenCV refuses with an exception)."""
    return max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))


def _expand(box, cfg: DetectorConfig, shape) -> tuple[float, float, float, float]:
    # Detectors box the face from brows to chin; people (and most labelled sets) mean forehead to chin.
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return (
        max(0.0, x1 - cfg.expand_side * w),
        max(0.0, y1 - cfg.expand_top * h),
        min(float(shape[1]), x2 + cfg.expand_side * w),
        min(float(shape[0]), y2 + cfg.expand_bottom * h),
    )


# `mask-appliance detect` looks at a still photo twice, shrunk to at most 640 and to at most 1024 px, and merges the
# faces ([detector] photo_sides). Why two looks: YuNet finds
# faces best in a band of sizes, so one scale misses some small faces and some large ones. On scenes-ilc's
# validation part (faces >= 32 px, IoU > 0.3) one look finds 0.924 at 480 px, 0.951 at 640, 0.958 at 1024, and
# 640 + 1024 together 0.968, gaining at every face size; the share of all unmasked faces stopped rises from 0.943
# (480) to 0.974 (benchmarks/detector.py). It costs 37 ms of CPU per photo here against 8 at 480, so frames (the
# door's loop, video, `run` on an image folder) keep one look at max_side.
def photo_sides(cfg: DetectorConfig) -> tuple[int, ...]:
    """The sizes a still photo is looked at: one, or two when the second is larger than the first."""
    first, second = cfg.photo_sides
    return (first, second) if second > first else (first,)


# A photo from a phone or a high-resolution camera (4000 px) shrunk to 1024 shows a 32 px face at 8 px, below what
# YuNet finds. Over TILE_ABOVE times the last look's size (a 32 px face under 21 px there), a still photo is also
# looked at unshrunk, in tiles of that size overlapping by TILE_OVERLAP of it: a face up to that size (256 px at
# 1024) lies whole in some tile, and a larger one is big enough for the shrunk looks.
TILE_ABOVE, TILE_OVERLAP = 1.5, 0.25
# A YuNet row: x, y, width, height, five landmarks' (x, y), score; the columns that move with a tile's origin.
_XS, _YS = [0, 4, 6, 8, 10, 12], [1, 5, 7, 9, 11, 13]


def tile_starts(length: int, tile: int) -> list[int]:
    """Where tiles of `tile` px start along a side of `length` px, overlapping by TILE_OVERLAP, the last one flush
    with the end."""
    if length <= tile:
        return [0]
    step = tile - int(tile * TILE_OVERLAP)
    return [*range(0, length - tile, step), length - tile]


class YuNetDetector:
    """YuNet. A frame is shrunk to at most `max_side` px. With `photos`, a still photo is shrunk to at most the first
    of `photo_sides`, and a photo larger than that is looked at again shrunk to at most the second; with
    `photo_tiles`, a photo much larger still is also looked at unshrunk, in tiles of the second size. The faces of all
    looks are merged (non-maximum suppression at `nms_threshold`)."""

    def __init__(self, cfg: DetectorConfig, photos: bool = False):
        self.cfg = cfg
        self.sides = photo_sides(cfg) if photos else (cfg.max_side,)
        self.top_k = cfg.photo_top_k if photos else cfg.top_k
        # One network per look, each keeping its own input size (setInputSize rebuilds YuNet's anchors).
        self._looks = [_YuNetLook(cfg) for _ in self.sides]
        self._tile_look = _YuNetLook(cfg) if photos and cfg.photo_tiles else None

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        rows = self._looks[0].rows(frame_bgr, self.sides[0])
        longest = max(frame_bgr.shape[:2])
        more = []
        if len(self.sides) == 2 and longest > self.sides[0]:  # else the second look is the first
            more.append(self._looks[1].rows(frame_bgr, self.sides[1]))
        if self._tile_look is not None and longest > TILE_ABOVE * self.sides[-1]:
            more.append(self._tiled(frame_bgr, self.sides[-1]))
        if more:
            rows = _merge(np.concatenate([rows, *more]), self.cfg)
        faces = []
        for row in rows:
            x, y, w, h = (float(v) for v in row[:4])
            face = Face(_expand((x, y, x + w, y + h), self.cfg, frame_bgr.shape), float(row[14]),
                        tuple((float(row[i]), float(row[i + 1])) for i in range(4, 14, 2)))
            if face.size >= self.cfg.min_face:
                faces.append(face)
        return sorted(faces, key=lambda f: -f.score)[: self.top_k]

    def _tiled(self, frame_bgr: np.ndarray, tile: int) -> np.ndarray:
        """Rows of faces found in unshrunk tiles of the frame, in frame pixels. A face touching a tile's edge inside
        the frame is cut by it and left out: the overlap shows it whole in the next tile."""
        assert self._tile_look is not None
        h, w = frame_bgr.shape[:2]
        found = []
        for y in tile_starts(h, tile):
            for x in tile_starts(w, tile):
                rows = self._tile_look.rows(frame_bgr[y:y + tile, x:x + tile], tile)
                th, tw = min(tile, h - y), min(tile, w - x)
                x1, y1, x2, y2 = rows[:, 0], rows[:, 1], rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3]
                cut = (((x1 <= 1) & (x > 0)) | ((y1 <= 1) & (y > 0)) | ((x2 >= tw - 1) & (x + tw < w))
                       | ((y2 >= th - 1) & (y + th < h)))
                rows = rows[~cut]
                rows[:, _XS] += x
                rows[:, _YS] += y
                found.append(rows)
        return np.concatenate(found) if found else np.zeros((0, 15), np.float32)


def _merge(rows: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """The rows of two looks with overlapping boxes merged: the higher score's row stays."""
    if len(rows) == 0:
        return rows
    keep = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 14].tolist(), cfg.score_threshold, cfg.nms_threshold)
    return rows[np.ravel(keep).astype(int)]


# YuNet's own top_k is not "faces kept": it is the number of the highest-scoring candidates kept BEFORE suppression
# (OpenCV's face_detect samples: "Keep top_k bounding boxes before NMS", 5000), and every face yields several
# overlapping candidates. At 50 (the old [detector] top_k) crowd photos lost faces scored 0.8 and more: recall on
# scenes-ilc's validation part (faces >= 32 px, IoU > 0.3, 480 px) was 0.916, and 0.924 with 5000 candidates.
# [detector] top_k is applied to the faces after suppression instead.
CANDIDATES = 5000


class _YuNetLook:
    """One YuNet network at one input size: rows of (x, y, w, h, 5 landmarks, score) in frame pixels."""

    def __init__(self, cfg: DetectorConfig):
        self._net = cv2.FaceDetectorYN.create(
            str(resolve("yunet")), "", (320, 320), cfg.score_threshold, cfg.nms_threshold, CANDIDATES
        )
        self._size: tuple[int, int] | None = None

    def rows(self, frame_bgr: np.ndarray, max_side: int) -> np.ndarray:
        s = _scale_for(frame_bgr.shape, max_side)
        # Bilinear, not INTER_AREA: a quarter of the cost, and the same recall on scenes-dev (0.884 at 480 px).
        small = frame_bgr if s == 1.0 else cv2.resize(frame_bgr, shrunk(frame_bgr.shape, s),
                                                      interpolation=cv2.INTER_LINEAR)
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, rows = self._net.detect(small)
        if rows is None:
            return np.zeros((0, 15), np.float32)
        out = np.asarray(rows[:, :15], dtype=np.float32).copy()
        out[:, :14] /= s
        return out


def read_ssd() -> cv2.dnn.Net:
    """The res10 SSD's network. OpenCV 5 dropped the TensorFlow (and Caffe) importers it is published for, and no
    ONNX form of it is published upstream, so there it is refused in one line rather than converted by us."""
    if not hasattr(cv2.dnn, "readNetFromTensorflow"):
        raise ConfigError(f'[detector] kind = "ssd" needs OpenCV 4: OpenCV {cv2.__version__} has no TensorFlow '
                          'importer for its weights; use kind = "yunet" (the default)')
    return cv2.dnn.readNetFromTensorflow(str(resolve("ssd_weights")), str(resolve("ssd_config")))


class SSDDetector:
    """The res10 SSD of the classic tutorials (8-bit TensorFlow weights), at 300x300, photo or frame alike."""

    def __init__(self, cfg: DetectorConfig, photos: bool = False):
        self.cfg = cfg
        self.top_k = cfg.photo_top_k if photos else cfg.top_k
        self._net = read_ssd()

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        h, w = frame_bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(frame_bgr, 1.0, (300, 300), (104.0, 177.0, 123.0))
        self._net.setInput(blob)
        out = self._net.forward().reshape(-1, 7)
        out = out[out[:, 2] >= self.cfg.score_threshold]
        boxes = [(max(0.0, a * w), max(0.0, b * h), min(w, c * w), min(h, d * h)) for a, b, c, d in out[:, 3:7]]
        keep = cv2.dnn.NMSBoxes([(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes], out[:, 2].tolist(),
                                self.cfg.score_threshold, self.cfg.nms_threshold) if boxes else []
        faces = [Face(_expand(boxes[i], self.cfg, frame_bgr.shape), float(out[i, 2])) for i in np.ravel(keep)]
        return [f for f in faces if f.size >= self.cfg.min_face][: self.top_k]


def make_detector(cfg: DetectorConfig, photos: bool = False) -> FaceDetector:
    """The detector of `cfg`; with `photos`, for still photos (`mask-appliance detect`, evaluation on labelled
    photos), which may take more looks than a frame of the door's loop ([detector] photo_sides)."""
    kinds: dict[str, type[YuNetDetector] | type[SSDDetector]] = {"yunet": YuNetDetector, "ssd": SSDDetector}
    return kinds[cfg.kind](cfg, photos)
