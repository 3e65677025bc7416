"""The whole learning loop of issue #15 on real files, as a shop runs it: the real service collects the faces it is
unsure of at a door whose camera it never met (scenes-ilc photos as a night-mode camera sees them) under its hourly
cap; `mask-deploy pull` fetches them over the test sshd; a person labels them on the labelling page in headless
Chromium, key by key; `mask-train train --init` fine-tunes the door's model (the shipped int8 model, whose float
weights are recovered from it) with them in a few minutes; `mask-train gate` records its verdict in the card;
`mask-deploy push` refuses to send a model whose gate refused it and sends one whose gate passed, which the door's
running service takes up. The gate's pass and refusal are made certain by construction (fixed models on this fixed
door, no training); whether fine-tuning helps is measured by benchmarks/door_curve.py, not here."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import sys
import threading
import types
from pathlib import Path

import cv2
import pytest
from support.data import REPO, SHARED, SHIPPED, WEIGHTS_100
from support.deploy import deploy, sha_of
from support.labelling import CHROMIUM
from support.pi import Pi

from appliance import config
from appliance.reporting import collect, emitter
from appliance.seeing.card import load_card
from appliance.seeing.sources import ImageSource
from appliance.service import Service
from deploy import cli as deploy_cli
from training import label
from training.cli import main as mask_train
from training.splits import split_scenes

sys.path.insert(0, str(REPO / "benchmarks"))
from door_curve import truth_of_crops  # noqa: E402 (the script that stands in for a person's eyes)

ILC = SHARED / "datasets" / "scenes-ilc" / "labels.csv"
DOOR_PHOTOS = 420  # seven simulated hours of visits (60 s apart)
CAP = 40  # crops an hour: the door's cap must bite
NIGHT_BLUR = 2.0  # the door's camera in night mode: monochrome infrared, a little soft (Gaussian sigma, pixels)


def night(image):
    grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    return cv2.GaussianBlur(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), (0, 0), NIGHT_BLUR)


def night_door(root: Path, photos: list[str]) -> tuple[list[str], Path]:
    """The door: the photos as its camera sees them at night, and their labels (the same boxes) for the person's
    eyes. The shipped model never met such a camera: it is unsure of more faces there and flags more masked ones
    (FNR 0.35 against 0.04 in colour, on 150 photos of the validation part)."""
    root.mkdir()
    labels = root / "labels.csv"
    by_photo: dict[str, list[dict]] = {}
    with open(ILC, newline="") as f:
        for r in csv.DictReader(f):
            by_photo.setdefault(str(ILC.parent / r["image_path"]), []).append(r)
    out = []
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "x1", "y1", "x2", "y2", "label"])
        for photo in photos:
            name = Path(photo).name
            cv2.imwrite(str(root / name), night(cv2.imread(photo)), [cv2.IMWRITE_JPEG_QUALITY, 92])
            out.append(str(root / name))
            for r in by_photo[photo]:
                w.writerow([name, r["x1"], r["y1"], r["x2"], r["y2"], r["label"]])
    return out, labels


def replay_scenes(root: Path, photos: list[str]) -> Path:
    """Scenes the door's model trained on, trained on again in colour beside the door's night crops (as a shop
    replays scenes-ilc): a labels.csv of these photos."""
    root.mkdir()
    with open(ILC, newline="") as f:
        rows = [r for r in csv.DictReader(f) if str(ILC.parent / r["image_path"]) in set(photos)]
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "x1", "y1", "x2", "y2", "label"])
        for r in rows:
            w.writerow([str(ILC.parent / r["image_path"]), r["x1"], r["y1"], r["x2"], r["y2"], r["label"]])
    return root / "labels.csv"


def replay_crops(root: Path) -> Path:
    """The shared crops trained on again beside the door's: 100 of each class of mask-crops."""
    crops = SHARED / "datasets" / "mask-crops"
    for lab in ("with_mask", "without_mask"):
        (root / lab).mkdir(parents=True)
        for src in sorted((crops / lab).iterdir())[:100]:
            shutil.copy(src, root / lab / src.name)
    return root


def door_config(state: Path) -> config.Config:
    return config.parse({
        "classifier": {"model": str(state / "models" / "mask_classifier.tflite")},
        "events": {"database": str(state / "events.db")},
        "collect": {"enabled": True, "max_per_hour": CAP},
        "gpio": {"relay_pin": None, "buzzer_pin": None, "green_pin": None, "red_pin": None}})


def label_in_chromium(root: Path, truth: dict[str, str | None]) -> int:
    """A person at the page: for the crop it shows, the key of what the crop is (0 when no labelled face)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/test installs Debian's chromium")
    session = label.Session(root)
    server = label.make_server(session, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    keys = {"with_mask": "1", "without_mask": "2", "incorrect_mask": "3", None: "0"}
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_selector(".tile img")
            total = len(session.items)
            for done in range(1, total + 1):
                index = int(page.locator(".tile.current").get_attribute("data-index"))
                page.keyboard.press(keys[truth[Path(session.items[index]["path"]).name]])
                page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('{done} /')")
            assert "all done" in page.locator("#progress").inner_text()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return total


def test_collect_pull_label_fine_tune_gate_and_push(sshd, tmp_path, capsys, monkeypatch):
    _, hosts = sshd
    state = hosts["pi-a"]
    shutil.rmtree(state, ignore_errors=True)
    (state / "models").mkdir(parents=True)
    for suffix in (".tflite", ".json"):
        shutil.copy(SHIPPED.with_suffix(suffix), state / "models" / f"mask_classifier{suffix}")
    # the door: photos of scenes-ilc's training part at night; the gate's shared part is its validation part
    train_photos, _ = split_scenes(ILC)
    door_photos, door_truth = night_door(tmp_path / "door", train_photos[:DOOR_PHOTOS])

    # A crop's name is its time and a random tag, and the door's labels are split by name: this door's clock and
    # tags are fixed, so that the part the gate holds back is the same on every run.
    clock = itertools.count(1_800_000_000, 7)
    monkeypatch.setattr(emitter, "time", types.SimpleNamespace(time=lambda: float(next(clock))))
    tags = itertools.count()
    monkeypatch.setattr(collect, "secrets", types.SimpleNamespace(token_hex=lambda n: f"{next(tags):0{2 * n}x}"))

    # 1. the door: the real service on the photos, two frames a visit, collection on, at most CAP crops an hour
    cfg = door_config(state)
    Service(cfg).run(ImageSource([Path(p) for p in door_photos], still_frames=2))
    counts = json.loads((state / "status.json").read_text())["collect"]
    collected = state / "collect"
    index = [json.loads(line) for line in (collected / label.INDEX).read_text().splitlines()]
    assert counts["collected"] == len(index) == len(list(collected.glob("*.jpg")))
    assert counts["skipped_rate"] > 0 and counts["skipped_band"] > 0  # the cap and the band both turned faces away
    assert len(index) <= CAP * (DOOR_PHOTOS // 60 + 1)
    assert all(0.15 <= line["p_without_mask"] <= 0.85 or line.get("disagreed") for line in index)
    truth = truth_of_crops(collected, door_truth, door_photos, cfg)  # before the pull deletes them on the Pi

    # 2. pull them to the laptop (copied, verified, deleted on the Pi)
    dest = tmp_path / "door-crops"
    assert deploy(sshd, "pull", "pi-a", "--to", str(dest)) == 0
    assert not list(collected.glob("*.jpg")) and len(list((dest / "pi-a").glob("*.jpg"))) == len(index)

    # 3. label them in the page, key by key
    assert label_in_chromium(dest / "pi-a", truth) == len(index)
    with open(dest / "pi-a" / label.LABELS_FILE, newline="") as f:
        labelled = [r["label"] for r in csv.DictReader(f)]
    assert len(labelled) == sum(v is not None for v in truth.values()) and len(labelled) >= 150
    door_labels = dest / "pi-a" / label.LABELS_FILE

    # 4. fine-tune the door's model with them (the shipped model: no Keras file of it exists)
    new = tmp_path / "shop" / "mask_classifier.tflite"
    replay = [replay_crops(tmp_path / "replay"), replay_scenes(tmp_path / "scenes", train_photos[DOOR_PHOTOS::4])]
    assert mask_train(["train", *map(str, replay), str(door_labels), "--init", str(SHIPPED),
                       "--out", str(new.parent), "--base-weights", str(WEIGHTS_100), "--calibration-samples", "64",
                       "--threshold-scenes", str(ILC),  # where the door's model chose its own
                       "--min-agreement", "0.9"]) == 0  # a few dozen validation crops: one is 1.8%
    card = load_card(new.with_suffix(".json"))
    assert card.metrics["threshold_choice"]["source"] == "scenes-ilc validation part"
    assert card.training["init"]["sha256"] == sha_of(SHIPPED) and card.training["sources"][2]["kind"] == "door"
    assert card.training["source_weights"]["pi-a"] > 1  # the door's few crops weigh a quarter of the training

    # 5. the gate. Whether a few minutes of fine-tuning beat the door's model depends on that day's TensorFlow and
    # data: that question is measured by the simulated-door curve (benchmarks/door_curve.py), not here. The fine-tuned
    # model is gated against the door's (the verdict goes into its card, whichever it is); the pass and the refusal
    # that the push relies on are made certain by construction, with fixed models on this fixed door and no training:
    # the shipped model against itself read backwards (its card's first two labels swapped, so that it flags the
    # masked faces it would let in and lets in the unmasked ones it would flag), and the other way round.
    gate = ["--scenes", str(ILC), "--door-labels", str(door_labels)]
    mask_train(["gate", str(new), "--baseline", str(SHIPPED), *gate, "--visits", "0", "--tolerance", "0.09"])
    tuned = json.loads(new.with_suffix(".json").read_text())["gate"]
    assert tuned["baseline"]["sha256"] == sha_of(SHIPPED) and isinstance(tuned["passed"], bool)
    assert tuned["passed"] == tuned["reason"].startswith("better on every door's held-back part")
    assert set(tuned["parts"]) == {"scenes-ilc/labels.csv", "pi-a/labels.csv"}
    shipped, backwards = tmp_path / "shipped" / SHIPPED.name, tmp_path / "backwards" / SHIPPED.name
    for model in (shipped, backwards):
        model.parent.mkdir()
        shutil.copy(SHIPPED, model)
    backwards_card = json.loads(SHIPPED.with_suffix(".json").read_text())
    backwards_card["labels"][:2] = backwards_card["labels"][1::-1]
    backwards.with_suffix(".json").write_text(json.dumps(backwards_card))
    shutil.copy(SHIPPED.with_suffix(".json"), shipped.with_suffix(".json"))
    # Read backwards, a model flags incorrect masks (not with_mask) no less than read forwards, so the largest
    # tolerance leaves the pass to the door error on the door's held-back part, where unmasked and masked faces
    # decide it.
    assert mask_train(["gate", str(shipped), "--baseline", str(backwards), *gate, "--tolerance", "0.99",
                       "--visits", "5", "--visit-tolerance", "5"]) == 0, capsys.readouterr().out
    passed = json.loads(shipped.with_suffix(".json").read_text())["gate"]
    door = passed["parts"]["pi-a/labels.csv"]
    assert passed["passed"] and door["new"]["tnr"] > door["old"]["tnr"] and door["new"]["fnr"] < door["old"]["fnr"]
    visits = passed["visits"]["sets"]["scenes-ilc/labels.csv"]
    assert passed["visits"]["per_label"] == 5 and visits["new"]["unmasked"] == visits["old"]["unmasked"] > 5
    assert visits["new"]["unmasked_denied"] > visits["old"]["unmasked_denied"]
    assert {"undecided", "visits"} <= set(visits["new"]) & set(visits["old"])  # the gate judges undecided visits too
    assert mask_train(["gate", str(backwards), "--baseline", str(SHIPPED), *gate, "--visits", "0"]) == 1
    refused = json.loads(backwards.with_suffix(".json").read_text())["gate"]
    assert not refused["passed"] and "TNR on scenes-ilc/labels.csv" in refused["reason"]
    capsys.readouterr()

    # 6. push: the refused model is not sent; the passing one is, and the door's running service takes it up. The
    # door runs the fine-tuned model by then (another file than the shipped one), so that the swap shows.
    (state / "status.json").unlink()  # the collecting run's: the door's service writes its own
    for suffix in (".tflite", ".json"):
        shutil.copy(new.with_suffix(suffix), state / "models" / f"mask_classifier{suffix}")
    pi = Pi(state, fresh=False)
    try:
        ssh = ["--ssh-config", str(sshd[0] / "ssh_config"), "--timeout", "15"]
        assert deploy_cli.main([*ssh, "push", "pi-a", "--model", str(backwards)]) == 2
        assert "its gate did not pass" in capsys.readouterr().err
        assert pi.sha256 == sha_of(new)
        assert deploy_cli.main([*ssh, "push", "pi-a", "--model", str(shipped)]) == 0
        assert pi.sha256 == sha_of(SHIPPED)
        assert json.loads((state / "models" / "mask_classifier.json").read_text())["gate"]["passed"]
        assert (state / "models" / "mask_classifier.previous.tflite").read_bytes() == new.read_bytes()
    finally:
        pi.stop()
