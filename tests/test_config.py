"""Configuration: defaults, TOML loading, and errors that name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.data import REPO, SHIPPED

from appliance import config
from appliance.config import ConfigError, DetectorConfig


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
    assert cfg.detector.score_threshold == DetectorConfig().score_threshold  # untouched keys keep their defaults


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
        ({"policy": {"min_size": 120}}, "[policy] min_size = 120.0 is more than [policy] full_size = 64.0"),
        ({"policy": {"incorrect_mask": "maybe"}}, "[policy] incorrect_mask = 'maybe' is not one of 'deny', 'allow'"),
        ({"policy": {"votes": 3}}, "unknown key [policy] votes"),  # a fixed count of frames no longer decides
        ({"policy": {"unsure": 0.9, "sure": 0.8}}, "[policy] unsure = 0.9 is not less than [policy] sure = 0.8"),
        # nan compares false with every bound, so each of these passed validation (issue 13).
        ({"classifier": {"threshold": float("nan")}}, "[classifier] threshold = nan is not a finite number"),
        ({"policy": {"deny_hold": float("nan")}}, "[policy] deny_hold = nan is not a finite number"),
        ({"service": {"camera_timeout": float("nan")}}, "[service] camera_timeout = nan is not a finite number"),
        ({"detector": {"score_threshold": float("nan")}}, "[detector] score_threshold = nan is not a finite"),
        ({"policy": {"allow_hold": float("inf")}}, "[policy] allow_hold = inf is not a finite number"),
        ({"source": {"fps": float("-inf")}}, "[source] fps = -inf is not a finite number"),
        ({"source": {"main_size": [0, -5]}}, "[source] main_size[0] = 0 is outside 16..8192"),
        ({"source": {"lores_size": [320, -5]}}, "[source] lores_size[1] = -5 is outside 16..8192"),
        ({"source": {"main_size": [8192, 8192], "max_pixels": 50_000_000}},
         "[source] main_size = [8192, 8192] is 67108864 pixels, more than [source] max_pixels = 50000000"),
        ({"source": {"main_size": [320, 240], "max_pixels": 100_000}},  # the default lores 512x384: 196608 px
         "[source] lores_size = [512, 384] is 196608 pixels, more than [source] max_pixels = 100000"),
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


def test_nan_written_in_a_toml_file_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[classifier]\nthreshold = nan\n")
    with pytest.raises(ConfigError, match=r"config.toml: \[classifier\] threshold = nan is not a finite number"):
        config.load(path)


def test_rgb_pins_may_reuse_the_led_pins_they_replace():
    cfg = config.parse({"gpio": {"rgb_pins": [22, 23, 24]}})
    assert cfg.gpio.rgb_pins == (22, 23, 24)
    with pytest.raises(ConfigError, match=r"\[gpio\] rgb_pins\[0\] = 17 is already used by \[gpio\] relay_pin"):
        config.parse({"gpio": {"rgb_pins": [17, 23, 24]}})  # the relay is still there


def test_rgb_pins_drive_the_rgb_led_and_leave_the_led_pins_alone(mock_pins):
    from appliance.deciding.actuators import DoorController

    cfg = config.parse({"gpio": {"rgb_pins": [22, 23, 24]}})
    door = DoorController(cfg.gpio, cfg.policy.mode)
    door.apply("deny", 0.0)
    assert mock_pins.pin(22).state is True and mock_pins.pin(23).state is False  # red on the RGB LED's red pin
    door.close()


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[source]\nspec = "caméra"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value).startswith(f"{path}: not UTF-8 text") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=f"{tmp_path}: cannot read config file"):
        config.load(tmp_path)  # a folder


def test_fail_secure_is_accepted_when_the_de_energized_relay_locks():
    cfg = config.parse({"gpio": {"fail": "secure", "relay_energized": "released"}})
    assert cfg.gpio.fail == "secure"


def test_the_pi_config_the_installer_writes_is_valid():
    import tomllib


    table = tomllib.loads((REPO / "deploy/config.pi.toml").read_text())
    cfg = config.parse(table, "deploy/config.pi.toml")  # its model path exists only on a Pi: parsing reads no file
    assert cfg.source.spec == "picamera2" and cfg.source.lores_size == (320, 240) and cfg.detector.max_side == 320
    assert cfg.gpio.fail == "safe" and cfg.classifier.threads == 4
    assert cfg.classifier.model == Path("/var/lib/mask-appliance/models/mask_classifier.tflite")


def test_a_missing_model_is_refused_by_check_files_alone(tmp_path):

    cfg = config.parse({"classifier": {"model": "/nowhere/m.tflite"}}, "/etc/mask-appliance/config.toml")
    assert cfg.classifier.model == Path("/nowhere/m.tflite")  # validation reads no file
    with pytest.raises(ConfigError) as err:
        config.check_files(cfg, "/etc/mask-appliance/config.toml")
    assert str(err.value) == ("/etc/mask-appliance/config.toml: [classifier] model = '/nowhere/m.tflite' does not "
                              "exist")
    (tmp_path / "m.tflite").mkdir()  # a folder is not a model either
    with pytest.raises(ConfigError, match=r"\[classifier\] model = '.*m.tflite' does not exist"):
        config.check_files(config.parse({"classifier": {"model": str(tmp_path / "m.tflite")}}), "c.toml")
    config.check_files(config.parse({"classifier": {"model": str(SHIPPED)}}), "c.toml")
    config.check_files(config.load(None), "<defaults>")  # the shipped model is the default


def test_the_outputs_files_are_checked_by_check_files_not_by_validation(tmp_path):
    table = {"classifier": {"model": str(SHIPPED)},
             "mqtt": {"host": "broker", "username": "door", "password_file": str(tmp_path / "pw")},
             "http": {"listen": "127.0.0.1:8080", "token_file": str(tmp_path / "token")}}
    cfg = config.parse(table, "c.toml")  # validation reads no file
    with pytest.raises(ConfigError, match=r"^c.toml: \[mqtt\] password_file = '.*pw' does not exist$"):
        config.check_files(cfg, "c.toml")
    (tmp_path / "pw").write_text("secret\n")
    with pytest.raises(ConfigError, match=r"^c.toml: \[http\] token_file = '.*token' does not exist$"):
        config.check_files(cfg, "c.toml")
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match=r"\[http\] token_file = '.*token' is empty"):
        config.check_files(cfg, "c.toml")
    (tmp_path / "token").write_text("t0ken\n")
    config.check_files(cfg, "c.toml")


def test_frame_sizes_up_to_max_pixels_are_accepted():
    cfg = config.parse({"source": {"main_size": [4056, 3040], "lores_size": [640, 480], "max_pixels": 4056 * 3040}})
    assert cfg.source.main_size == (4056, 3040) and cfg.source.max_pixels == 12_330_240


def test_describe_is_a_toml_file_of_the_defaults():
    import tomllib

    table = tomllib.loads(config.describe())
    assert config.parse(table, "described") == config.load(None)
    assert table["gpio"]["relay_pin"] == 17 and "rgb_pins" not in table["gpio"]  # unset keys are commented out


def test_dumps_writes_toml_that_reads_back_the_same():
    import tomllib

    from appliance import checking

    doc = {"source": {"spec": 'odd "name" \\ tab\t line\n é \x7f', "main_size": (1280, 960), "fps": 12.5,
                      "realtime": False},
           "classifier": {"model": Path("/srv/m.tflite"), "threshold": None}}
    back = tomllib.loads(checking.dumps(doc))
    assert back == {"source": {**doc["source"], "main_size": [1280, 960]},
                    "classifier": {"model": "/srv/m.tflite"}}  # None: left out, so the default holds
    with pytest.raises(TypeError, match="no TOML for"):
        checking.dumps({"source": {"spec": object()}})
