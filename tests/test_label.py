"""The labelling page (issue #15) in headless Chromium, driven by keystrokes: real face crops cut as the appliance
cuts them, laid out as `mask-deploy pull` leaves them; every key saved at once, undo, resume after a restart, and a
labels.csv that training's scene reader cuts back into the very crops that were labelled."""

from __future__ import annotations

import csv
import http.client
import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.data import CROPS, REPO, SHIPPED
from support.labelling import CHROMIUM, make_door, publish_screenshot

from appliance.seeing.classifier import load_model
from appliance.seeing.imaging import pad_to_square
from training import label
from training.evaluate import label_crops, read_scene_labels
from training.splits import split_scenes


@pytest.fixture
def served(tmp_path):
    """start(dir) -> (session, url): the page's real server on 127.0.0.1, stopped after the test."""
    servers = []

    def start(root: Path) -> tuple[label.Session, str]:
        session = label.Session(root)
        server = label.make_server(session, 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return session, f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: scripts/test installs Debian's chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def rows(root: Path) -> list[dict]:
    with open(root / label.LABELS_FILE, newline="") as f:
        return list(csv.DictReader(f))


def progress(page) -> str:
    return page.locator("#progress").inner_text()


def press(page, key: str, done: int) -> None:
    """A key, then wait until the page shows the saved count (each key is one saved request)."""
    page.keyboard.press(key)
    page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('{done} /')")


def test_keys_label_save_at_once_undo_and_resume_in_chromium(tmp_path, served, browser):
    truth = make_door(tmp_path, 10)
    session, url = served(tmp_path)
    order = [it["path"] for it in session.items]
    ps = [it["p"] for it in session.items]
    assert ps == sorted(ps)  # the model's guess in order: sure masks first, sure unmasked faces last
    page = browser.new_page(viewport={"width": 900, "height": 700})
    page.goto(url)
    page.wait_for_selector(".tile img")
    assert progress(page).startswith("0 / 10 done")
    assert page.locator(".tile.current").get_attribute("data-index") == "0"
    key = {"with_mask": "1", "without_mask": "2", "incorrect_mask": "3"}
    press(page, key[truth[order[0]]], 1)
    assert [r["image_path"] for r in rows(tmp_path)] == [order[0]]  # saved with the key, before any other
    assert rows(tmp_path)[0]["label"] == truth[order[0]]
    press(page, "0", 2)  # skip the second: not a label, but decided
    assert len(rows(tmp_path)) == 1
    press(page, "3", 3)  # the third, wrongly
    press(page, "u", 2)  # taken back
    assert len(rows(tmp_path)) == 1 and page.locator(".tile.current").get_attribute("data-index") == "2"
    press(page, key[truth[order[2]]], 3)
    assert [r["image_path"] for r in rows(tmp_path)] == [order[0], order[2]]
    assert "1 skipped" in progress(page)
    page.close()

    # the command stops and starts again: it resumes on the fourth crop, with what was decided
    session2, url2 = served(tmp_path)
    page = browser.new_page(viewport={"width": 900, "height": 700})
    page.goto(url2)
    page.wait_for_selector(".tile img")
    assert progress(page).startswith("3 / 10 done")
    assert page.locator(".tile.current").get_attribute("data-index") == "3"
    for i, path in enumerate(order[3:], start=4):
        press(page, key[truth[path]], i)
    assert "10 / 10 done" in progress(page) and "all done" in progress(page)
    page.screenshot(path=str(tmp_path / "page.png"))
    page.close()
    got = {r["image_path"]: r["label"] for r in rows(tmp_path)}
    assert got == {p: truth[p] for p in order if p != order[1]}


def test_the_labels_file_is_a_scene_source_that_cuts_back_the_same_crops(tmp_path):
    truth = make_door(tmp_path, 6)
    session = label.Session(tmp_path)
    for path, lab in truth.items():
        session.decide(path, lab)
    model = load_model(SHIPPED, 1)
    labels = read_scene_labels(tmp_path / label.LABELS_FILE)
    ys, probs = label_crops(labels, model.classify_all)
    assert len(ys) == 6
    # each crop, cut again from its row's box with the card's margin, is the crop itself: the same p as at the door,
    # but for the JPEG (quality 92) the crop was stored as, which moves a face in the unsure band by up to 0.05
    index = {json.loads(line)["file"]: json.loads(line)["p_without_mask"]
             for line in (tmp_path / "pi-a" / "index.jsonl").read_text().splitlines()}
    door_p = [index[Path(path).name] for path in labels]
    assert np.allclose(model.not_masked(probs.reshape(6, -1)), door_p, atol=0.05)
    train, val = split_scenes(tmp_path / label.LABELS_FILE)
    assert sorted(train + val) == sorted(str(tmp_path / label.LABELS_FILE).rsplit("/", 1)[0] + "/" + p
                                         for p in truth)


def test_the_server_answers_only_its_own_host_and_listed_crops(tmp_path, served):
    make_door(tmp_path, 2)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    session, url = served(tmp_path)
    port = int(url.rsplit(":", 1)[1].strip("/"))

    def ask(method: str, path: str, host: str = f"127.0.0.1:{port}", body: dict | None = None,
            origin: str | None = None) -> int:
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers = {"Host": host, **({"Origin": origin} if origin else {})}
        con.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        status = con.getresponse().status
        con.close()
        return status

    first = session.items[0]["path"]
    assert ask("GET", f"/crop?path={first}") == 200
    assert ask("GET", "/crop?path=../secret.jpg") == 404 and ask("GET", "/crop?path=secret.jpg") == 404
    assert ask("GET", "/", host="evil.example:80") == 403  # a rebound name
    assert ask("POST", "/api/label", body={"path": first, "label": "with_mask"}, origin="http://evil.example") == 403
    assert ask("POST", "/api/label", body={"path": first, "label": "masked"}) == 400
    assert not (tmp_path / label.LABELS_FILE).exists()  # nothing refused was saved
    assert ask("POST", "/api/label", body={"path": first, "label": "with_mask"}) == 200
    assert rows(tmp_path)[0]["label"] == "with_mask"


def test_a_folder_without_crops_is_one_line_naming_it(tmp_path):
    with pytest.raises(label.LabelError, match=f"{tmp_path}: no crops listed"):
        label.Session(tmp_path)
    (tmp_path / "index.jsonl").write_text("not json\n")
    with pytest.raises(label.LabelError, match=r"index.jsonl:1: not a crop's line"):
        label.Session(tmp_path)


def make_mit_door(root: Path, n: int, host: str = "pi-a") -> dict[str, str]:
    """n face crops of mask-crops (MIT licence, so the screenshot may ship; scene photos have no licence) as a
    pulled door folder, each padded square and sized as the classifier's input, with the shipped model's p."""
    model = load_model(SHIPPED, 1)
    folder = root / host
    folder.mkdir(parents=True)
    sources = [p for pair in zip(sorted((CROPS / "with_mask").iterdir())[100:], sorted(
        (CROPS / "without_mask").iterdir())[100:], strict=False) for p in pair][:n]
    truth = {}
    with open(folder / "index.jsonl", "w") as index:
        for i, src in enumerate(sources):
            crop = cv2.cvtColor(pad_to_square(cv2.imread(str(src)), model.input_size), cv2.COLOR_BGR2RGB)
            name = f"20261130T0900{i:02d}-000-{i:06x}.jpg"
            cv2.imwrite(str(folder / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            p = float(model.predict(crop[None])[0])
            index.write(json.dumps({"file": name, "p_without_mask": p, "host": host}) + "\n")
            truth[f"{host}/{name}"] = src.parent.name
    return truth


def test_screenshot_for_the_readme(tmp_path, served, browser):
    """docs/results/label-page.png (scripts/screenshots): a door folder partly labelled, as a shop owner sees it."""
    truth = make_mit_door(tmp_path, 24)
    session, url = served(tmp_path)
    for i, path in enumerate([it["path"] for it in session.items][:15]):
        session.decide(path, label.SKIP if i == 12 else truth[path])
    page = browser.new_page(viewport={"width": 1000, "height": 620})
    page.goto(url)
    page.wait_for_selector(".tile img")
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert progress(page).startswith("15 / 24 done") and "1 skipped" in progress(page)
    out = tmp_path / "shots" / "label-page.png"
    out.parent.mkdir()
    page.screenshot(path=str(out))
    page.close()
    shot = cv2.imread(str(out))
    assert shot is not None and shot.shape == (620, 1000, 3)  # the page as the viewport shows it
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 1000  # the crops' photos, not a blank page
    publish_screenshot(out)


def test_undo_of_a_relabel_gives_the_earlier_label_back_and_survives_a_restart(tmp_path):
    make_door(tmp_path, 3)
    s = label.Session(tmp_path)
    a, b = s.items[0]["path"], s.items[1]["path"]
    s.decide(a, "with_mask")
    s.decide(b, "skip")
    s.decide(a, "incorrect_mask")  # picked again with a click, relabelled
    assert {r["image_path"]: r["label"] for r in rows(tmp_path)} == {a: "incorrect_mask"}
    again = label.Session(tmp_path)  # a restart in between
    assert again.undo() == a and again.decisions == {a: "with_mask", b: "skip"}
    assert {r["image_path"]: r["label"] for r in rows(tmp_path)} == {a: "with_mask"}
    assert again.undo() == b and again.undo() == a and again.undo() is None
    assert again.decisions == {} and rows(tmp_path) == []
    with pytest.raises(label.LabelError, match="label 'masked' is not one of"):
        again.decide(a, "masked")


def test_run_serves_until_ctrl_c_and_says_where_the_labels_are(tmp_path):
    make_door(tmp_path, 2)
    code = ("import argparse, sys; from training import label; p = argparse.ArgumentParser(); "
            "label.add_arguments(p); sys.exit(label.run(p.parse_args(sys.argv[1:])))")
    # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and Python then leaves it ignored, so the page would never hear the test's Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), "--port", "0", "--no-browser"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"labelling 2 crops of {tmp_path} at http://127.0.0.1:")
        url = first.split(" at ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(url + "api/state", timeout=5) as r:
            assert json.load(r)["total"] == 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and f"0 of 2 crops decided; labels in {tmp_path / 'labels.csv'}" in out
