"""The service end to end: real scene photos, the shipped model, mock pins, a real notify socket and signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gpiozero import Device
from support.data import scene_images
from support.service import BUZZER, GREEN, RED, RELAY, events, make_service, run_in_background, states
from support.wait import wait_for

from appliance import config
from appliance.seeing.sources import Frame, ImageSource
from appliance.service import Service

STILL = config.SourceConfig().still_frames  # each photo long enough for a masked face to settle (10 near frames)


def test_an_unmasked_scene_locks_the_door_and_sounds_the_buzzer(model_dir, tmp_path):
    image = scene_images("without_mask", limit=1)
    service = make_service(model_dir, tmp_path)
    assert service.run(ImageSource(image, still_frames=8)) == 0
    decisions = [e["state"] for e in events(tmp_path, "decision")]
    assert decisions == ["deny"]
    states(RELAY, [False, True, False])  # locked while denying, released on stop
    states(RED, [False, True, False])
    states(BUZZER, [False, True], exact=False)  # its beeps' count depends on timing; it ends silent:
    assert Device.pin_factory.pin(BUZZER).state is False
    states(GREEN, [False])


def test_masked_scenes_never_touch_the_relay_or_buzzer(model_dir, tmp_path):
    images = scene_images("with_mask", limit=3)
    service = make_service(model_dir, tmp_path)
    service.run(ImageSource(images, still_frames=STILL))
    assert [e["state"] for e in events(tmp_path, "decision")].count("allow") == 3
    states(RELAY, [False])
    states(BUZZER, [False])
    states(GREEN, [False, True], exact=False)


def test_unlock_on_masked_releases_for_masked_faces_only(model_dir, tmp_path):
    masked, unmasked = scene_images("with_mask", limit=1), scene_images("without_mask", limit=1)
    gpio = {"fail": "secure", "relay_energized": "released"}
    service = make_service(model_dir, tmp_path, policy={"mode": "unlock-on-masked"}, gpio=gpio)
    service.run(ImageSource(masked + unmasked, still_frames=STILL))
    doors = [(e["state"], e["door"]) for e in events(tmp_path, "decision")]
    assert ("allow", "released") in doors and ("deny", "locked") in doors
    states(RELAY, [False, True, False])  # locked (de-energized) at start and stop, released for the masked face


@pytest.mark.usefixtures("restore_signals")
def test_sigterm_stops_cleanly_with_the_door_in_its_stop_state(model_dir, tmp_path):
    service = make_service(model_dir, tmp_path)
    service.install_signals()
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        rc = service.run(ImageSource(scene_images("without_mask", limit=1), still_frames=100000))
    finally:
        timer.cancel()
    assert rc == 0
    states(RELAY, [False, True, False])  # it was denying when the signal came
    assert Device.pin_factory.pin(RELAY).state is False and Device.pin_factory.pin(BUZZER).state is False
    stop = events(tmp_path, "stop")[-1]
    assert stop["door"] == "released" and 0 < stop["frames"] < 100000
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["running"] is False and status["door"] == "released"


def test_a_corrupt_model_is_refused_while_frames_keep_flowing(model_dir, tmp_path):
    service = make_service(model_dir, tmp_path)
    old_sha = service.pipeline.classifier.sha256
    thread = run_in_background(service, ImageSource(scene_images("with_mask", limit=1), still_frames=100000))
    try:
        wait_for(lambda: service.frames > 3)
        (model_dir / "mask_classifier.tflite").write_bytes(b"TFL3 but not really a model")
        wait_for(lambda: any(e.get("what") == "model refused" for e in events(tmp_path, "fault")))
        seen = service.frames
        wait_for(lambda: service.frames > seen + 5)  # still running on the old model
    finally:
        service.stop()
        thread.join(30)
    assert service.pipeline.classifier.sha256 == old_sha
    refused = [e for e in events(tmp_path, "fault") if e.get("what") == "model refused"][0]
    assert "mask_classifier.tflite" in refused["reason"] and refused["kept"] == old_sha


def test_a_good_new_model_is_swapped_in_between_frames(model_dir, tmp_path, trained):
    out, _ = trained
    service = make_service(model_dir, tmp_path)
    thread = run_in_background(service, ImageSource(scene_images("with_mask", limit=1), still_frames=100000))
    try:
        wait_for(lambda: service.frames > 3)
        # As mask-deploy does it: card first, then the model by atomic rename.
        shutil.copy(out / "mask_classifier.json", model_dir / "mask_classifier.json")
        shutil.copy(out / "mask_classifier.tflite", model_dir / "incoming.tflite")
        os.replace(model_dir / "incoming.tflite", model_dir / "mask_classifier.tflite")
        new_sha = json.loads((out / "mask_classifier.json").read_text())["sha256"]
        wait_for(lambda: service.pipeline.classifier.sha256 == new_sha)
        seen = service.frames
        wait_for(lambda: service.frames > seen + 3)
    finally:
        service.stop()
        thread.join(30)
    swapped = [e for e in events(tmp_path, "model") if e.get("what") == "model swapped"]
    assert swapped and swapped[0]["sha256"] == new_sha
    assert json.loads((tmp_path / "status.json").read_text())["model_sha256"] == new_sha


def test_sd_notify_messages_arrive_on_a_real_socket(model_dir, tmp_path, monkeypatch):
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.5)
    messages: list[str] = []

    def listen():  # as systemd does: read as they come
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                return

    listener = threading.Thread(target=listen)
    listener.start()
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # systemd's WatchdogSec=0.1: pet every 50 ms
    service = make_service(model_dir, tmp_path, service={"status_interval": 0.5})
    service.run(ImageSource(scene_images("with_mask", limit=1), still_frames=150))
    listener.join()
    sock.close()
    assert messages[0].startswith("READY=1\nSTATUS=")
    assert messages.count("WATCHDOG=1") >= 3
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert statuses and " fps, " in statuses[-1] and "model " in statuses[-1]
    assert messages[-1] == "STOPPING=1"


def test_corrupt_images_and_empty_frames_are_skipped_and_counted(model_dir, tmp_path):
    good = scene_images("with_mask", limit=1)[0]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:200])

    class Frames:
        skipped = 0

        def frames(self):
            yield from ImageSource([corrupt], still_frames=1).frames()
            yield Frame(np.zeros((0, 0, 3), np.uint8), 0.0, 0)
            yield from ImageSource([good], still_frames=3).frames()

        def close(self):
            pass

    source = ImageSource([corrupt, good], still_frames=3)
    service = make_service(model_dir, tmp_path)
    assert service.run(source) == 0
    assert source.skipped == 1 and events(tmp_path, "stop")[-1] == {**events(tmp_path, "stop")[-1], "skipped": 1,
                                                                     "frames": 3}
    service = make_service(model_dir, tmp_path / "second")
    assert service.run(Frames()) == 0
    assert service.loop.skipped == 1 and service.frames == 3


def test_a_stalled_camera_puts_the_door_in_its_fail_state(model_dir, tmp_path):
    image = scene_images("without_mask", limit=1)

    class Stalling:
        skipped = 0

        def frames(self):
            yield from ImageSource(image, still_frames=6).frames()
            time.sleep(1.5)  # the camera hangs

        def close(self):
            pass

    service = make_service(model_dir, tmp_path, service={"camera_timeout": 0.5})
    service.run(Stalling())
    faults = [e["what"] for e in events(tmp_path, "fault")]
    assert "no frames" in faults
    states(RELAY, [False, True, False])  # locked on the face, released (fail state) when frames stopped


def test_a_bad_config_refuses_to_start_with_one_line(tmp_path, capsys):
    from appliance.cli import main

    bad = tmp_path / "config.toml"
    bad.write_text("[gpio]\nrelay_pin = 40\n")
    assert main(["run", "--config", str(bad)]) == 2  # bad input (issue 14: the same code in all three commands)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mask-appliance: {bad}: [gpio] relay_pin = 40 is outside 0..27"]


@pytest.fixture(autouse=True)
def _quiet_state(state_dir):
    return state_dir


def test_stop_ends_a_service_whose_stream_is_lost(model_dir, tmp_path):
    from appliance.seeing.sources import VideoSource

    service = make_service(model_dir, tmp_path, source={"reconnect_min": 0.05, "reconnect_max": 0.2})
    thread = run_in_background(service, VideoSource("rtsp://127.0.0.1:9/none", service.cfg.source))
    wait_for(lambda: service.source is not None and service.source.skipped >= 2)
    service.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert events(tmp_path, "stop")[-1]["door"] == "released"


@pytest.mark.usefixtures("restore_signals")
def test_sighup_reloads_the_config_and_refuses_a_bad_one(model_dir, tmp_path):
    path = tmp_path / "config.toml"
    base = (f'[classifier]\nmodel = "{model_dir / "mask_classifier.tflite"}"\n'
            f'[events]\ndatabase = "{tmp_path / "events.db"}"\n')
    path.write_text(base)
    service = Service(config.load(path), config_path=path)
    service.install_signals()

    def operate():
        wait_for(lambda: service.frames > 3)
        path.write_text(base + '[policy]\nmode = "unlock-on-masked"\n')
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: service.cfg.policy.mode == "unlock-on-masked")
        path.write_text(base + "[policy]\nmode = 'sideways'\n")
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: any(e.get("what") == "reload refused" for e in events(tmp_path, "fault")))
        service.stop()

    helper = threading.Thread(target=operate)
    helper.start()
    service.run(ImageSource(scene_images("with_mask", limit=1), still_frames=100000))
    helper.join(30)
    assert service.cfg.policy.mode == "unlock-on-masked"  # the bad reload changed nothing
    refused = [e for e in events(tmp_path, "fault") if e.get("what") == "reload refused"][0]
    assert "[policy] mode = 'sideways'" in refused["reason"]
    assert [e["what"] for e in events(tmp_path, "config")] == ["config reloaded"]


def test_face_images_are_stored_only_when_asked(model_dir, tmp_path):
    image = scene_images("without_mask", limit=1)
    make_service(model_dir, tmp_path / "off").run(ImageSource(image, still_frames=6))
    assert not (tmp_path / "faces").exists() and not list(tmp_path.rglob("*.jpg"))
    service = make_service(model_dir, tmp_path / "on",
                           events={"save_faces": True, "faces_dir": str(tmp_path / "faces")})
    service.run(ImageSource(image, still_frames=6))
    saved = list((tmp_path / "faces").glob("*-deny-*.jpg"))
    assert saved and all(p.stat().st_size > 500 for p in saved)


def _scene_video(path: Path, image_path: Path, frames: int, fps: float = 10.0) -> Path:
    import cv2

    image = cv2.imread(str(image_path))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (image.shape[1], image.shape[0]))
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path


def test_a_replayed_video_decides_the_same_at_the_same_video_times_fast_or_paced(model_dir, tmp_path, caplog):
    import logging

    videos = tmp_path / "videos"
    videos.mkdir()
    _scene_video(videos / "1-masked.avi", scene_images("with_mask", limit=1)[0], 12)
    _scene_video(videos / "2-unmasked.avi", scene_images("without_mask", limit=1)[0], 12)
    runs = {}
    for realtime in (False, True):
        out = tmp_path / str(realtime)
        service = make_service(model_dir, out, source={"spec": str(videos), "realtime": realtime})
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="appliance.service"):
            assert service.run() == 0
        runs[realtime] = ([(e["state"], e["t"], Path(e["image"]).name) for e in events(out, "decision")],
                          time.monotonic() - started, events(out, "start")[0]["clock"])
    (fast, _, fast_clock), (paced, paced_s, paced_clock) = runs[False], runs[True]
    # Two files, two visits: allow on the first, deny on the second, at the same video times either way.
    assert [(s, n) for s, _, n in fast] == [("allow", "1-masked.avi"), ("idle", "2-unmasked.avi"),
                                            ("deny", "2-unmasked.avi")]
    assert fast == paced
    assert fast[2][1] >= 1.1 + 60  # the second file starts after the first and a 60 s gap of video time
    assert 2.2 <= paced_s < 30  # 2 x 1.1 s of video, paced; the 60 s between files is not waited
    assert fast_clock == "video timestamps, read as fast as they decode"
    assert paced_clock == "video timestamps, paced to real time"
    assert "clock: video timestamps, paced to real time" in caplog.text


def test_collection_keeps_the_classifier_crops_of_unsure_faces_under_its_hourly_cap(model_dir, tmp_path):
    images = scene_images("without_mask", limit=2) + scene_images("with_mask", limit=2)
    off = make_service(model_dir, tmp_path / "off")
    off.run(ImageSource(images, still_frames=6))
    assert not (tmp_path / "off" / "collect").exists()  # off by default: nothing kept
    # band [0, 1]: every face is "unsure", so only the caps decide: one crop a track, two an hour.
    service = make_service(model_dir, tmp_path, collect={"enabled": True, "band": [0.0, 1.0], "max_per_hour": 2})
    service.run(ImageSource(images, still_frames=6))
    folder = tmp_path / "collect"
    crops = sorted(folder.glob("*.jpg"))
    lines = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    assert len(crops) == 2 and sorted(line["file"] for line in lines) == [p.name for p in crops]
    size = service.pipeline.classifier.input_size
    import cv2

    assert all(cv2.imread(str(p)).shape == (size, size, 3) for p in crops)  # the crop the classifier saw
    assert len({line["track_id"] for line in lines}) == 2
    assert all(line["model_sha256"] == service.pipeline.classifier.sha256 and line["face_size"] >= 80
               and 0.0 <= line["p_without_mask"] <= 1.0 for line in lines)
    counts = json.loads((tmp_path / "status.json").read_text())["collect"]
    assert counts["enabled"] is True and counts["collected"] == 2
    # the two tracks that gave a crop offered 5 more frames each; the other tracks were over the cap at every frame
    assert counts["skipped_repeat"] >= 2 * 5 and counts["skipped_rate"] >= 2 * 6


def test_a_bad_live_pair_at_start_falls_back_to_the_previous_pair_loudly(model_dir, tmp_path):
    live = model_dir / "mask_classifier.tflite"
    for suffix in (".tflite", ".json"):
        shutil.copy(live.with_suffix(suffix), model_dir / f"mask_classifier.previous{suffix}")
    card = json.loads(live.with_suffix(".json").read_text())
    good_sha = card["sha256"]
    card["sha256"] = "ab" * 32  # the card of another model beside this one
    live.with_suffix(".json").write_text(json.dumps(card))
    service = make_service(model_dir, tmp_path)  # used to refuse to start here
    assert service.pipeline.classifier.sha256 == good_sha
    assert service.model_fallback and "mask_classifier.previous.tflite" in service.model_fallback
    service.run(ImageSource(scene_images("without_mask", limit=1), still_frames=8))
    states(RELAY, [False, True], exact=False)  # it left the fail state and decided on frames
    fault = [e for e in events(tmp_path, "fault") if e.get("what") == "model refused at start"]
    assert len(fault) == 1 and fault[0]["running"].endswith("mask_classifier.previous.tflite")
    assert "does not match" in fault[0]["reason"] and fault[0]["sha256"] == good_sha
    assert events(tmp_path, "start")[0]["model_fallback"] == service.model_fallback
    assert json.loads((tmp_path / "status.json").read_text())["model_fallback"] == service.model_fallback
    # The poll still watches the live pair: a good push there ends the fallback.
    service = make_service(model_dir, tmp_path / "third")
    thread = run_in_background(service, ImageSource(scene_images("with_mask", limit=1), still_frames=100000))
    try:
        wait_for(lambda: service.frames > 3)
        tmp = model_dir / "incoming.json"
        tmp.write_text(json.dumps({**card, "sha256": good_sha}))
        os.replace(tmp, live.with_suffix(".json"))
        wait_for(lambda: service.model_fallback is None)
    finally:
        service.stop()
        thread.join(30)
    assert [e["what"] for e in events(tmp_path / "third", "model")] == ["model swapped"]
    assert json.loads((tmp_path / "third" / "status.json").read_text())["model_fallback"] is None
    live.with_suffix(".json").write_text(json.dumps(card))  # the live pair mismatched again ...
    (model_dir / "mask_classifier.previous.tflite").write_bytes(b"not a model either")  # ... and no good previous
    with pytest.raises(Exception, match="does not match"):  # neither pair loads: no start, the live pair's error
        make_service(model_dir, tmp_path / "second")


def test_a_forced_push_is_marked_in_the_start_and_swap_events(model_dir, tmp_path):
    card_path = model_dir / "mask_classifier.json"
    card = json.loads(card_path.read_text())
    push = {"forced": True, "reason": "gate waived for a hotfix", "time": 1700000000.0, "by": "ops"}
    card_path.write_text(json.dumps({**card, "push": push}))
    service = make_service(model_dir, tmp_path)
    thread = run_in_background(service, ImageSource(scene_images("with_mask", limit=1), still_frames=100000))
    try:
        wait_for(lambda: service.frames > 3)
        tmp = model_dir / "incoming.json"
        tmp.write_text(json.dumps({**card, "push": {**push, "reason": "again"}}))
        os.replace(tmp, card_path)  # a re-push of the same pair, forced
        wait_for(lambda: any(e.get("what") == "model swapped" for e in events(tmp_path, "model")))
    finally:
        service.stop()
        thread.join(30)
    assert events(tmp_path, "start")[0]["forced_push"] == push
    swapped = [e for e in events(tmp_path, "model") if e.get("what") == "model swapped"][0]
    assert swapped["forced_push"]["reason"] == "again"
