"""Issue 13, door-loop faults 2, 5, 6 and 7, and issue 28, against the real service: the shipped model, real scene
photos, mock pins (the relay's state is read while the fault is on), real signals, a real notify socket, real files
and SQLite; `mask-appliance run` as a process, its stderr a real terminal or the stream $JOURNAL_STREAM names."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from gpiozero import Device
from support.data import REPO, scene_images
from support.service import (
    BUZZER,
    FAILING_DETECTOR,
    RELAY,
    events,
    make_service,
    on_a_terminal,
    run_in_background,
    states,
)
from support.wait import wait_for

from appliance import config
from appliance.seeing.sources import Frame
from appliance.seeing.watcher import MISMATCH_WAIT
from appliance.service import Service


@pytest.fixture(autouse=True)
def _quiet_state(state_dir):
    return state_dir


def relay() -> bool:
    return bool(Device.pin_factory.pin(RELAY).state)


class Scripted:
    """One scene photo as a camera would give it (wall-clock times, `period` apart), with the stalls a test asks
    for. A stall blocks the read and ignores stop(), as a hung driver or network read does. Steps:
    ("frames", n), ("stall", seconds), ("probe", callable) and ("hang", threading.Event)."""

    clock = "wall clock (test)"

    def __init__(self, image: Path, steps: list[tuple], period: float = 0.05):
        self.image, self.steps, self.period = cv2.imread(str(image)), steps, period
        self.skipped = 0
        self.stop_called = threading.Event()

    def stop(self) -> None:
        self.stop_called.set()

    def frames(self):
        index = 0
        for step in self.steps:
            if step[0] == "frames":
                for _ in range(step[1]):
                    time.sleep(self.period)
                    yield Frame(self.image, time.monotonic(), index)
                    index += 1
            elif step[0] == "stall":
                time.sleep(step[1])
            elif step[0] == "probe":
                step[1]()
            elif step[0] == "hang":
                step[1].wait(30)

    def close(self) -> None:
        pass


def unmasked() -> Path:
    return scene_images("without_mask", limit=1)[0]


# -- 2: the camera guard cannot die, and a guard that cannot check fails the door --------------------------------
def test_the_camera_guard_survives_a_failing_event_log_and_catches_the_next_stall(model_dir, tmp_path, caplog):
    seen: list[tuple[str, bool]] = []
    steps = [("frames", 10), ("stall", 1.2), ("probe", lambda: seen.append(("stall 1", relay()))), ("stall", 0.3),
             ("frames", 10), ("probe", lambda: seen.append(("frames back", relay()))),
             ("stall", 1.2), ("probe", lambda: seen.append(("stall 2", relay()))), ("stall", 0.3)]
    service = make_service(model_dir, tmp_path, service={"camera_timeout": 0.5})
    real = service.events.record

    def locked_database(kind, state=None, **detail):  # the case: a locked database during an outage
        if detail.get("what") == "no frames":
            raise sqlite3.OperationalError("database is locked")
        real(kind, state, **detail)

    service.events.record = locked_database
    with caplog.at_level(logging.ERROR):
        service.run(Scripted(unmasked(), steps))
    # Locked by the unmasked face, released by each stall (the second one too: the guard outlived its failure).
    assert seen == [("stall 1", False), ("frames back", True), ("stall 2", False)]
    states(RELAY, [False, True, False, True, False])
    assert "camera guard failed" in [e["what"] for e in events(tmp_path, "fault")]
    traced = [r for r in caplog.records if "camera guard" in r.getMessage() and r.exc_info]
    assert traced and "database is locked" in str(traced[0].exc_info[1])


def test_a_guard_that_cannot_check_puts_the_door_in_its_fail_state_until_it_can(model_dir, tmp_path):
    service = make_service(model_dir, tmp_path, service={"camera_timeout": 0.5})
    good = service.cfg

    class Unreadable:  # the guard's own check fails (here: reading its timeout), while frames keep coming
        status_interval, model_poll = good.service.status_interval, good.service.model_poll

        @property
        def camera_timeout(self):
            raise RuntimeError("guard check broken")

    seen: list[bool] = []
    steps = [("frames", 15), ("probe", lambda: setattr(service, "cfg", dataclasses.replace(good,
                                                                                          service=Unreadable()))),
             ("frames", 15), ("probe", lambda: seen.append(relay())), ("probe", lambda: setattr(service, "cfg", good)),
             ("frames", 15), ("probe", lambda: seen.append(relay()))]
    service.run(Scripted(unmasked(), steps))
    assert seen == [False, True]  # fail state while the guard could not check; locked again once it could
    assert "camera guard failed" in [e["what"] for e in events(tmp_path, "fault")]
    assert "camera guard back" in [e["what"] for e in events(tmp_path, "recovery")]


# -- 5: SIGHUP -----------------------------------------------------------------------------------------------------
def _config_file(model_dir: Path, tmp_path: Path, extra: str = "", database: Path | None = None) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[classifier]\nmodel = "{model_dir / "mask_classifier.tflite"}"\n'
                    f'[events]\ndatabase = "{database or tmp_path / "events.db"}"\n' + extra)
    return path


def _run_with_signals(service: Service, source, operate) -> None:
    """service.run(source) with its signal handlers installed (the test uses the restore_signals fixture), while
    `operate` acts on it from another thread; an error there stops the service and fails the test."""
    service.install_signals()
    errors: list[BaseException] = []

    def guarded():
        try:
            operate()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(exc)
            service.stop()

    helper = threading.Thread(target=guarded)
    helper.start()
    service.run(source)
    helper.join(30)
    if errors:
        raise errors[0]


@pytest.mark.usefixtures("restore_signals")
def test_twenty_sighups_with_an_unchanged_config_keep_the_door_locked_without_a_second_beep(model_dir, tmp_path):
    path = _config_file(model_dir, tmp_path)
    service = Service(config.load(path), config_path=path)
    during: list[bool] = []

    def operate():
        wait_for(relay)
        for _ in range(20):  # 20 in a second
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            during.append(relay())
        time.sleep(0.5)
        during.append(relay())
        service.stop()

    _run_with_signals(service, Scripted(unmasked(), [("frames", 100000)]), operate)
    assert all(during) and len(during) == 21
    states(RELAY, [False, True, False])  # locked once, released only by the stop
    states(BUZZER, [False, True, False, True, False, True, False])  # one denial's three beeps, none per reload
    assert [e["state"] for e in events(tmp_path, "decision")] == ["deny"]
    assert [e for e in events(tmp_path, "config")] == []


KEPT = "[policy]\ndeny_hold = 5.0\n[gpio]\nbuzzer_cooldown = 30.0\n[schedule]\nevery = 4\n"  # what the reload applies


@pytest.mark.usefixtures("restore_signals")
def test_a_reload_applies_what_it_can_carrying_the_door_and_refuses_restart_keys_by_name(model_dir, tmp_path):
    path = _config_file(model_dir, tmp_path)
    service = Service(config.load(path), config_path=path)
    during: list[bool] = []
    policy = service.policy

    def reload(extra: str, database: Path | None = None) -> None:
        _config_file(model_dir, tmp_path, extra, database)
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.4)
        during.append(relay())

    def operate():
        wait_for(relay)
        track_ids = {t.id for t in service.policy.tracks}
        reload(KEPT)
        wait_for(lambda: service.cfg.policy.deny_hold == 5.0)
        assert service.pipeline.schedule_cfg.every == 4  # the per-face schedule takes it at once, too
        assert service.policy is policy and {t.id for t in service.policy.tracks} >= track_ids  # votes carried
        assert service.keeper.door.cfg.buzzer_cooldown == 30.0
        reload('[policy]\ndeny_hold = 5.0\n[gpio]\nbuzzer_cooldown = 30.0\n[mqtt]\nhost = "broker.lan"\n')
        reload('[policy]\ndeny_hold = 5.0\n[gpio]\nbuzzer_cooldown = 30.0\n[source]\nfps = 5.0\n')
        reload(KEPT, database=tmp_path / "other.db")
        service.stop()

    _run_with_signals(service, Scripted(unmasked(), [("frames", 100000)]), operate)
    assert all(during)
    states(RELAY, [False, True, False])
    reloaded = [e for e in events(tmp_path, "config")]
    assert [e["changed"] for e in reloaded] == [["[schedule] every", "[policy] deny_hold", "[gpio] buzzer_cooldown"]]
    refused = [e["reason"] for e in events(tmp_path, "fault") if e.get("what") == "reload refused"]
    assert len(refused) == 3
    for reason, key in zip(refused, ("[mqtt] host", "[source] fps", "[events] database"), strict=True):
        assert key in reason and "restart" in reason
    assert service.cfg.mqtt.host == "" and service.cfg.source.fps == 15.0  # the running config was kept


@pytest.mark.usefixtures("restore_signals")
def test_a_reload_keeps_a_model_push_that_was_not_polled_yet(model_dir, tmp_path):
    path = _config_file(model_dir, tmp_path, "[service]\nmodel_poll = 3600.0\n")
    service = Service(config.load(path), config_path=path)
    live = model_dir / "mask_classifier.tflite"

    def operate():
        wait_for(lambda: service.frames > 3)
        for suffix in (".json", ".tflite"):  # a re-push of the pair, as mask-deploy renames it in
            incoming = model_dir / f"incoming{suffix}"
            incoming.write_bytes(live.with_suffix(suffix).read_bytes())
            os.replace(incoming, live.with_suffix(suffix))
        _config_file(model_dir, tmp_path, "[service]\nmodel_poll = 0.2\n")
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: any(e.get("what") == "model swapped" for e in events(tmp_path, "model")))
        service.stop()

    _run_with_signals(service, Scripted(unmasked(), [("frames", 100000)]), operate)
    assert [(e["kind"], e["what"]) for e in events(tmp_path) if e["kind"] in ("config", "model")] == [
        ("config", "config reloaded"), ("model", "model swapped")]


# -- 6: a camera outage ----------------------------------------------------------------------------------------------
class NotifyListener:
    """A datagram socket that reads as systemd does; `sent` stamps each message with the time it was sent (the
    reading thread may be late on a busy machine)."""

    def __init__(self, path: Path, monkeypatch):
        import appliance.reporting.notify

        real = appliance.reporting.notify._send
        self.sent: list[tuple[float, str]] = []

        def send(message: str) -> bool:
            self.sent.append((time.monotonic(), message))
            return real(message)

        monkeypatch.setattr(appliance.reporting.notify, "_send", send)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self):
        while not self._done.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def pets(self, start: float, end: float) -> int:
        assert {m for _, m in self.sent} <= {m for _, m in self.messages}  # they did reach the socket
        return sum(1 for t, m in self.sent if m == "WATCHDOG=1" and start <= t <= end)

    def close(self):
        self._done.set()
        self.thread.join(2)
        self.sock.close()


def test_during_an_outage_the_watchdog_is_fed_and_the_status_tells_the_fail_state(model_dir, tmp_path, monkeypatch):
    listener = NotifyListener(tmp_path / "notify.sock", monkeypatch)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # WatchdogSec=0.2: a pet every 0.1 s
    marks: dict[str, float] = {}
    seen: dict[str, object] = {}

    def probe():
        seen["relay"] = relay()
        seen["status"] = json.loads((tmp_path / "status.json").read_text())

    steps = [("frames", 10), ("probe", lambda: marks.setdefault("stall", time.monotonic())), ("stall", 2.5),
             ("probe", probe), ("probe", lambda: marks.setdefault("back", time.monotonic())), ("frames", 10)]
    service = make_service(model_dir, tmp_path, service={"camera_timeout": 0.5, "status_interval": 0.5})
    hang: dict[str, float] = {}
    per_frame = "step" if hasattr(service.pipeline, "step") else "run"  # what the loop calls a frame (step: gated)
    real_run = getattr(service.pipeline, per_frame)

    def hanging_run(frame):  # the loop itself hangs for 2 s on one frame: the pets must stop meanwhile
        if frame.index == 15:
            hang["start"] = time.monotonic()
            time.sleep(1.2)
            hang["relay"] = relay()  # a hung pipeline looks like a lost camera to the guard
            time.sleep(0.8)
            hang["end"] = time.monotonic()
        return real_run(frame)

    setattr(service.pipeline, per_frame, hanging_run)
    try:
        service.run(Scripted(unmasked(), steps))
    finally:
        listener.close()
    states(RELAY, [False, True], exact=False)  # locked before the outage
    assert seen["relay"] is False  # released by the outage...
    status = seen["status"]
    assert status["door"] == "released" and status["camera_lost"] is True  # ...and status.json says so
    assert status["status_interval"] == 0.5 and status["running"] is True
    # A live loop waiting for frames keeps feeding the watchdog (once a loop cycle, 0.25 s, here) ...
    assert listener.pets(marks["stall"] + 0.5, marks["back"]) >= 5
    # ... and a hung loop does not: nothing feeds it behind the loop's back.
    assert listener.pets(hang["start"] + 0.01, hang["end"] - 0.01) == 0
    assert hang["relay"] is False
    assert "no frames" in [e["what"] for e in events(tmp_path, "fault")]


@pytest.mark.usefixtures("restore_signals")
def test_sigterm_does_not_wait_for_a_hung_read(model_dir, tmp_path):
    hang = threading.Event()
    source = Scripted(unmasked(), [("frames", 10), ("hang", hang)])
    service = make_service(model_dir, tmp_path, service={"camera_timeout": 0.5})
    timing: dict[str, float] = {}

    def operate():
        wait_for(lambda: service.frames >= 10)
        time.sleep(0.5)  # the read is hung now
        timing["kill"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        _run_with_signals(service, source, operate)
        timing["returned"] = time.monotonic()
    finally:
        hang.set()
    assert timing["returned"] - timing["kill"] < 4.0  # STOP_WAIT (2 s) and the log's drain, not the hung read
    assert source.stop_called.is_set() and relay() is False
    stop = events(tmp_path, "stop")[-1]  # recorded: the stop came well within the unit's 15 s
    assert stop["door"] == "released" and stop["frames"] == 10 and stop["read_blocked"] is True
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["running"] is False and status["door"] == "released"


# -- 7: exceptions in the loop, half-written model pairs --------------------------------------------------------------
# Issue 28: every frame goes to the detector (motion gating, where it exists, would skip still photos' repeats).
GATED = "motion_gating" in {f.name for f in dataclasses.fields(config.DetectorConfig)}
LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)( [\w.]+)?: ")  # one log record (ours, or LiteRT's banner)


def _crash_run(tmp_path: Path, error: str, *options: str, journal: bool = False) -> tuple[int, str, Path]:
    """`mask-appliance run` on a folder with one unmasked photo (15 frames), OpenCV's YuNet raising `error` on the
    8th frame; stderr a real terminal, or (`journal`) a file that $JOURNAL_STREAM names, as systemd's journal stream
    is named. Returns the exit code, the text of stderr and the state folder."""
    photos, state = tmp_path / "photos", tmp_path / "state"
    photos.mkdir()
    shutil.copy(unmasked(), photos)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[events]\ndatabase = "{state / "events.db"}"\n'
                   + ("[detector]\nmotion_gating = false\n" if GATED else ""))
    argv = [sys.executable, "-c", FAILING_DETECTOR, error, "8", "run", "--config", str(cfg), "--source", str(photos),
            *options]
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}  # pytest itself may run under systemd
    env.update(GPIOZERO_PIN_FACTORY="mock", STATE_DIRECTORY=str(state))
    if not journal:
        rc, err = on_a_terminal(argv, env, REPO)
        return rc, err, state
    with open(tmp_path / "journal", "w") as stream:
        st = os.fstat(stream.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=stream, env=env, cwd=REPO, timeout=120).returncode
    return rc, (tmp_path / "journal").read_text(), state


def _door_failed_at_the_crash(state: Path) -> None:
    """Locked by the unmasked face, then the crash: one `crash` fault, and the stop leaves the door released (the
    default [gpio] fail = "safe") after 7 frames."""
    logged = events(state)
    assert [(e["state"], e["door"]) for e in logged if e["kind"] == "decision"] == [("deny", "locked")]
    assert [e["what"] for e in logged if e["kind"] == "fault"] == ["crash"]
    assert logged[-1]["kind"] == "stop" and logged[-1]["door"] == "released" and logged[-1]["frames"] == 7


@pytest.mark.parametrize(("error", "told", "traced"), [
    ("cv2.error('no such box')", "error: no such box", "cv2.error: no such box"),  # a type the CLI does not list
    ("OSError(5, 'camera bus')", "OSError: [Errno 5] camera bus", "OSError: [Errno 5] camera bus")])  # one it does
def test_an_exception_from_the_detector_is_one_line_on_a_terminal_and_its_traceback_in_the_state_folder(
        tmp_path, error, told, traced):
    rc, err, state = _crash_run(tmp_path, error)
    kept = state / "mask-appliance.log"
    assert rc == 1
    lines = err.splitlines()
    # One line tells the failure and where its traceback is; every other line is one log record, none a traceback.
    assert lines[-1] == f"mask-appliance: frame loop failed: {told} (traceback in {kept})"
    assert [line for line in lines if "frame loop failed" in line] == [lines[-1]]
    assert all(LINE.match(line) for line in lines[:-1]), err
    assert "Traceback" not in err
    text = kept.read_text()
    assert "ERROR appliance.service: frame loop failed\nTraceback (most recent call last):\n" in text
    assert "_, rows = self._net.detect(small)" in text and f"\n{traced}\n" in text  # raised in OpenCV's detect
    _door_failed_at_the_crash(state)


def test_with_v_a_terminal_shows_the_traceback_too(tmp_path):
    rc, err, state = _crash_run(tmp_path, "KeyError('box 3')", "-v")
    assert rc == 1 and "ERROR appliance.service: frame loop failed\nTraceback (most recent call last):\n" in err
    assert err.splitlines()[-1] == f"mask-appliance: frame loop failed: KeyError: 'box 3' (traceback in " \
                                   f"{state / 'mask-appliance.log'})"
    assert "KeyError: 'box 3'" in (state / "mask-appliance.log").read_text()


def test_under_systemd_the_traceback_goes_to_the_journal_and_no_file_is_kept(tmp_path):
    try:
        import systemd.journal  # noqa: F401
        pytest.skip("python3-systemd sends records to the journal's socket itself, not to stderr")
    except ImportError:
        pass
    rc, journal, state = _crash_run(tmp_path, "KeyError('box 3')", journal=True)
    assert rc == 1
    assert "ERROR appliance.service: frame loop failed\nTraceback (most recent call last):\n" in journal
    assert journal.splitlines()[-1] == "mask-appliance: frame loop failed: KeyError: 'box 3'"
    assert not (state / "mask-appliance.log").exists()
    _door_failed_at_the_crash(state)


def _replace(path: Path, content: str | bytes) -> None:
    tmp = path.with_name(path.name + ".incoming")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)  # as mask-deploy does: whole or absent


def _next_pair(model_dir: Path) -> tuple[bytes, str, str]:
    """Another model that loads (the shipped one padded with 16 bytes, so its sha256 differs), its card and sha256."""
    model = (model_dir / "mask_classifier.tflite").read_bytes() + bytes(16)
    sha = hashlib.sha256(model).hexdigest()
    card = json.loads((model_dir / "mask_classifier.json").read_text())
    return model, json.dumps({**card, "sha256": sha}), sha


def test_a_card_renamed_1_2_s_before_its_model_waits_for_it_at_a_0_2_s_poll(model_dir, tmp_path):
    model, card, sha = _next_pair(model_dir)
    service = make_service(model_dir, tmp_path)  # model_poll 0.2 s
    old = service.pipeline.classifier.sha256
    thread = run_in_background(service, Scripted(scene_images("with_mask", limit=1)[0], [("frames", 100000)]))
    try:
        wait_for(lambda: service.frames > 3)
        _replace(model_dir / "mask_classifier.json", card)  # the card first ...
        card_at = time.monotonic()
        # ... three polls say "not yet" (the third refused it before issue 28) ...
        wait_for(lambda: service.watcher.incomplete >= 3, what="three polls of the half-written pair")
        time.sleep(max(0.0, card_at + 1.2 - time.monotonic()))
        _replace(model_dir / "mask_classifier.tflite", model)  # ... and the model 1.2 s later
        wait_for(lambda: any(e.get("what") == "model swapped" for e in events(tmp_path, "model")))
    finally:
        service.stop()
        thread.join(30)
    assert [e for e in events(tmp_path, "fault") if e.get("what") == "model refused"] == []
    swapped = [e for e in events(tmp_path, "model") if e.get("what") == "model swapped"]
    assert [(e["sha256"], e["previous"]) for e in swapped] == [(sha, old)]
    assert service.pipeline.classifier.sha256 == sha


def test_a_pair_still_mismatched_after_the_wait_is_refused_once_and_the_old_model_runs_on(model_dir, tmp_path):
    card = json.loads((model_dir / "mask_classifier.json").read_text())
    service = make_service(model_dir, tmp_path)  # model_poll 0.2 s: 50 polls in the wait
    old = service.pipeline.classifier.sha256
    source = Scripted(scene_images("with_mask", limit=1)[0], [("frames", 100000)], period=0.1)
    thread = run_in_background(service, source)
    try:
        wait_for(lambda: service.frames > 3)
        _replace(model_dir / "mask_classifier.json", json.dumps({**card, "sha256": "ab" * 32}))  # no model follows
        card_at = time.monotonic()
        refused_at = wait_for(lambda: any(e.get("what") == "model refused" for e in events(tmp_path, "fault"))
                              and time.monotonic(), timeout=MISMATCH_WAIT + 30, what="the refusal")
        seen = service.frames
        wait_for(lambda: service.frames > seen + 10)  # the door goes on, on the old model; no second refusal
    finally:
        service.stop()
        thread.join(30)
    assert refused_at - card_at >= MISMATCH_WAIT  # not before the stated time, however often it polled
    refused = [e for e in events(tmp_path, "fault") if e.get("what") == "model refused"]
    assert len(refused) == 1 and "does not match" in refused[0]["reason"] and refused[0]["kept"] == old
    assert refused[0]["mismatched_for"] >= MISMATCH_WAIT
    assert service.pipeline.classifier.sha256 == old
