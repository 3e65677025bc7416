"""`mask-deploy pull` and the push gate (issue #15) against the real sshd of plugins/deploy.py: crops collected on a
fake Pi by the real Collector and EventLog are copied, verified and only then deleted there; an interrupted or
corrupted pull loses nothing and resumes; a hostile index cannot reach outside the folders; a model without a
passing gate is refused unless forced, and a forced push says so and marks the Pi's card."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest
from support.data import SCENES, SHIPPED
from support.deploy import deploy, sha_of, ungated

from appliance import config
from appliance.reporting.collect import CollectConfig, Collector
from appliance.reporting.events import EventLog
from appliance.seeing.classifier import crop_faces, load_model
from deploy import cli, pull, push


def collect_on(state: Path, n: int, group: str | None = None) -> dict[str, bytes]:
    """n real face crops collected into a fake Pi's state folder by the real Collector; {file name: bytes}."""
    if state.exists():
        shutil.rmtree(state)
    state.mkdir()
    model = load_model(SHIPPED, 1)
    with open(SCENES / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    events = EventLog(state / "events.db")
    collector = Collector(config._section("<test>", "collect", CollectConfig, {"enabled": True}), state / "collect",
                          events)
    for i, row in enumerate(rows):
        frame = cv2.imread(str(SCENES / row["image_path"]))
        box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        crop = crop_faces(frame, [box], model.card.crop, model.input_size)[0]
        assert collector.offer(crop, {"time": 1_800_000_000.0 + i, "p_without_mask": 0.5, "label": "with_mask",
                                      "decision": "idle", "model_sha256": model.sha256, "face_size": 99.0,
                                      "track_id": i})
    assert events.flush()
    events.close()
    assert collector.collected == n
    folder = state / "collect"
    if group:  # as on a Pi: the service's group, which holds the deploy user
        for path in [folder, *folder.iterdir()]:
            shutil.chown(path, group=group)
    return {p.name: p.read_bytes() for p in folder.glob("*.jpg")}


def pulled(dest: Path, host: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (dest / host).glob("*.jpg")}


def local_index(dest: Path, host: str) -> list[dict]:
    return [json.loads(line) for line in (dest / host / "index.jsonl").read_text().splitlines()]


def on_pi(state: Path) -> set[str]:
    return {p.name for p in (state / "collect").glob("*.jpg")}


def test_pull_copies_verifies_then_deletes_on_the_pi(sshd, tmp_path, capsys):
    state = sshd[1]["pi-a"]
    crops = collect_on(state, 7)
    dest = tmp_path / "door-crops"
    assert deploy(sshd, "pull", "pi-a", "--to", str(dest)) == 0
    out = capsys.readouterr().out
    assert "7 new crops" in out and "7 deleted on the Pi" in out
    assert pulled(dest, "pi-a") == crops and on_pi(state) == set()
    index = local_index(dest, "pi-a")
    assert sorted(line["file"] for line in index) == sorted(crops)
    for line in index:
        assert line["host"] == "pi-a" and line["sha256"] == hashlib.sha256(crops[line["file"]]).hexdigest()
        assert line["p_without_mask"] == 0.5 and line["face_size"] == 99.0
    # nothing new: nothing fetched, nothing doubled
    assert deploy(sshd, "pull", "pi-a", "--to", str(dest)) == 0
    assert "0 new crops" in capsys.readouterr().out and len(local_index(dest, "pi-a")) == 7


def test_keep_leaves_the_crops_and_a_second_pull_fetches_none_again(sshd, tmp_path, capsys):
    state = sshd[1]["pi-b"]
    crops = collect_on(state, 3)
    dest = tmp_path / "door-crops"
    assert deploy(sshd, "pull", "pi-b", "--to", str(dest), "--keep") == 0
    assert "3 new crops" in capsys.readouterr().out and on_pi(state) == set(crops)
    assert deploy(sshd, "pull", "pi-b", "--to", str(dest), "--keep") == 0
    assert "0 new crops" in (out := capsys.readouterr().out) and "3 were here already, kept on the Pi" in out
    assert pulled(dest, "pi-b") == crops and len(local_index(dest, "pi-b")) == 3


def test_an_interrupted_pull_loses_nothing_and_resumes(sshd, tmp_path, monkeypatch, capsys):
    state = sshd[1]["pi-a"]
    crops = collect_on(state, 8)
    dest = tmp_path / "door-crops"
    monkeypatch.setattr(pull, "PULL_BATCH", 3)
    store, calls = pull._Local.store, []

    def power_cut_at_the_fifth(self, crop, data):
        calls.append(crop["file"])
        if len(calls) == 5:
            raise OSError(5, "Input/output error (the laptop lost power)")
        store(self, crop, data)

    monkeypatch.setattr(pull._Local, "store", power_cut_at_the_fifth)
    assert deploy(sshd, "pull", "pi-a", "--to", str(dest)) == 1
    assert "the laptop lost power" in capsys.readouterr().out
    here, there = pulled(dest, "pi-a"), on_pi(state)
    assert len(here) == 4 and len(there) == 5  # the first batch of 3 deleted there; the 4th copied, not yet deleted
    assert set(here) | there == set(crops)  # every crop is somewhere
    assert all(crops[name] == data for name, data in here.items())
    monkeypatch.setattr(pull._Local, "store", store)
    assert deploy(sshd, "pull", "pi-a", "--to", str(dest)) == 0
    out = capsys.readouterr().out
    assert "4 new crops" in out and "1 were here already" in out and "5 deleted on the Pi" in out
    assert pulled(dest, "pi-a") == crops and on_pi(state) == set()
    assert sorted(line["file"] for line in local_index(dest, "pi-a")) == sorted(crops)  # each once
    assert not list((dest / "pi-a").glob(".*"))


def test_a_copy_corrupted_on_the_way_stays_on_the_pi(sshd, tmp_path, monkeypatch, capsys):
    state = sshd[1]["pi-a"]
    crops = collect_on(state, 4)
    victim = sorted(crops)[1]
    frames = pull._frames

    def flip_a_bit(data):
        for name, body in frames(data):
            yield name, (bytes([body[0] ^ 1]) + body[1:]) if name == victim and body else body

    monkeypatch.setattr(pull, "_frames", flip_a_bit)
    dest = tmp_path / "door-crops"
    assert deploy(sshd, "pull", "pi-a", "--to", str(dest)) == 1
    assert "1 arrived corrupted and stay on the Pi" in capsys.readouterr().out
    assert on_pi(state) == {victim} and set(pulled(dest, "pi-a")) == set(crops) - {victim}
    monkeypatch.setattr(pull, "_frames", frames)
    assert deploy(sshd, "pull", "pi-a", "--to", str(dest)) == 0
    assert pulled(dest, "pi-a") == crops and on_pi(state) == set()


def test_a_hostile_index_reaches_nothing_outside_the_folders(sshd, tmp_path, capsys):
    state = sshd[1]["pi-a"]
    crops = collect_on(state, 2)
    (state / "secret.jpg").write_bytes(b"not a crop")
    with open(state / "collect" / "index.jsonl", "a") as f:
        for name in ("../secret.jpg", "/etc/passwd", "20260101T000000-000-abcdef.jpg/../../secret.jpg"):
            f.write(json.dumps({"file": name}) + "\n")
    dest = tmp_path / "door-crops"
    assert deploy(sshd, "pull", "pi-a", "--to", str(dest)) == 0
    capsys.readouterr()
    assert pulled(dest, "pi-a") == crops and (state / "secret.jpg").exists()
    assert sorted(p.name for p in dest.rglob("*")) == sorted(["pi-a", "index.jsonl", *crops])
    assert deploy(sshd, "pull", "a/b", "--to", str(dest)) == 1
    assert "cannot contain '/'" in capsys.readouterr().out


def test_pull_takes_the_same_ssh_path_as_push(sshd, tmp_path, capsys):
    state = sshd[1]["pi-stranger"]
    crops = collect_on(state, 2)
    assert deploy(sshd, "pull", "pi-stranger", "--to", str(tmp_path)) == 1
    assert "host key unknown or changed" in capsys.readouterr().out
    assert on_pi(state) == set(crops) and not (tmp_path / "pi-stranger").exists()
    assert deploy(sshd, "pull", "--to", str(tmp_path), "--", "-oProxyCommand=true", "pi-a") == 1
    assert "starts with '-'" in capsys.readouterr().out


def test_the_deploy_user_pulls_from_the_services_folder_others_cannot_read(sshd, deploy_user, tmp_path, capsys):
    if deploy_user is None:
        pytest.skip("needs root, to make a second user and let sshd log in as it")
    state = sshd[1]["pi-deployer"]
    crops = collect_on(state, 3, group=deploy_user.group)  # owned by root (the service here), group: the deploy user's
    folder = state / "collect"
    assert folder.stat().st_uid == 0 and folder.stat().st_mode & 0o007 == 0
    assert all((folder / n).stat().st_mode & 0o007 == 0 for n in crops)  # nobody else reads a face
    assert deploy(sshd, "pull", "pi-deployer", "--to", str(tmp_path)) == 0, capsys.readouterr().out
    assert pulled(tmp_path, "pi-deployer") == crops and on_pi(state) == set()
    nobody = subprocess.run(["su", "-s", "/bin/sh", "nobody", "-c", f"ls {folder}"], capture_output=True)
    assert nobody.returncode != 0


# -- the gate before a push -----------------------------------------------------------------------------------------

def test_a_model_without_a_passing_gate_is_refused_unless_forced(sshd, pis, variants, capsys):
    (pi,) = pis("pi-a")
    before = pi.sha256
    config_args = ["--ssh-config", str(sshd[0] / "ssh_config"), "--timeout", "15"]
    model = ungated(variants, 11)
    assert cli.main([*config_args, "push", "pi-a", "--model", str(model)]) == 2
    assert "its card has no gate; nothing pushed" in capsys.readouterr().err
    failed = ungated(variants, 12, {"passed": False, "reason": "FNR on scenes-ilc 0.031 worse than 0.018"})
    assert cli.main([*config_args, "push", "pi-a", "--model", str(failed)]) == 2
    assert "its gate did not pass (FNR on scenes-ilc 0.031 worse than 0.018)" in capsys.readouterr().err
    assert pi.sha256 == before  # nothing reached the Pi
    assert not list((pi.state / "models").glob(".incoming*"))

    assert cli.main([*config_args, "push", "--force", "pi-a", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"FORCED: {model} is pushed although its card has no gate")
    assert pi.sha256 == sha_of(model)
    card = json.loads((pi.state / "models" / "mask_classifier.json").read_text())
    assert card["push"]["forced"] is True and card["push"]["reason"] == "its card has no gate"
    assert card["sha256"] == sha_of(model)  # the card still describes the model it sits beside
    local = json.loads(model.with_suffix(".json").read_text())
    assert "push" not in local  # the laptop's card is left as it was


def test_a_gated_model_is_pushed_without_force_and_its_card_is_unchanged(sshd, pis, variants, capsys):
    (pi,) = pis("pi-b")
    model = variants(13)  # its card has a passing gate (test_deploy.PASSING_GATE)
    assert cli.main(["--ssh-config", str(sshd[0] / "ssh_config"), "--timeout", "15", "push", "pi-b", "--model",
                     str(model)]) == 0
    assert "FORCED" not in capsys.readouterr().out and pi.sha256 == sha_of(model)
    assert (pi.state / "models" / "mask_classifier.json").read_bytes() == model.with_suffix(".json").read_bytes()


def test_gate_problem_reads_only_a_true_passed():
    assert push.gate_problem({"gate": {"passed": True}}) is None
    assert push.gate_problem({"gate": {"passed": "true"}}) == "its gate did not pass (no reason given)"
    assert push.gate_problem({"gate": None}) == "its card has no gate"
    assert push.gate_problem([]) == "its card has no gate"
    assert push.gate_problem(json.loads(SHIPPED.with_suffix(".json").read_text())) == "its card has no gate"
