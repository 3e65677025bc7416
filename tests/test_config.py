"""Configuration: defaults, TOML loading, and errors that name the key and value."""

from __future__ import annotations

import pytest

from appliance import config
from appliance.config import ConfigError


def test_defaults_are_valid_and_documented():
    cfg = config.load(None)
    assert cfg.detector.kind == "yunet" and cfg.policy.mode == "lock-on-unmasked" and cfg.gpio.fail == "safe"
    text = config.describe()
    assert "[gpio]" in text and "relay_pin = 17" in text and "# rgb_pins = " in text


def test_a_toml_file_overrides_the_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[detector]\nkind = "ssd"\nmax_side = 640\n[gpio]\nrgb_pins = [5, 6, 13]\nbuzzer_pin = 12\n')
    cfg = config.load(path)
    assert cfg.detector.kind == "ssd" and cfg.detector.max_side == 640 and cfg.gpio.rgb_pins == (5, 6, 13)
    assert cfg.detector.score_threshold == 0.6  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"detector": {"scor": 1}}, "unknown key [detector] scor"),
        ({"detectr": {}}, "unknown section [detectr]"),
        ({"detector": {"score_threshold": "high"}}, "[detector] score_threshold = 'high' is not a number"),
        ({"detector": {"top_k": 2.5}}, "[detector] top_k = 2.5 is not a whole number"),
        ({"detector": {"score_threshold": 1.5}}, "[detector] score_threshold = 1.5 is outside 0.05..0.99"),
        ({"policy": {"mode": "open"}}, "[policy] mode = 'open' is not one of"),
        ({"gpio": {"red_pin": 17}}, "[gpio] red_pin = 17 is already used by [gpio] relay_pin"),
        ({"gpio": {"rgb_pins": [5, 6]}}, "[gpio] rgb_pins = [5, 6] is not a list of 3 values"),
        ({"gpio": {"relay_active_high": "yes"}}, "[gpio] relay_active_high = 'yes' is not true or false"),
        ({"policy": {"votes": 6}}, "[policy] votes = 6 is more than [policy] window = 5"),
        ({"classifier": {"model": "/nowhere/m.tflite"}}, "[classifier] model = '/nowhere/m.tflite' does not exist"),
        ({"gpio": {"fail": "secure"}}, "[gpio] fail = 'secure' wants the door locked"),
    ],
)
def test_bad_values_name_the_key(table, message):
    with pytest.raises(ConfigError) as err:
        config.parse(table, "/etc/mask-appliance/config.toml")
    text = str(err.value)
    assert text.startswith("/etc/mask-appliance/config.toml: ") and message in text and "\n" not in text


def test_bad_toml_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[detector\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        config.load(tmp_path / "missing.toml")


def test_fail_secure_is_accepted_when_the_de_energized_relay_locks():
    cfg = config.parse({"gpio": {"fail": "secure", "relay_energized": "released"}})
    assert cfg.gpio.fail == "secure"


def test_the_pi_config_the_installer_writes_is_valid():
    import tomllib

    from conftest import REPO, SHIPPED

    table = tomllib.loads((REPO / "deploy/config.pi.toml").read_text())
    assert table["classifier"]["model"] == "/var/lib/mask-appliance/models/mask_classifier.tflite"
    table["classifier"]["model"] = str(SHIPPED)  # the one path that exists only on a Pi
    cfg = config.parse(table, "deploy/config.pi.toml")
    assert cfg.source.spec == "picamera2" and cfg.source.lores_size == (320, 240) and cfg.detector.max_side == 320
    assert cfg.gpio.fail == "safe" and cfg.classifier.threads == 4
