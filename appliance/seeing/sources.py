"""Frame sources: Picamera2, V4L2/USB cameras, RTSP/HTTP streams, video files, and folders or globs of images.

Longer than this project's 200-line guide: every frame source sits behind one protocol here, so that each reads
beside the others (their reconnects, clocks and limits agree).
"""

from __future__ import annotations

import glob
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from appliance.config import SourceConfig
from appliance.seeing.imaging import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, Refused, Skip, read_image, too_large

log = logging.getLogger(__name__)

OPEN_TIMEOUT_MS = 5000  # a camera or stream that takes longer to open is retried with back-off
READ_TIMEOUT_MS = 5000  # a stream that delivers nothing this long counts as lost


@dataclass
class Frame:
    """One frame from a source, with its time on the source's clock."""

    image: np.ndarray  # BGR, full resolution: faces are cropped from it
    t: float  # seconds on the source's clock: time.monotonic() at capture, or a video's own timestamp
    index: int
    name: str = ""  # file name for still images
    lores: np.ndarray | None = None  # BGR, smaller stream to detect on, where the camera gives one


class FrameSource(Protocol):
    """Where frames come from: a camera, a stream, video files or still images."""

    clock: str  # what Frame.t means, in words, for the log: the policy's holds and timeouts run on it

    @property
    def skipped(self) -> int:
        """Frames or files that could not be read."""
        ...

    def frames(self) -> Iterator[Frame]: ...

    def stop(self) -> None:
        """End frames() soon, from another thread or a signal handler, even while it waits to reconnect."""

    def close(self) -> None: ...


class Backoff:
    """Waits that double from `first` up to `longest`, reset by a success; a set `stopped` event cuts one short."""

    def __init__(self, first: float, longest: float, stopped: threading.Event | None = None):
        self.first, self.longest = first, longest
        self.next = first
        self.stopped = stopped or threading.Event()

    def wait(self) -> float:
        delay = self.next
        self.stopped.wait(delay)
        self.next = min(self.longest, self.next * 2)
        return delay

    def reset(self) -> None:
        self.next = self.first


class Skips:
    """Files, videos or streams refused, counted by why (Skip). The first of each kind is logged as a warning naming
    the file and the reason; the rest only at debug level, so a folder of bad files costs the journal one line a
    kind. `total` goes into the source's `skipped`."""

    def __init__(self) -> None:
        self.counts: Counter[Skip] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, refused: Refused) -> None:
        self.counts[refused.why] += 1
        if self.counts[refused.why] == 1:
            log.warning("%s; skipped (more that are %s are counted quietly)", refused, refused.why)
        else:
            log.debug("%s; skipped (%d %s so far)", refused, self.counts[refused.why], refused.why)


def frame_too_large(cap: cv2.VideoCapture, name: str, max_pixels: int) -> Refused | None:
    """A video or stream whose frames (as it says at open) are over `max_pixels`, or None. A size the backend does
    not know yet (0) passes here and is checked frame by frame."""
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    reason = too_large(width, height, max_pixels)
    return Refused(Path(name), Skip.TOO_LARGE, reason) if reason else None


def image_too_large(image: np.ndarray, name: str, max_pixels: int) -> Refused | None:
    """A decoded frame over `max_pixels` (a stream that changed its size): not passed on."""
    reason = too_large(image.shape[1], image.shape[0], max_pixels)
    return Refused(Path(name), Skip.TOO_LARGE, reason) if reason else None


VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".h264", ".mjpeg"}
VISIT_GAP = 60.0  # seconds of source time between two files: no track, hold or buzzer cool-down carries over


def _files(spec: str, suffixes: set[str]) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
    if path.is_file():
        return [path]
    return sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in suffixes)


def image_files(spec: str) -> list[Path]:
    return _files(spec, IMAGE_SUFFIXES)


def video_files(spec: str) -> list[Path]:
    """Video files named by `spec`: one file (any suffix that is not an image's), or a folder or glob of them."""
    path = Path(spec)
    if path.is_file():
        return [] if path.suffix.lower() in IMAGE_SUFFIXES else [path]
    return _files(spec, VIDEO_SUFFIXES)


class ImageSource:
    """Still images, each a separate visit: shown for `still_frames` frames at `fps` on a simulated clock, with
    `gap` simulated seconds between two images so that no track or hold carries over. Unreadable files and those
    over `max_pixels` (judged from the header, before decoding) are skipped, counted and logged once a kind."""

    def __init__(self, files: list[Path], still_frames: int = 1, fps: float = 15.0, gap: float = VISIT_GAP,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.files, self.still_frames = files, still_frames
        self.period, self.gap = 1.0 / (fps or 15.0), gap
        self.max_pixels = max_pixels
        self.skips = Skips()
        self.clock = (f"simulated: each image {still_frames} frame(s) at {fps or 15.0:g} fps, {gap:g} s between "
                      "images, read as fast as possible")
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def frames(self) -> Iterator[Frame]:
        index = 0
        for visit, path in enumerate(self.files):
            if self._stopped.is_set():
                return
            image = read_image(path, self.max_pixels)
            if isinstance(image, Refused):
                self.skips.add(image)
                continue
            for k in range(self.still_frames):
                if self._stopped.is_set():
                    return
                yield Frame(image, visit * self.gap + k * self.period, index, name=str(path))
                index += 1

    @property
    def skipped(self) -> int:
        return self.skips.total

    def close(self) -> None:
        pass


class VideoSource:
    """cv2.VideoCapture over a camera index, a /dev/video device or a stream URL; a source that stops delivering
    is reopened with back-off. Frames carry the capture time (time.monotonic()). A stream whose frames are over
    `[source] max_pixels` is refused at open (logged once, then retried with back-off, quietly), and so is any
    frame over it that arrives later."""

    def __init__(self, spec: str, cfg: SourceConfig):
        self.spec, self.cfg = spec, cfg
        self.live = True
        self.skipped = 0  # failed reads and opens, and frames over max_pixels
        self.skips = Skips()  # refusals over max_pixels, logged once
        self.clock = "wall clock (time.monotonic() at capture)"
        self._cap: cv2.VideoCapture | None = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def _open(self) -> bool:
        target: int | str = int(self.spec) if self.spec.isdigit() else self.spec
        # A stream that stops answering must not hold a read (or the open) for OpenCV's default 30 s: bounded,
        # the read fails, the source reconnects with back-off, and a stop is not kept waiting.
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        self._cap = cv2.VideoCapture(target, cv2.CAP_ANY, timeouts)
        if self.cfg.fps:
            self._cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        if not self._cap.isOpened():
            return False
        refused = frame_too_large(self._cap, self.spec, self.cfg.max_pixels)
        if refused:
            self.skips.add(refused)
            self.close()
            return False
        return True

    def frames(self) -> Iterator[Frame]:
        backoff = Backoff(self.cfg.reconnect_min, self.cfg.reconnect_max, self._stopped)
        self._open()
        index = 0
        while not self._stopped.is_set():
            ok, image = self._cap.read() if self._cap is not None else (False, None)
            if ok and image is not None and image.size:
                refused = image_too_large(image, self.spec, self.cfg.max_pixels)
                if refused:
                    self.skipped += 1
                    self.skips.add(refused)
                    continue
                backoff.reset()
                yield Frame(image, time.monotonic(), index)
                index += 1
                continue
            self.skipped += 1
            self.close()
            log.warning("%s: no frame, reconnecting in %.1f s", self.spec, backoff.next)
            backoff.wait()
            if not self._stopped.is_set() and self._open():
                log.info("%s: reconnected", self.spec)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource:
    """Video files, each a separate visit, played on their own timestamps: Frame.t is the video's time (plus
    VISIT_GAP seconds between files), so the same file gives the same decisions at the same video times however
    fast it is read. `realtime` paces frames to the wall clock as a camera would deliver them; without it files
    are read as fast as they decode. The end of the last file ends the run. A file that cannot be opened, or whose
    frames are over `max_pixels` (as it says at open), is skipped, counted and logged once a kind."""

    def __init__(self, files: list[Path], realtime: bool = True, gap: float = VISIT_GAP,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.files, self.realtime, self.gap = files, realtime, gap
        self.max_pixels = max_pixels
        self.live = False
        self.skips = Skips()
        self.clock = ("video timestamps, paced to real time" if realtime else
                      "video timestamps, read as fast as they decode")
        self._cap: cv2.VideoCapture | None = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def frames(self) -> Iterator[Frame]:
        index, offset = 0, 0.0
        for path in self.files:
            if self._stopped.is_set():
                return
            self._cap = cv2.VideoCapture(str(path))
            if not self._cap.isOpened():
                refused: Refused | None = Refused(path, Skip.UNREADABLE, "cannot open video")
            else:
                refused = frame_too_large(self._cap, str(path), self.max_pixels)
            if refused:
                self.close()
                if len(self.files) == 1:
                    raise OSError(str(refused))
                self.skips.add(refused)
                continue
            # A file without a frame rate of its own is read at 15 fps: the rate the appliance's camera runs at.
            period = 1.0 / (self._cap.get(cv2.CAP_PROP_FPS) or 15.0)
            wall_start, last = time.monotonic(), -1.0
            for k in itertools.count():
                ok, image = self._cap.read()
                if not ok or image is None or self._stopped.is_set():
                    break
                # The container's timestamp where it has one that moves forward, else frame number x period.
                pos = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                t = pos if pos > last else k * period
                last = t
                if self.realtime and self._stopped.wait(max(0.0, wall_start + t - time.monotonic())):
                    break
                yield Frame(image, offset + t, index, name=str(path))
                index += 1
            self.close()
            offset += last + self.gap

    @property
    def skipped(self) -> int:
        return self.skips.total

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class Picamera2Source:
    """The Raspberry Pi camera: detect on the low-resolution stream, crop faces from the main one."""

    def __init__(self, cfg: SourceConfig):
        from picamera2 import Picamera2  # only here: it exists only on Raspberry Pi OS

        self.cfg = cfg
        self.skipped = 0
        self.clock = "wall clock (time.monotonic() at capture)"
        self._stopped = threading.Event()
        self._cam = Picamera2()
        config = self._cam.create_video_configuration(
            main={"size": tuple(cfg.main_size), "format": "RGB888"},  # RGB888 is BGR in memory, as OpenCV wants
            lores={"size": tuple(cfg.lores_size), "format": "YUV420"},
            controls={"FrameRate": cfg.fps} if cfg.fps else {},
        )
        # The ISP wants each plane's width a multiple of 32 bytes (YUV420: 64 pixels): Picamera2's own rule.
        self._cam.align_configuration(config)
        for name, asked in (("main", cfg.main_size), ("lores", cfg.lores_size)):
            got = tuple(config[name]["size"])
            if got != tuple(asked):
                log.info("picamera2: %s_size %dx%d aligned to %dx%d", name, *asked, *got)
        self._cam.configure(config)
        self._cam.start()

    def stop(self) -> None:
        self._stopped.set()

    def frames(self) -> Iterator[Frame]:
        index = 0
        while not self._stopped.is_set():
            (main, lores), _ = self._cam.capture_arrays(["main", "lores"])
            yield Frame(main, time.monotonic(), index, lores=cv2.cvtColor(lores, cv2.COLOR_YUV420p2BGR))
            index += 1

    def close(self) -> None:
        self._cam.stop()
        self._cam.close()


def open_source(cfg: SourceConfig, spec: str | None = None) -> FrameSource:
    spec = spec or cfg.spec
    if spec == "picamera2":
        return Picamera2Source(cfg)
    if spec.isdigit() or spec.startswith("/dev/video") or "://" in spec:
        return VideoSource(spec, cfg)
    if Path(spec).is_file():  # one file: its suffix says which kind
        videos, images = video_files(spec), ([] if video_files(spec) else [Path(spec)])
    else:
        videos, images = video_files(spec), image_files(spec)
    if videos and images:
        raise OSError(f"{spec}: holds both videos and images; name one kind (a glob such as '{spec}/*.mp4')")
    if videos:
        return VideoFileSource(videos, cfg.realtime, max_pixels=cfg.max_pixels)
    if not images:
        raise OSError(f"{spec}: no images, video or camera found there")
    return ImageSource(images, cfg.still_frames, cfg.fps, max_pixels=cfg.max_pixels)
