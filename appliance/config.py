"""The appliance's configuration: one TOML file, declared here as typed dataclasses, validated at start.

Every field carries its default, its bounds and a one-line description (`opt`); the generic engine that reads,
checks and prints them is appliance/checking.py. An unknown key, a wrong type, a value out of bounds or two devices
on one pin is refused by `parse`/`load` with one line naming the file, key and value; `check_files` refuses a model
file that is not there, and the commands that need the model call it (validation itself touches no file).

Over 200 lines for one reason: each of the ~80 keys is declared here with its help text, so that this file is the
reference for every setting (`mask-appliance config` prints it); the logic is in the last ~90 lines.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance import MODELS_DIR
from appliance.checking import ConfigError, describe_sections, opt, parse_sections, section

# Importable from here as ever: the other modules and the tests import these names from appliance.config.
__all__ = ["DEFAULT_PATH", "ClassifierConfig", "CollectConfig", "Config", "ConfigError", "DetectorConfig",
           "EventsConfig", "GpioConfig", "HttpConfig", "MqttConfig", "PolicyConfig", "ScheduleConfig", "ServiceConfig",
           "SourceConfig",
           "check_files", "describe", "load", "opt", "parse", "validate"]

DEFAULT_PATH = Path("/etc/mask-appliance/config.toml")
_section = section  # tests build one section alone with config._section(origin, name, cls, table)


def _state_dir() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; elsewhere the user's own state folder.
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    from platformdirs import user_state_dir

    return Path(user_state_dir("mask-appliance"))


@dataclass
class SourceConfig:
    """Where frames come from (`--source` overrides spec), and the limits on what is decoded."""

    spec: str = opt("picamera2", "picamera2, a camera index or /dev/videoN, rtsp:// or http:// URL, video file, "
                    "image folder or glob")
    main_size: tuple[int, int] = opt((1280, 960), "picamera2 main stream (faces are cropped from it)", 16, 8192)
    lores_size: tuple[int, int] = opt((512, 384), "picamera2 low-resolution stream (faces are detected on it); "
                                      "Picamera2 aligns YUV420 widths down to a multiple of 64", 16,
                                      8192)
    still_frames: int = opt(15, "frames each still image is shown for, as if a person stood before the camera that "
                            "long (image folders only; 15: 1 s, time for a masked face to settle)", 1, 1000)
    fps: float = opt(15.0, "frames per second asked of cameras and streams, and the simulated rate of still images "
                     "(0: the camera's own rate, images at 15); video files play on their own timestamps", 0, 120)
    realtime: bool = opt(True, "video files are paced to real time (true), or read as fast as they decode (false); "
                         "either way the policy's clock is the video's own timestamps, so decisions are the same")
    max_pixels: int = opt(50_000_000, "largest frame or image, in pixels (width x height), that is decoded; larger "
                          "ones are skipped, counted and logged once, read from the file's header before decoding "
                          "(a 50 MP frame costs 150 MB as BGR; the Pi cameras give at most 12.3 MP; OpenCV decodes "
                          "at most 2**30)", 1, 2**30)
    reconnect_min: float = opt(0.5, "first wait before reconnecting a lost camera or stream, seconds", 0.01, 60)
    reconnect_max: float = opt(30.0, "longest wait between reconnection attempts, seconds", 0.1, 600)


@dataclass
class DetectorConfig:
    """The face detector, the size it detects at, and how its boxes are grown to the labelled face."""

    kind: Literal["yunet", "ssd"] = opt("yunet", "face detector: yunet (cv2.FaceDetectorYN) or ssd (res10 SSD)")
    score_threshold: float = opt(0.5, "lowest detector score that counts as a face", 0.05, 0.99)
    nms_threshold: float = opt(0.3, "IoU above which overlapping detections are merged", 0.05, 0.95)
    top_k: int = opt(50, "most faces kept per frame of the door's loop, the best scored (after overlapping "
                     "detections are merged)", 1, 5000)
    photo_top_k: int = opt(1000, "most faces kept per still photo (mask-appliance detect, scoring on labelled "
                           "photos): a crowd in a large photo has more faces than a door's frame", 1, 100000)
    max_side: int = opt(480, "frames (camera, video, run on an image folder) are shrunk so their longer side is at "
                        "most this before detection", 64, 4096)
    photo_sides: tuple[int, int] = opt((640, 1024), "still photos (mask-appliance detect, scoring on labelled "
                                       "photos) are detected shrunk to at most the first size and, when larger than "
                                       "it, again at up to the second, the faces of both looks merged; a second size "
                                       "not above the first gives one look", 64, 4096)
    photo_tiles: bool = opt(True, "a still photo over 1.5 times its largest look (the second of photo_sides, or "
                            "the first when it is the only one) is also looked at unshrunk, in tiles of that size "
                            "overlapping by a quarter, so that small faces in a large photo are not shrunk below the "
                            "sizes the detector finds")
    min_face: int = opt(24, "smallest face, in frame pixels (shorter side), that is classified", 0, 4096)
    expand_side: float = opt(0.10, "box grown left and right by this share of its width", 0, 1)
    expand_top: float = opt(0.20, "box grown upwards by this share of its height (takes in the forehead)", 0, 1)
    expand_bottom: float = opt(0.05, "box grown downwards by this share of its height", 0, 1)
    motion_gating: bool = opt(True, "the door's frames are detected only when something moved, or every idle_every "
                              "seconds; in between, the faces last found are carried forward (false: every frame)")
    idle_every: float = opt(1.0, "with nothing moving, seconds between detector runs, so that someone standing still "
                            "is still found (a visitor's time to deny grows by at most this)", 0, 60)
    motion_threshold: float = opt(12.0, "grey levels (0-255) a pixel of the 128 px motion image must change by, "
                                  "beside the frame's overall brightness, to count as moving", 1, 255)
    motion_area: float = opt(0.001, "share of the motion image's pixels that must move for a frame to be detected "
                             "(0.001: 12 pixels of 128x96)", 0.0001, 1)


@dataclass
class ClassifierConfig:
    """The mask model (with its card beside it), its threads, and the threshold that flags a face."""

    model: Path = opt(None, "the .tflite model; its .json card must sit beside it",
                      factory=lambda: MODELS_DIR / "mask_classifier.tflite")
    threads: int = opt(2, "LiteRT threads (4 on a Pi 4 or 5)", 1, 64)
    threshold: float | None = opt(None, "p(without_mask) at which a face is flagged; unset: the model card's", 0.01,
                                  0.99)


@dataclass
class ScheduleConfig:
    """Which faces the mask model runs on each frame: a settled face that barely moved may keep its last verdict."""

    reuse: bool = opt(True, "a face whose track is settled, whose box barely moved (iou) and whose last p was clear "
                      "of the threshold (margin) keeps its verdict for up to `every` frames instead of being "
                      "classified again (false: every face on every frame)")
    every: int = opt(2, "a face is classified at least once in this many frames (1: on every frame; 2: a settled "
                     "face that changes is seen at most one frame late)", 1, 100)
    iou: float = opt(0.9, "IoU with its box on the frame before above which a face counts as not moved", 0.5, 1)
    margin: float = opt(0.3, "a verdict is kept only when its p(not properly masked) is this far from the "
                        "threshold or more", 0, 1)


@dataclass
class PolicyConfig:
    """How faces' votes settle into a decision and how long a decision holds: see policy.py."""

    mode: Literal["lock-on-unmasked", "unlock-on-masked"] = opt(
        "lock-on-unmasked", "lock-on-unmasked: relay locks or alarms while an unmasked face is present; "
        "unlock-on-masked: the door is released only while every face present is masked")
    incorrect_mask: Literal["deny", "allow"] = opt(
        "deny", "a face the model labels incorrect_mask (a mask under the nose or chin; 3-class models only): deny, "
        "or allow as masked")
    min_size: float = opt(32.0, "faces smaller than this (shorter side, in the pixels faces are cropped from) cast "
                          "no vote: the model cannot tell masks apart on them", 0, 4096)
    full_size: float = opt(64.0, "a face's vote weighs its size / full_size, up to 1 from this size on", 1, 4096)
    unsure: float = opt(0.5, "how sure the model must be for a frame to vote at all: 0 at the threshold, 1 at p = 0 "
                        "or 1 (0.5: p above 0.75 or below 0.25 with a threshold of 0.5)", 0, 0.99)
    sure: float = opt(0.95, "how sure the model must be for a frame's vote to weigh fully (same scale)", 0.01, 1)
    deny_evidence: float = opt(2.5, "weighted votes that settle a face as unmasked (a clear, large face gives 1 a "
                               "frame)", 0.1, 100)
    allow_evidence: float = opt(3.0, "weighted votes that settle a face as masked", 0.1, 100)
    allow_size: float = opt(80.0, "a face settles as masked only once it has been seen at least this large", 0,
                            4096)
    judge_average: bool = opt(True, "a face seen at allow_size or larger is also judged on its average p(not "
                               "properly masked) there, at the threshold: at or above it the face is denied and never "
                               "allowed (masks just under the nose waver around the threshold); false: votes alone")
    unsettled: Literal["wait", "deny"] = opt(
        "deny", "a face seen at allow_size or larger for unsettled_after seconds that has settled neither way: deny "
        "it (lock-on-unmasked then locks for it), or wait for the votes (the door stays as it was: released in "
        "lock-on-unmasked, locked in unlock-on-masked)")
    unsettled_after: float = opt(1.33, "seconds from a face's first frame at allow_size or larger after which "
                                 "unsettled = deny denies it while it is still unsettled (1.33: the 20 frames the "
                                 "average is taken over, at 15 fps)", 0, 600)
    track_iou: float = opt(0.3, "IoU with which a face in a new frame continues a track", 0.05, 0.95)
    track_timeout: float = opt(1.0, "seconds a face may go unseen before its track ends", 0.05, 60)
    deny_hold: float = opt(3.0, "seconds the door stays denied after the last unmasked face has gone", 0, 600)
    allow_hold: float = opt(3.0, "seconds the door stays released after the last masked face has gone", 0, 600)


@dataclass
class GpioConfig:
    """The relay, buzzer and LED pins (BCM numbers) and the door's fail state."""

    relay_pin: int | None = opt(17, "BCM pin of the door relay; unset: no relay", 0, 27)
    relay_active_high: bool = opt(True, "the relay board energizes on a high pin (false: on a low pin)")
    relay_energized: Literal["locked", "released"] = opt(
        "locked", "what the door does while the relay is energized (wired to a lock or an alarm: locked)")
    fail: Literal["safe", "secure"] = opt(
        "safe", "door state on start, stop, crash, lost camera and watchdog: safe = released, secure = locked")
    buzzer_pin: int | None = opt(27, "BCM pin of an active buzzer; unset: none", 0, 27)
    buzzer_active_high: bool = opt(True, "the buzzer sounds on a high pin")
    buzzer_on: float = opt(0.2, "buzzer on-time per beep while denying, seconds", 0.01, 10)
    buzzer_off: float = opt(0.2, "buzzer off-time per beep while denying, seconds", 0.01, 10)
    buzzer_beeps: int = opt(3, "beeps per denial (0: sound as long as the denial lasts)", 0, 1000)
    buzzer_cooldown: float = opt(10.0, "seconds before the buzzer sounds again for a new denial", 0, 3600)
    green_pin: int | None = opt(22, "BCM pin of the green LED (allow); unset: none", 0, 27)
    red_pin: int | None = opt(23, "BCM pin of the red LED (deny); unset: none", 0, 27)
    rgb_pins: tuple[int, int, int] | None = opt(None, "BCM pins (red, green, blue) of an RGB LED instead of the "
                                                "two LEDs; unset: none", 0, 27)


@dataclass
class EventsConfig:
    """The event log's SQLite file, printed decisions, and whether face images are kept."""

    database: Path = opt(None, "SQLite file for decisions, faults and model swaps",
                         factory=lambda: _state_dir() / "events.db")
    print_decisions: bool = opt(False, "also print each decision on stdout")
    save_faces: bool = opt(False, "store a JPEG of each face behind a decision (off: no face image is kept)")
    faces_dir: Path = opt(None, "where face images go when save_faces is on",
                          factory=lambda: _state_dir() / "faces")


@dataclass
class ServiceConfig:
    """The service's own clocks: status updates, the camera timeout, the model poll."""

    status_interval: float = opt(5.0, "seconds between STATUS= updates to systemd and the log", 0.5, 3600)
    camera_timeout: float = opt(3.0, "seconds without a frame before the door goes to its fail state", 0.5, 600)
    model_poll: float = opt(2.0, "seconds between checks of the model file for a new version", 0.2, 3600)


@dataclass
class MqttConfig:
    """The MQTT output (off while host is empty)."""

    host: str = opt("", "MQTT broker host name or address; empty: MQTT off")
    port: int = opt(1883, "MQTT broker port (8883 is the usual one with TLS)", 1, 65535)
    username: str = opt("", "user name at the broker; empty: none")
    password_file: Path | None = opt(None, "file whose first line is the broker password; unset: none")
    tls_ca: Path | None = opt(None, "CA certificate (PEM) the broker's certificate is checked against; set: TLS")
    client_id: str = opt("", "MQTT client id, unique on the broker; empty: mask-appliance-<hostname>")
    topic_prefix: str = opt("", "topics start with this; empty: mask-appliance/<hostname>")
    discovery_prefix: str = opt("homeassistant", "Home Assistant discovery prefix; empty: no discovery")
    retain_state: bool = opt(True, "the broker keeps the last state, so a new subscriber sees it at once")
    queue: int = opt(1000, "messages waiting for the broker at most; more are shed (counted and logged; events "
                     "shed are sent again from the event log)", 10, 1000000)
    backlog: int = opt(1000, "events from the log sent at most when the broker returns (oldest first)", 0, 1000000)

    def check(self, origin: str) -> None:
        """ConfigError naming the key and value for what the types alone cannot catch (no file is read)."""
        if not self.host:
            return
        if any(c.isspace() for c in self.host):
            raise ConfigError(f"{origin}: [mqtt] host = {self.host!r} is not a host name or address")
        for key in ("topic_prefix", "discovery_prefix"):
            value = getattr(self, key)
            if _TOPIC_BAD.search(value) or value.startswith("/") or value.endswith("/"):
                raise ConfigError(f"{origin}: [mqtt] {key} = {value!r} is not a topic prefix (no +, #, leading or "
                                  "trailing /)")
        if self.password_file is not None and not self.username:
            raise ConfigError(f"{origin}: [mqtt] password_file = '{self.password_file}' is set but username is "
                              "empty")

    def check_files(self, origin: str) -> None:
        """ConfigError naming the key when a file it names is not there (check_files, at start)."""
        for key in ("password_file", "tls_ca"):
            path = getattr(self, key)
            if self.host and path is not None and not Path(path).is_file():
                raise ConfigError(f"{origin}: [mqtt] {key} = '{path}' does not exist")


@dataclass
class HttpConfig:
    """The status page and /metrics server (off while listen is empty)."""

    listen: str = opt("", 'address:port that serves /metrics, /status.json and the status page, e.g. '
                      '"127.0.0.1:8080" or "0.0.0.0:8080"; empty: no server, nothing listens')
    token_file: Path | None = opt(None, "file whose first line is a token every request must carry (header "
                                  "'Authorization: Bearer TOKEN', or ?token=TOKEN on the page's address); unset: none")
    snapshot: bool = opt(False, "the page shows the latest frame, once a second, faces blurred unless [events] "
                         "save_faces is on")

    def check(self, origin: str) -> None:
        """ConfigError naming the key and value for what the types alone cannot catch (no file is read)."""
        if self.listen:
            parse_listen(self.listen, origin)

    def check_files(self, origin: str) -> None:
        """ConfigError naming the key when the token file is missing or empty (check_files, at start)."""
        if not self.listen or self.token_file is None:
            return
        if not Path(self.token_file).is_file():
            raise ConfigError(f"{origin}: [http] token_file = '{self.token_file}' does not exist")
        if not read_token(self.token_file):
            raise ConfigError(f"{origin}: [http] token_file = '{self.token_file}' is empty")


_TOPIC_BAD = re.compile(r"[#+\x00]")  # MQTT wildcards and NUL: never in a topic prefix


def parse_listen(value: str, origin: str = "<config>") -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ConfigError naming the key otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or any(c.isspace() for c in host):
        raise ConfigError(f"{origin}: [http] listen = {value!r} is not address:port (e.g. \"127.0.0.1:8080\")")
    return host, int(port)


def read_token(path: Path) -> str:
    """The first line of a token file, stripped."""
    return next(iter(Path(path).read_text().splitlines()), "").strip()


@dataclass
class CollectConfig:
    """Keeping the faces the model is unsure of, for labelling and retraining (off by default)."""

    enabled: bool = opt(False, "keep the faces the model is unsure of (a small crop and a JSON line each) for "
                        "labelling and retraining; off: no face is kept. A shop may need a sign at the door")
    band: tuple[float, float] = opt((0.15, 0.85), "a face is kept when its p(without_mask) lies in this range (or "
                                    "its track's votes disagreed)", 0, 1)
    max_per_hour: int = opt(20, "most faces kept in any hour", 0, 3600)
    max_files: int = opt(2000, "most crops on disk; the oldest go first", 1, 1_000_000)
    max_age_days: float = opt(14.0, "crops are deleted this many days after they were taken, also while "
                              "collection is off", 0.001, 3650)

    def check(self, origin: str) -> None:
        """What the per-key bounds cannot say: the band's ends in order."""
        lo, hi = self.band
        if lo >= hi:
            raise ConfigError(f"{origin}: [collect] band = [{lo}, {hi}] is not a range (the first value must be "
                              "the smaller)")


@dataclass
class Config:
    """The whole file: one section per table, each optional."""

    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)


def parse(table: dict[str, Any], origin: str = "<config>") -> Config:
    """The config in a TOML document already read (`origin` names it in errors), checked key by key and as a whole."""
    cfg = parse_sections(Config, table, origin)
    validate(cfg, origin)
    return cfg


def load(path: Path | None) -> Config:
    """The config at `path` (every key optional), or the defaults where `path` is None."""
    if path is None:
        return parse({}, "<defaults>")
    path = Path(path)
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})"
                          ) from None
    except OSError as exc:  # a folder, no permission, an I/O error: the file is named all the same
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    return parse(table, str(path))


def validate(cfg: Config, origin: str) -> None:
    """What the per-key bounds cannot say: keys that must agree with each other. Reads no model file."""
    _check_pins(cfg.gpio, origin)
    p = cfg.policy
    if p.unsure >= p.sure:
        raise ConfigError(f"{origin}: [policy] unsure = {p.unsure} is not less than [policy] sure = {p.sure}")
    if p.min_size > p.full_size:
        raise ConfigError(f"{origin}: [policy] min_size = {p.min_size} is more than [policy] full_size = "
                          f"{p.full_size}")
    s = cfg.source
    if s.reconnect_min > s.reconnect_max:
        raise ConfigError(f"{origin}: [source] reconnect_min = {s.reconnect_min} is more than "
                          f"reconnect_max = {s.reconnect_max}")
    for key in ("main_size", "lores_size"):
        width, height = getattr(s, key)
        if width * height > s.max_pixels:  # every frame of that stream would be skipped as too large
            raise ConfigError(f"{origin}: [source] {key} = [{width}, {height}] is {width * height} pixels, more than "
                              f"[source] max_pixels = {s.max_pixels}")
    cfg.collect.check(origin)
    cfg.mqtt.check(origin)
    cfg.http.check(origin)


def _check_pins(g: GpioConfig, origin: str) -> None:
    """No pin drives two devices, and the fail state is the one a de-energized relay gives."""
    pins: dict[int, str] = {}
    named = [("relay_pin", g.relay_pin), ("buzzer_pin", g.buzzer_pin)]
    if g.rgb_pins is None:  # an RGB LED replaces the two LEDs: their pins (default or not) are then not claimed
        named += [("green_pin", g.green_pin), ("red_pin", g.red_pin)]
    named += [(f"rgb_pins[{i}]", p) for i, p in enumerate(g.rgb_pins or ())]
    for key, pin in named:
        if pin is None:
            continue
        if pin in pins:
            raise ConfigError(f"{origin}: [gpio] {key} = {pin} is already used by [gpio] {pins[pin]}")
        pins[pin] = key
    fail_door = "released" if g.fail == "safe" else "locked"
    if g.relay_pin is not None and g.relay_energized == fail_door:
        raise ConfigError(
            f"{origin}: [gpio] fail = {g.fail!r} wants the door {fail_door} when the service is down, but "
            f"relay_energized = {g.relay_energized!r} needs the relay energized for that, which no crashed or "
            f"stopped service (or a power cut) can hold: wire the lock so the de-energized relay leaves it {fail_door}")


def check_files(cfg: Config, origin: str) -> None:
    """The files the config names that a command needs before it starts: the model, and the outputs' password,
    certificate and token files where those outputs are on. `run`, `check` and `detect` call it after loading; a
    reload calls it before it applies anything. validate() reads no file."""
    if not cfg.classifier.model.is_file():
        raise ConfigError(f"{origin}: [classifier] model = '{cfg.classifier.model}' does not exist")
    cfg.mqtt.check_files(origin)
    cfg.http.check_files(origin)


def describe() -> str:
    """Every key with its default and description, as a commented TOML file (`mask-appliance config`)."""
    return describe_sections(Config)
