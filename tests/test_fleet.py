"""deploy/ansible/site.yml run for real (ansible-playbook from the venv, its push steps) against the real sshd and
the fake Pis of plugins/deploy.py: a good push, a model that does not match its card, a model the service
refuses, --check, a new host key under an accept-new ssh config, a status that cannot be read yet, a Pi whose
models folder another push holds (issue #13, item 9), and the gate: a model without a passing gate is refused
unless forced, and a forced push says so and is recorded on the Pi as mask-deploy records it (issue #15); and the
Pi's copy of the checkout, which mirrors this one: a module deleted here is deleted there, and a path that turns
from a file into a folder here, or from a folder into a file, does so there."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.data import REPO, SHIPPED
from support.deploy import deploy, models_of, sha_of, ungated, unloadable

from deploy import ssh

SHIPPED_SHA = sha_of(SHIPPED)
PLAYBOOK = REPO / "deploy/ansible/site.yml"


def playbook(sshd, tmp_path: Path, hosts: list[str], model: Path, *args: str) -> subprocess.CompletedProcess:
    """ansible-playbook --tags push for `hosts`, reached through the test ssh_config (their names are its Host
    entries), each with its fake Pi's models folder."""
    return ansible_playbook(sshd, tmp_path, hosts, "--tags", "push", "-e", f"model={model}", *args)


def ansible_playbook(sshd, tmp_path: Path, hosts: list[str], *args: str) -> subprocess.CompletedProcess:
    """ansible-playbook with `args` for `hosts`, as playbook() describes."""
    d, states = sshd
    inventory = {"mask_appliances": {
        "hosts": {h: {"ansible_host": h, "models_dir": str(states[h] / "models")} for h in hosts},
        "vars": {"ansible_become": False, "ansible_python_interpreter": "/usr/bin/python3",
                 "ansible_ssh_common_args": f"-F {d / 'ssh_config'}", "ansible_ssh_transfer_method": "piped",
                 "service_user": getpass.getuser(), "confirm_timeout": 15}}}
    (tmp_path / "inventory.yml").write_text(json.dumps(inventory))
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")  # none of the machine's own
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "1",
           "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_SSH_ARGS": "-o ControlMaster=no"}
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
               str(PLAYBOOK), *args]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300)


def no_leftovers(state: Path) -> None:
    assert not list((state / "models").glob(".incoming*")) and not list((state / "models").glob(".pending*"))


def test_a_fleet_push_lands_on_every_pi_and_keeps_the_previous(sshd, pis, variants, tmp_path):
    a, b = pis("pi-a", "pi-b")
    run = playbook(sshd, tmp_path, ["pi-a", "pi-b"], variants(5))
    assert run.returncode == 0, run.stdout
    for pi in (a, b):
        assert pi.sha256 == sha_of(variants(5))
        assert models_of(pi.state) == {"mask_classifier.tflite": sha_of(variants(5)),
                                       "mask_classifier.previous.tflite": SHIPPED_SHA}
        # a gated model's card arrives as it is: no forced-push mark
        assert (pi.state / "models/mask_classifier.json").read_bytes() == variants(5).with_suffix(".json").read_bytes()
        no_leftovers(pi.state)
    assert "FORCED" not in run.stdout


def _live_v1_previous_shipped(sshd, pi, variants) -> None:
    assert deploy(sshd, "push", "pi-a", "--model", str(variants(1))) == 0
    assert models_of(pi.state) == {"mask_classifier.tflite": sha_of(variants(1)),
                                   "mask_classifier.previous.tflite": SHIPPED_SHA}


def test_a_model_that_does_not_match_its_card_leaves_a_healthy_pi_as_it_was(sshd, pis, variants, tmp_path):
    (pi,) = pis("pi-a")
    _live_v1_previous_shipped(sshd, pi, variants)
    mismatched = tmp_path / "mismatched" / "mask_classifier.tflite"
    mismatched.parent.mkdir()
    shutil.copy(variants(2), mismatched)
    shutil.copy(variants(1).with_suffix(".json"), mismatched.with_suffix(".json"))  # the card of another model
    run = playbook(sshd, tmp_path, ["pi-a"], mismatched)
    # nothing was swapped, so nothing was "rolled back": the live model is still v1, the previous still shipped
    assert models_of(pi.state) == {"mask_classifier.tflite": sha_of(variants(1)),
                                   "mask_classifier.previous.tflite": SHIPPED_SHA}
    assert pi.sha256 == sha_of(variants(1))
    no_leftovers(pi.state)
    assert run.returncode == 2, run.stdout
    assert "was not pushed to pi-a" in run.stdout


def test_a_model_the_service_refuses_is_put_back_and_the_rollback_target_kept(sshd, pis, variants, tmp_path):
    (pi,) = pis("pi-a")
    _live_v1_previous_shipped(sshd, pi, variants)
    run = playbook(sshd, tmp_path, ["pi-a"], unloadable(tmp_path), "-e", "confirm_timeout=3", "-e", "force=true")
    assert models_of(pi.state) == {"mask_classifier.tflite": sha_of(variants(1)),
                                   "mask_classifier.previous.tflite": SHIPPED_SHA}
    assert pi.sha256 == sha_of(variants(1))
    no_leftovers(pi.state)
    assert run.returncode == 2, run.stdout
    assert "rolled back to the previous model" in run.stdout


def test_check_mode_succeeds_and_changes_nothing(sshd, pis, variants, tmp_path):
    (pi,) = pis("pi-a")
    run = playbook(sshd, tmp_path, ["pi-a"], variants(5), "--check")
    assert run.returncode == 0, run.stdout
    assert "changed=1" in run.stdout  # it says that the upload would change the Pi
    assert models_of(pi.state) == {"mask_classifier.tflite": SHIPPED_SHA}
    assert pi.sha256 == SHIPPED_SHA
    no_leftovers(pi.state)


def test_a_new_host_key_is_refused_even_under_an_accept_new_ssh_config(sshd, pis, variants, tmp_path):
    (pi,) = pis("pi-newkey")
    run = playbook(sshd, tmp_path, ["pi-newkey"], variants(5))
    assert run.returncode == 4, run.stdout  # unreachable
    assert "Host key verification failed" in run.stdout
    assert (sshd[0] / "newkey_known_hosts").read_text() == ""  # the key was not learnt either
    assert models_of(pi.state) == {"mask_classifier.tflite": SHIPPED_SHA}
    no_leftovers(pi.state)


def test_the_wait_rides_out_a_status_that_cannot_be_read_yet(sshd, pis, variants, tmp_path):
    # The service is (re)starting: no status.json for the first seconds of the wait.
    state = sshd[1]["pi-b"]
    shutil.rmtree(state, ignore_errors=True)
    (state / "models").mkdir(parents=True)
    for suffix in (".tflite", ".json"):
        shutil.copy(SHIPPED.with_suffix(suffix), state / "models" / f"mask_classifier{suffix}")
    result: list[subprocess.CompletedProcess] = []
    model = variants(6)  # made once, here: the push thread and this loop both need it
    push = threading.Thread(target=lambda: result.append(playbook(sshd, tmp_path, ["pi-b"], model)))
    push.start()
    deadline = time.monotonic() + 120
    while sha_of(state / "models" / "mask_classifier.tflite") != sha_of(model):
        assert time.monotonic() < deadline and push.is_alive(), result and result[0].stdout
        time.sleep(0.2)
    time.sleep(2)  # the playbook polls a missing status.json meanwhile
    (pi,) = pis("pi-b", fresh=False)  # the service comes up on the new model
    push.join(120)
    assert result[0].returncode == 0, result[0].stdout
    assert pi.sha256 == sha_of(model)
    assert models_of(state)["mask_classifier.previous.tflite"] == SHIPPED_SHA


def test_the_playbook_waits_for_a_push_that_holds_the_models_folder(sshd, pis, variants, tmp_path):
    (pi,) = pis("pi-a")
    with ssh.Host("pi-a", sshd[0] / "ssh_config", ssh.Timeouts(lock=5)).locked():
        run = playbook(sshd, tmp_path, ["pi-a"], variants(5), "-e", "lock_wait=1")
    assert run.returncode == 2, run.stdout
    assert "still holds" in run.stdout and "nothing was changed" in run.stdout
    assert models_of(pi.state) == {"mask_classifier.tflite": SHIPPED_SHA}
    no_leftovers(pi.state)


def test_a_model_without_a_passing_gate_is_refused_before_anything_changes(sshd, pis, variants, tmp_path):
    (pi,) = pis("pi-a")
    idle = sshd[1]["pi-b"]  # a second Pi in the inventory, with no service: nothing may reach it either
    idle_before = sorted(map(str, idle.rglob("*")))
    cases = [(None, "its card has no gate"),
             ({"passed": False, "reason": "FNR on scenes-ilc 0.031 worse than 0.018"},
              "its gate did not pass (FNR on scenes-ilc 0.031 worse than 0.018)"),
             ({"passed": "true"}, "its gate did not pass (no reason given)")]  # only a JSON true passes
    for n, (gate, why) in enumerate(cases, start=21):
        model = ungated(variants, n, gate)
        run = playbook(sshd, tmp_path, ["pi-a", "pi-b"], model, "-e", "batch=2")  # both Pis in one batch
        assert run.returncode == 2, run.stdout
        assert f"fatal: [pi-a]: FAILED! => {{\"changed\": false, \"msg\": \"{model.with_suffix('.json')}: {why}; " \
               "nothing pushed" in run.stdout
        assert run.stdout.count("fatal:") == 1, run.stdout  # said once for the fleet, not once per Pi
        assert models_of(pi.state) == {"mask_classifier.tflite": SHIPPED_SHA}
        assert pi.sha256 == SHIPPED_SHA
        no_leftovers(pi.state)
        assert sorted(map(str, idle.rglob("*"))) == idle_before


def _model_events(state: Path) -> list[dict]:
    with sqlite3.connect(f"file:{state / 'events.db'}?mode=ro", uri=True) as db:
        return [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'model' ORDER BY id")]


def test_a_forced_push_says_so_and_the_pi_records_it_as_mask_deploy_does(sshd, pis, variants, tmp_path):
    (pi,) = pis("pi-a")
    model = ungated(variants, 24)
    local_card = model.with_suffix(".json").read_bytes()
    before = time.time()
    run = playbook(sshd, tmp_path, ["pi-a"], model, "-e", "force=true")
    assert run.returncode == 0, run.stdout
    assert f"FORCED: {model} is pushed although its card has no gate" in run.stdout
    assert pi.sha256 == sha_of(model)
    assert models_of(pi.state) == {"mask_classifier.tflite": sha_of(model),
                                   "mask_classifier.previous.tflite": SHIPPED_SHA}
    card = json.loads((pi.state / "models" / "mask_classifier.json").read_text())
    push = card.pop("push")
    # the keys and values mask-deploy push --force writes (deploy/push.py forced_card), and which tool pushed
    assert push.pop("time") == pytest.approx((before + time.time()) / 2, abs=(time.time() - before) / 2)
    assert push == {"forced": True, "reason": "its card has no gate",
                    "by": f"{getpass.getuser()}@{socket.gethostname()}", "via": "ansible-playbook"}
    assert card == json.loads(local_card)  # the rest of the card, its sha256 among it, is the model's own
    assert model.with_suffix(".json").read_bytes() == local_card  # the laptop's card is left as it was
    deadline = time.monotonic() + 10  # the service's writer thread stores the swap event
    while not [e for e in _model_events(pi.state) if e.get("what") == "model swapped"]:
        assert time.monotonic() < deadline, _model_events(pi.state)
        time.sleep(0.2)
    swapped = [e for e in _model_events(pi.state) if e.get("what") == "model swapped"]
    assert [e["sha256"] for e in swapped] == [sha_of(model)]
    assert swapped[0]["forced_push"]["reason"] == "its card has no gate"
    assert swapped[0]["forced_push"]["via"] == "ansible-playbook"
    no_leftovers(pi.state)


def _tree(root: Path) -> dict[str, str]:
    """Every path under root, relative, with "link" for a symbolic link, "dir" or the file's text."""
    return {str(p.relative_to(root)): "link" if p.is_symlink() else "dir" if p.is_dir() else p.read_text()
            for p in sorted(root.rglob("*"))}


# A small checkout with the parts the playbook copies; appliance/models links to models/, as here.
CHECKOUT = {"appliance/__init__.py": "", "appliance/door.py": "door", "appliance/old.py": "old",
            "appliance/legacy/__init__.py": "", "appliance/legacy/gate.py": "gate", "models/card.json": "{}",
            "training/__init__.py": "", "deploy/install.sh": "#!/bin/sh\n", "deploy/hooks": "hook",
            "systemd/x.service": "[Unit]\n", "pyproject.toml": "[project]\n", "README.md": "# x\n",
            "docs/index.md": "# manual\n"}


def _checkout(here: Path) -> None:
    for name, text in CHECKOUT.items():
        (here / name).parent.mkdir(parents=True, exist_ok=True)
        (here / name).write_text(text)
    (here / "appliance/models").symlink_to("../models")


def _syncer(sshd, tmp_path: Path, here: Path, pi: Path):
    """A function that runs the playbook's checkout tasks from `here` to `pi` on pi-a, with extra `args`, and
    checks that the run succeeded without a warning."""
    def sync(*args: str) -> subprocess.CompletedProcess:
        run = ansible_playbook(sshd, tmp_path, ["pi-a"], "--tags", "checkout", "-e", f"repo={here}",
                               "-e", f"checkout={pi}", *args)
        assert run.returncode == 0, run.stdout
        assert "WARNING" not in run.stdout, run.stdout
        return run
    return sync


def test_the_pis_copy_of_the_checkout_mirrors_it_and_a_deleted_module_goes(sshd, tmp_path):
    here, pi = tmp_path / "checkout", tmp_path / "pi-checkout"  # the Pi's not there yet: never installed
    _checkout(here)
    sync = _syncer(sshd, tmp_path, here, pi)

    expected = {**CHECKOUT, "appliance/models/card.json": "{}"}
    assert "changed=1" in sync().stdout  # the first copy
    assert {k: v for k, v in _tree(pi).items() if v != "dir"} == expected  # the link arrives as what it points to
    (pi / "build").mkdir()  # something on the Pi that is none of the copied parts: left alone
    (pi / "build/keep.txt").write_text("not a part the playbook copies")
    expected["build/keep.txt"] = "not a part the playbook copies"

    (here / "appliance/old.py").unlink()  # a module deleted, and a package renamed
    (here / "appliance/legacy").rename(here / "appliance/gates")
    before = _tree(pi)
    checked = sync("--check")
    assert "changed=2" in checked.stdout  # the removal would change the Pi, and the copy
    assert _tree(pi) == before  # but --check changes nothing

    assert "changed=2" in sync().stdout
    del expected["appliance/old.py"]
    expected["appliance/gates/__init__.py"] = expected.pop("appliance/legacy/__init__.py")
    expected["appliance/gates/gate.py"] = expected.pop("appliance/legacy/gate.py")
    tree = _tree(pi)
    assert {k: v for k, v in tree.items() if v != "dir"} == expected
    assert "appliance/legacy" not in tree  # the folder too, not just its files
    assert "changed=0" in sync().stdout  # a third run has nothing to do


def test_a_path_that_changes_type_between_runs_changes_type_on_the_pi(sshd, tmp_path):
    here, pi = tmp_path / "checkout", tmp_path / "pi-checkout"
    _checkout(here)
    sync = _syncer(sshd, tmp_path, here, pi)
    assert "changed=1" in sync().stdout
    assert (pi / "deploy/hooks").is_file() and (pi / "appliance/legacy").is_dir()

    # A file becomes a folder, and a folder (a package, with its files) becomes a file, at the same paths.
    (here / "deploy/hooks").unlink()
    (here / "deploy/hooks").mkdir()
    (here / "deploy/hooks/pre.sh").write_text("pre")
    shutil.rmtree(here / "appliance/legacy")
    (here / "appliance/legacy").write_text("legacy")
    before = _tree(pi)
    checked = sync("--check")
    assert "changed=2" in checked.stdout  # the removal would change the Pi, and the copy
    assert _tree(pi) == before  # but --check changes nothing
    assert "ERROR" not in checked.stdout, checked.stdout  # nor tries to copy a folder into a file
    for part in ("appliance", "deploy"):  # the parts whose copy it cannot preview, said
        assert f"{part}: a path in it is a folder here and not on the Pi" in checked.stdout

    assert "changed=2" in sync().stdout
    tree = _tree(pi)
    # the Pi's tree is the checkout's, the link to a folder arriving as the folder
    assert tree == {k: "dir" if v == "link" else v for k, v in _tree(here).items()} | {
        "appliance/models/card.json": "{}"}
    assert tree["deploy/hooks"] == "dir" and tree["deploy/hooks/pre.sh"] == "pre"
    assert tree["appliance/legacy"] == "legacy" and "appliance/legacy/gate.py" not in tree
    assert "changed=0" in sync().stdout  # a rerun has nothing to do, the link to a folder included
