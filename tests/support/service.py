"""The service under test: one built from a few config sections, its event log read back, its mock pins checked;
and `mask-appliance run` as a process, with OpenCV's detector made to fail and its stderr a real terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from gpiozero import Device

from appliance import config
from appliance.service import Service

# The default BCM pins of [gpio].
RELAY, BUZZER, GREEN, RED = 17, 27, 22, 23


def make_service(model_dir: Path, tmp_path: Path, **sections: dict) -> Service:
    """A Service on the model in `model_dir`, logging to tmp_path/events.db, polling its model every 0.2 s; each
    keyword is a config section whose values are added."""
    table = {"classifier": {"model": str(model_dir / "mask_classifier.tflite")},
             "events": {"database": str(tmp_path / "events.db")},
             "service": {"model_poll": 0.2}}
    for name, values in sections.items():
        table.setdefault(name, {}).update(values)
    return Service(config.parse(table))


def events(tmp_path: Path, kind: str | None = None) -> list[dict]:
    """The events in tmp_path/events.db, oldest first (only those of `kind` if given): kind, state and details."""
    db = sqlite3.connect(tmp_path / "events.db")
    rows = db.execute("SELECT kind, state, detail FROM events ORDER BY id").fetchall()
    db.close()
    return [{"kind": k, "state": s, **json.loads(d)} for k, s, d in rows if kind is None or k == kind]


def states(pin: int, expected: list[bool], exact: bool = True) -> None:
    """gpiozero's MockPin.assert_states on `pin`; `exact`: and no more states than those (assert_states compares
    only as many as both lists have, so a shorter expectation would always pass)."""
    mock = Device.pin_factory.pin(pin)
    mock.assert_states(expected)
    if exact:
        assert len(mock.states) == len(expected), [s for _, s in mock.states]


def run_in_background(service: Service, source: object) -> threading.Thread:
    """service.run(source) on a thread of its own, started."""
    thread = threading.Thread(target=service.run, args=(source,))
    thread.start()
    return thread


# `python -c FAILING_DETECTOR ERROR N ARGS...` is `mask-appliance ARGS` whose OpenCV YuNet raises ERROR (a Python
# expression) from its N-th detect(), as a broken OpenCV build would. OpenCV's class is wrapped, the appliance is not.
FAILING_DETECTOR = """
import sys

import cv2

from appliance.cli import main

error, fail_on, real = eval(sys.argv[1]), int(sys.argv[2]), cv2.FaceDetectorYN
calls = 0


class Net:
    def __init__(self, net):
        self.net = net

    def __getattr__(self, name):
        return getattr(self.net, name)

    def detect(self, image):
        global calls
        calls += 1
        if calls == fail_on:
            raise error
        return self.net.detect(image)


class FailingYuNet:
    @staticmethod
    def create(*args, **kwargs):
        return Net(real.create(*args, **kwargs))


cv2.FaceDetectorYN = FailingYuNet
sys.exit(main(sys.argv[3:]))
"""


def on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """Run `argv` with its stderr a real terminal (a pseudo-terminal), stdout discarded: its exit code, and the text
    the terminal showed (its CR LF line ends made LF)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env,
                                cwd=cwd)
    finally:
        os.close(slave)
    shown = bytearray()
    end = time.monotonic() + timeout
    try:
        while True:  # read as it comes: a full terminal buffer would block the process
            if not select.select([master], [], [], max(0.0, end - time.monotonic()))[0]:
                proc.kill()
                raise AssertionError(f"{argv[-1]}: still running after {timeout} s")
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process and its children closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    return proc.wait(timeout), shown.decode().replace("\r\n", "\n")
