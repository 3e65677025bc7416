"""`mask-appliance detect` and `check`, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
from conftest import REPO, SHIPPED, scene_images

from appliance.card import load_card

CARD = load_card(SHIPPED.with_suffix(".json"))
# A 3-class model adds p_incorrect_mask to each face; a 2-class model's faces keep the four fields.
FIELDS = {"box", "score", "p_without_mask", "label"} | ({"p_incorrect_mask"} if len(CARD.labels) == 3 else set())


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **(env or {})}, timeout=120)


def test_detect_json_prints_one_object_per_image_and_nothing_else(tmp_path):
    images = scene_images("without_mask", limit=2) + scene_images("with_mask", limit=1)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    result = run_cli("detect", "--json", *map(str, images), str(corrupt))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, images, strict=True):
        record = json.loads(line)
        assert record["image"] == str(path) and set(record) == {"image", "faces"}
        height, width = cv2.imread(str(path)).shape[:2]
        for face in record["faces"]:
            assert set(face) == FIELDS
            x1, y1, x2, y2 = face["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert 0 <= face["p_without_mask"] <= 1 and 0 < face["score"] <= 1
            assert face["label"] in CARD.labels
            assert (face["label"] == "with_mask") == (face["p_without_mask"] < CARD.threshold)
            if "p_incorrect_mask" in face:  # part of p(not properly masked)
                assert 0 <= face["p_incorrect_mask"] <= face["p_without_mask"] + 0.01
    assert json.loads(lines[0])["faces"][0]["label"] != "with_mask"
    assert {f["label"] for f in json.loads(lines[2])["faces"]} == {"with_mask"}
    assert "corrupt.jpg: unreadable image, skipped" in result.stderr


def test_detect_writes_annotated_images(tmp_path):
    image = scene_images("without_mask", limit=1)[0]
    result = run_cli("detect", "--out", str(tmp_path / "out"), str(image))
    assert result.returncode == 0, result.stderr
    written = cv2.imread(str(tmp_path / "out" / (image.stem + ".jpg")))
    assert written.shape == cv2.imread(str(image)).shape
    assert (cv2.absdiff(written, cv2.imread(str(image))) > 60).any()  # boxes were drawn


def test_check_reports_what_is_missing():
    result = run_cli("check")
    assert result.returncode == 1  # no Picamera2 on this machine
    lines = {line.split()[1]: line for line in result.stdout.splitlines()}
    assert lines["camera"].startswith("FAIL") and "picamera2" in lines["camera"]
    assert lines["gpio"].startswith("ok") and "MockFactory" in lines["gpio"] and "released" in lines["gpio"]
    assert lines["detector"].startswith("ok") and lines["model"].startswith("ok")
    assert f"threshold {CARD.threshold}," in lines["model"] and f"labels {'/'.join(CARD.labels)}" in lines["model"]


def test_check_passes_with_a_file_source_and_names_a_missing_asset_mirror(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[source]\nspec = "/srv/door.mp4"\n')
    assert run_cli("check", "--config", str(config)).returncode == 0
    result = run_cli("check", "--config", str(config),
                     env={"MASK_APPLIANCE_ASSETS": str(tmp_path / "none"), "MASK_APPLIANCE_CACHE": str(tmp_path)})
    detector = [line for line in result.stdout.splitlines() if " detector " in line][0]
    assert detector.startswith("FAIL") and "asset 'yunet' not found" in detector
