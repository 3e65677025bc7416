"""Large images built quickly for the image-size guards, and a probe of a process's peak memory (issue #13, item 4):
a 12000x12000 JPEG, and a PNG of under 1 MB that decodes to 30000x30000."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np


def write_zero_png(path: Path, width: int, height: int) -> Path:
    """A complete, valid 8-bit grey PNG of zeros. Compressing width x height bytes would take seconds at 30000^2,
    so one block of rows is compressed once, ended with a full flush (which resets the compressor, so the same rows
    compress to the same bytes again), and repeated; the Adler-32 of n zero bytes is (n mod 65521) << 16 | 1."""
    rows = next(r for r in (1000, 100, 10, 1) if height % r == 0)
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(width + 1) * rows) + raw.flush(zlib.Z_FULL_FLUSH)  # filter byte 0, then pixels
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty last block
    adler = ((width + 1) * height % 65521) << 16 | 1
    idat = b"\x78\xda" + block * (height // rows) + final + struct.pack(">I", adler)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grey, deflate, no filter set, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def write_big_jpeg(path: Path, side: int = 12000) -> Path:
    """A real side x side JPEG (grey: quick to encode; it still decodes to side x side x 3 bytes of BGR)."""
    assert cv2.imwrite(str(path), np.full((side, side), 128, np.uint8))
    return path


# Peak memory of a process, in MB, from a point on: Linux resets the high-water mark (VmHWM) to the current RSS when
# "5" is written to /proc/self/clear_refs, so a transient allocation between reset_peak() and peak_growth() shows.
PEAK_MEMORY = """
import re
def _status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
def reset_peak():
    global _base
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    _base = _status("VmRSS")
def peak_growth():
    return _status("VmHWM") - _base
"""
