"""Shared fixtures: mock GPIO pins, a state folder, the shipped model, a small freshly trained one, saved signal
handlers; mask-deploy's sshd and fake Pis come from plugins/deploy.py. Plain helpers and constants are in support/,
which the tests import like any module."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

# Before anything imports support/: its checks (models_of, states, ...) then fail with pytest's detailed messages.
pytest.register_assert_rewrite("support")

from support.data import CROPS, SHARED, SHIPPED, WEIGHTS_100  # noqa: E402

pytest_plugins = ["plugins.deploy"]

os.environ.setdefault("MASK_APPLIANCE_ASSETS", str(SHARED / "assets"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def mock_pins(monkeypatch):
    """Every test gets fresh gpiozero mock pins; state and SQLite files go to a temporary folder."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def restore_signals():
    """For a test that lets the service (or `mask-appliance run`) install its SIGTERM, SIGINT and SIGHUP handlers:
    the handlers pytest had are put back after it, so a later signal does not reach a stopped service."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture(scope="session")
def small_crops(tmp_path_factory) -> Path:
    """A few dozen real crops per class, plus one corrupt file and one non-image."""
    root = tmp_path_factory.mktemp("crops")
    for label in ("with_mask", "without_mask"):
        (root / label).mkdir()
        for src in sorted((CROPS / label).iterdir())[:40]:
            shutil.copy(src, root / label / src.name)
    (root / "with_mask" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "without_mask" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def trained(small_crops, tmp_path_factory):
    """A smoke training run: 128 px, three epochs. Returns (output folder, summary). Alpha 1.0, because alpha 0.35
    or 96 px quantize too coarsely to pass the int8 parity gate reliably (seen: 98.75% agreement)."""
    if os.environ.get("MASK_RUNTIME_ONLY") == "1":  # deploy/release_tests.py: a Pi's Python, without TensorFlow
        pytest.skip("needs the training kit (TensorFlow), which is not part of the Pi runtime")
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    summary = train(TrainConfig(data=small_crops, out=out, base_weights=str(WEIGHTS_100), input_size=128, alpha=1.0,
                                epochs=3, learning_rate=1e-3, calibration_samples=32, float16=True))
    return out, summary


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A writable copy of the shipped model and card."""
    d = tmp_path / "models"
    d.mkdir()
    for suffix in (".tflite", ".json"):
        shutil.copy(SHIPPED.with_suffix(suffix), d / SHIPPED.with_suffix(suffix).name)
    return d
