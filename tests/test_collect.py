"""Hard-example collection (issue #15) with real crops cut the way the classifier cuts them, real model
probabilities, and a real EventLog writing on its own thread: the band, one crop per track, the hourly cap, pruning
by count and age, and a full disk (a real 1 MB tmpfs) that stops collection and never the caller."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.data import SCENES, SHIPPED

from appliance import config
from appliance.reporting import collect as collect_mod
from appliance.reporting.collect import INDEX, CollectConfig, Collector
from appliance.reporting.events import EventLog
from appliance.seeing.classifier import crop_faces, load_model

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a real filesystem (CI runs as root)")


@pytest.fixture(scope="module")
def faces() -> list[tuple[np.ndarray, float]]:
    """(crop the classifier saw, its p_without_mask) for the labelled faces of a few scene photos."""
    model = load_model(SHIPPED, 2)
    import csv

    boxes: dict[str, list] = {}
    with open(SCENES / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            boxes.setdefault(row["image_path"], []).append([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
    out = []
    for rel in sorted(boxes)[:30]:  # the first 30 photos: some faces the model is sure of, some not
        frame = cv2.imread(str(SCENES / rel))
        crops = crop_faces(frame, boxes[rel], model.card.crop, model.input_size)
        out += list(zip(crops, model.predict(crops).tolist(), strict=True))
    return out


@pytest.fixture
def log(tmp_path):
    events = EventLog(tmp_path / "state" / "events.db")
    yield events
    events.close()


def cfg(**kw) -> CollectConfig:
    return config._section("<test>", "collect", CollectConfig, {"enabled": True, **kw})


def info(p: float, t: float, track: int | None, **kw) -> dict:
    return {"time": t, "p_without_mask": p, "label": "without_mask" if p >= 0.5 else "with_mask",
            "decision": "idle", "model_sha256": "ab" * 32, "face_size": 120.0, "track_id": track, **kw}


def index_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / INDEX).read_text().splitlines()]


def test_config_keys_are_validated_like_the_others():
    c = cfg()
    assert (c.enabled, c.band, c.max_per_hour, c.max_files, c.max_age_days) == (True, (0.15, 0.85), 20, 2000, 14.0)
    assert CollectConfig().enabled is False
    with pytest.raises(config.ConfigError, match=r"\[collect\] band\[1\] = 1.5 is outside 0..1"):
        cfg(band=[0.1, 1.5])
    with pytest.raises(config.ConfigError, match=r"\[collect\] max_per_hour = -1 is outside"):
        cfg(max_per_hour=-1)
    with pytest.raises(config.ConfigError, match=r"unknown key \[collect\] size"):
        cfg(size=3)
    with pytest.raises(config.ConfigError, match=r"band = \[0.8, 0.2\] is not a range"):
        cfg(band=[0.8, 0.2]).check("<test>")


def test_uncertain_faces_are_kept_as_the_crop_the_classifier_saw_with_one_json_line(tmp_path, log, faces):
    folder = tmp_path / "state" / "collect"
    c = Collector(cfg(band=[0.15, 0.85]), folder, log)
    t = 1_800_000_000.0
    kept = [c.offer(crop, info(p, t + i, track=i)) for i, (crop, p) in enumerate(faces)]
    assert log.flush()
    inside = [0.15 <= p <= 0.85 for _, p in faces]
    assert kept == inside and 0 < sum(inside) < len(faces)  # the real model is unsure of some of these, not all
    assert c.collected == sum(inside) and c.skipped_band == len(faces) - sum(inside) and c.failed == 0
    lines = index_lines(folder)
    assert [ln["p_without_mask"] for ln in lines] == [p for (_, p), k in zip(faces, kept, strict=True) if k]
    for line, crop in zip(lines, [crop for (crop, _), k in zip(faces, kept, strict=True) if k], strict=True):
        assert set(line) == {"file", "time", "p_without_mask", "label", "decision", "model_sha256", "face_size",
                             "track_id"}
        saved = cv2.cvtColor(cv2.imread(str(folder / line["file"])), cv2.COLOR_BGR2RGB)
        assert saved.shape == crop.shape == (128, 128, 3)  # the classifier's input, never the frame
        assert np.abs(saved.astype(int) - crop.astype(int)).mean() < 4  # the same pixels, up to JPEG
        assert (folder / line["file"]).stat().st_mode & 0o777 == 0o640
    assert folder.stat().st_mode & 0o7777 == collect_mod.FOLDER_MODE == 0o770


def test_nothing_is_kept_while_off(tmp_path, log, faces):
    c = Collector(CollectConfig(), tmp_path / "collect", log)
    assert not any(c.offer(crop, info(0.5, 0.0, None)) for crop, _ in faces)
    assert log.flush() and not (tmp_path / "collect").exists()


def test_one_crop_per_track_and_a_track_that_changed_its_mind_is_kept_even_when_sure(tmp_path, log, faces):
    c = Collector(cfg(), tmp_path / "collect", log)
    crop = faces[0][0]
    assert c.offer(crop, info(0.5, 0.0, track=7))
    assert not c.offer(crop, info(0.6, 0.1, track=7))  # the same person, a frame later
    assert not c.offer(crop, info(0.99, 0.2, track=8))  # sure, and the votes agree
    assert c.offer(crop, info(0.99, 0.3, track=9, disagreed=True))
    assert log.flush()
    assert (c.skipped_repeat, c.skipped_band, c.collected) == (1, 1, 2)
    assert [ln.get("disagreed") for ln in index_lines(tmp_path / "collect")] == [None, True]


def test_the_hourly_cap_is_a_sliding_hour_on_the_callers_clock(tmp_path, log, faces):
    c = Collector(cfg(max_per_hour=3), tmp_path / "collect", log)
    crop = faces[0][0]
    got = [c.offer(crop, info(0.5, t, track=None)) for t in (0, 10, 20, 30, 3599, 3601, 3605, 3625)]
    # 0, 10, 20 fill the hour; 30 and 3599 are refused; at 3601 the crop of 0 has left the hour, at 3625 that of 20
    assert got == [True, True, True, False, False, True, False, True]
    assert log.flush() and c.skipped_rate == 3 and c.collected == 5 and len(index_lines(tmp_path / "collect")) == 5
    # the frames' own clock (a replayed door: an hour passes between two wall-clock seconds) governs the cap
    replay = Collector(cfg(max_per_hour=1), tmp_path / "replay", log)
    wall = 1_800_000_000.0
    assert [replay.offer(crop, info(0.5, wall + i, None), t=t) for i, t in enumerate((0.0, 1800.0, 3601.0))] == [
        True, False, True]
    assert log.flush()
    lines = index_lines(tmp_path / "replay")
    assert [ln["time"] for ln in lines] == [wall, wall + 2] and lines[0]["file"].startswith("20270115T080000-000-")


def test_the_oldest_go_beyond_max_files_and_all_past_max_age(tmp_path, log, faces, monkeypatch):
    folder = tmp_path / "collect"
    monkeypatch.setattr(collect_mod, "PRUNE_EVERY", 0.0)  # every maintain() is an hourly check
    c = Collector(cfg(max_files=4, max_age_days=1), folder, log)
    crop = faces[0][0]
    for t in range(6):
        assert c.offer(crop, info(0.5, 1_800_000_000.0 + t, track=t))
        assert log.flush()
        time.sleep(0.01)  # distinct modification times
    lines = index_lines(folder)
    assert [ln["track_id"] for ln in lines] == [2, 3, 4, 5] and c.pruned == 2
    assert sorted(p.name for p in folder.glob("*.jpg")) == sorted(ln["file"] for ln in lines)
    # two crops taken two days ago (their files say so) go at the next hourly check, with their lines
    old = time.time() - 2 * 86400
    for line in lines[:2]:
        os.utime(folder / line["file"], (old, old))
    (folder / lines[3]["file"]).unlink()  # pulled by mask-deploy meanwhile: its line goes too
    c.maintain()
    assert log.flush()
    assert [ln["track_id"] for ln in index_lines(folder)] == [4] and c.pruned == 4
    assert [p.name for p in folder.glob("*.jpg")] == [lines[2]["file"]]


def test_age_is_enforced_while_collection_is_off(tmp_path, log, faces):
    folder = tmp_path / "collect"
    on = Collector(cfg(), folder, log)
    assert on.offer(faces[0][0], info(0.5, 0.0, None)) and log.flush()
    old = time.time() - 15 * 86400
    for p in folder.glob("*.jpg"):
        os.utime(p, (old, old))
    off = Collector(CollectConfig(), folder, log)  # the shop turned it off; its service restarted
    assert log.flush()
    assert off.pruned == 1 and not list(folder.glob("*.jpg")) and (folder / INDEX).read_text() == ""


@needs_root
def test_a_full_disk_stops_collection_and_never_the_caller(tmp_path, faces):
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    try:
        events = EventLog(state / "events.db")
        c = Collector(cfg(max_per_hour=1000), state / "collect", events)
        crop = faces[0][0]
        assert c.offer(crop, info(0.5, 0.0, None)) and events.flush() and c.collected == 1
        filler = state / "filler"
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # fill the filesystem to the last block
                f.write(b"\0" * 4096)
        noise = np.random.default_rng(0).integers(0, 255, crop.shape, dtype=np.uint8)  # incompressible
        assert c.offer(noise, info(0.5, 1.0, None))  # accepted: the loop cannot know the disk is full
        assert events.flush()
        assert c.failed == 1 and c.collected == 1 and c.counts()["paused_disk_full"]
        assert events.health()["failures"] == {"collect": 1}
        started = time.monotonic()
        assert not any(c.offer(noise, info(0.5, float(i), None)) for i in range(2, 30))  # paused: not even queued
        assert time.monotonic() - started < 0.5  # and the loop never waited on the disk
        assert sorted(p.name for p in (state / "collect").iterdir() if p.name.startswith(".")) == []  # no half files
        assert len(index_lines(state / "collect")) == len(list((state / "collect").glob("*.jpg"))) == 1
        events.record("decision", "deny")  # the event log (and so the door) goes on
        filler.unlink()
        assert events.flush()
        events.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_the_deploy_users_group_can_read_whatever_the_umask(tmp_path, log, faces):
    old = os.umask(0o077)  # stricter than the unit's UMask=0027
    try:
        c = Collector(cfg(), tmp_path / "collect", log)
        assert c.offer(faces[0][0], info(0.5, 0.0, None)) and log.flush()
    finally:
        os.umask(old)
    folder = tmp_path / "collect"
    assert folder.stat().st_mode & 0o777 == 0o770
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        **{p.name: 0o640 for p in folder.glob("*.jpg")}, INDEX: 0o640}
