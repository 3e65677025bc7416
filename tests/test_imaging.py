"""Reading images safely: the size is judged from the file's header before anything is decoded (issue #13, item 4).

The large files are real: a 12000x12000 JPEG, and an 875 kB PNG that decodes to 30000x30000 (built as a valid PNG in
a fraction of a second, below). Memory is measured in a fresh Python process by its peak RSS (VmHWM)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.data import REPO, scene_images
from support.images import PEAK_MEMORY, write_big_jpeg, write_zero_png

from appliance.config import SourceConfig
from appliance.seeing.imaging import DEFAULT_MAX_PIXELS, Refused, Skip, read_bgr, read_image

MB = 2**20


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("big")
    return {"jpeg": write_big_jpeg(root / "big.jpg"), "png": write_zero_png(root / "bomb.png", 30000, 30000)}


def peak_rss_growth(script: str) -> dict:
    """Run `script` in a fresh Python, after warming up the decoders on a real photo, with reset_peak() and
    peak_growth() (MB) at hand; it fills the dict `out`, which comes back."""
    prelude = PEAK_MEMORY + textwrap.dedent(f"""
        import json
        from appliance.seeing.imaging import read_image
        read_image({str(scene_images("with_mask", limit=1)[0])!r})
        out = {{}}
    """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script) + "\nprint(json.dumps(out))"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_default_limit_is_the_configs():
    assert DEFAULT_MAX_PIXELS == SourceConfig().max_pixels == 50_000_000


def test_the_crafted_png_is_a_real_png(tmp_path):
    """The writer's output decodes (OpenCV checks the CRCs and zlib the Adler-32) to the size it claims."""
    image = read_image(write_zero_png(tmp_path / "z.png", 3000, 2000))
    assert isinstance(image, np.ndarray) and image.shape == (2000, 3000, 3) and int(image.max()) == 0


@pytest.mark.parametrize("kind, side", [("jpeg", 12000), ("png", 30000)])
def test_an_image_over_the_limit_is_refused_from_its_header_without_the_memory_to_decode_it(big_files, kind, side):
    """Before: the 12000x12000 JPEG cost 969 MB of RSS, the 875 kB PNG 5.2 GB. Now each costs nothing; the same
    process then decodes a 4000x3000 JPEG (36 MB of BGR) to show the measurement sees a decode when there is one."""
    path = big_files[kind]
    control = path.parent / "control.jpg"
    if not control.exists():
        assert cv2.imwrite(str(control), np.full((3000, 4000, 3), 90, np.uint8))
    if kind == "png":
        assert path.stat().st_size < 900_000  # the "875 kB PNG"
    got = peak_rss_growth(f"""
        import time
        reset_peak()
        started = time.monotonic()
        refused = read_image({str(path)!r})
        out['seconds'] = time.monotonic() - started
        out['refused_mb'] = peak_growth()
        out['refused'] = [str(refused), refused.why]
        reset_peak()
        out['control'] = list(read_image({str(control)!r}).shape)
        out['control_mb'] = peak_growth()
    """)
    line, why = got["refused"]
    assert why == Skip.TOO_LARGE
    # Pillow tells the width and height up to 179 MP (2 x Image.MAX_IMAGE_PIXELS); past that only the count
    described = f"{side}x{side} = {side * side} pixels" if side * side < 179_000_000 else f"{side * side} pixels"
    assert line == f"{path}: too large: {described}, more than [source] max_pixels = 50000000"
    assert got["refused_mb"] < 2, f"refusing {path.name} grew the peak RSS by {got['refused_mb']:.0f} MB"
    assert got["seconds"] < 0.5
    assert got["control"] == [3000, 4000, 3] and got["control_mb"] > 30  # the measurement sees a decode


def test_the_limit_is_inclusive_and_says_the_size(tmp_path):
    photo = scene_images("without_mask", limit=1)[0]
    h, w = read_image(photo).shape[:2]
    assert read_image(photo, max_pixels=w * h).shape == (h, w, 3)
    refused = read_image(photo, max_pixels=w * h - 1)
    assert isinstance(refused, Refused) and refused.why == Skip.TOO_LARGE
    assert str(refused) == f"{photo}: too large: {w}x{h} = {w * h} pixels, more than [source] max_pixels = {w * h - 1}"
    assert read_bgr(photo, max_pixels=w * h - 1) is None  # the old interface: None, as for any unreadable file


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif", ".bmp"])
def test_pillows_own_bomb_limit_does_not_decide(tmp_path, monkeypatch, suffix):
    """Pillow's open refuses anything over 2 x Image.MAX_IMAGE_PIXELS (179 MP), naming only its pixel count; the
    config may allow more. With Pillow's limit pulled down to 2000 pixels, a photo in each format is still decoded
    within our limit, and refused over it by its true pixel count."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / f"photo{suffix}"
    cv2.imwrite(str(path), read_image(scene_images("with_mask", limit=1)[0]))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    h, w = cv2.imread(str(path)).shape[:2]
    assert read_image(path).shape == (h, w, 3)
    assert str(read_image(path, max_pixels=100_000)) == f"{path}: too large: {w * h} pixels, more than [source] " \
                                                        "max_pixels = 100000"


def test_files_that_are_not_images_say_why_in_one_line(tmp_path):
    photo = scene_images("with_mask", limit=1)[0]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(write_zero_png(tmp_path / "z.png", 64, 64).read_bytes()[:20])
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "fifo.jpg")  # opening a FIFO for reading would wait for a writer: it must not
    expected = {"missing.jpg": "No such file or directory", "empty.jpg": "empty file",
                "text.jpg": "no image header that gives its size", "cut.png": "its header cannot be read",
                "folder.jpg": "not a regular file", "fifo.jpg": "not a regular file"}
    if os.geteuid() != 0:  # root reads any mode
        locked = tmp_path / "locked.jpg"
        locked.write_bytes(photo.read_bytes())
        locked.chmod(0)
        expected["locked.jpg"] = "Permission denied"
    started = time.monotonic()
    for name, why in expected.items():
        refused = read_image(tmp_path / name)
        assert isinstance(refused, Refused) and refused.why == Skip.UNREADABLE, name
        assert str(refused).startswith(f"{tmp_path / name}: unreadable: {why}") and "\n" not in str(refused)
    assert time.monotonic() - started < 1
    assert stat.S_ISFIFO((tmp_path / "fifo.jpg").stat().st_mode)


def test_a_small_image_padded_to_a_gigabyte_is_refused_without_being_read(tmp_path):
    """Junk after a valid 64x64 PNG (a sparse file here): reading it whole would cost 1 GiB."""
    path = write_zero_png(tmp_path / "padded.png", 64, 64)
    assert read_image(path).shape == (64, 64, 3)
    os.truncate(path, 2**30)
    started = time.monotonic()
    refused = read_image(path)
    assert time.monotonic() - started < 0.5
    assert isinstance(refused, Refused) and refused.why == Skip.TOO_LARGE
    assert str(refused) == f"{path}: too large: a file of {2**30} bytes, more than any image of 4096 pixels needs"
