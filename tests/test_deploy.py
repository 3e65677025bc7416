"""mask-deploy against a real OpenSSH server on 127.0.0.1, pushing to fake Pi folders with a real service running
(the sshd, pis, variants and deploy_user fixtures: plugins/deploy.py)."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.data import SHIPPED
from support.deploy import (
    DEPLOY_NAME,
    deploy,
    group_of,
    lock_test_user,
    remove_stale_test_users,
    remove_test_user,
    sha_of,
)

from deploy import cli
from deploy.cli import main


def test_push_to_two_hosts_in_parallel_lands_and_is_reported(sshd, pis, variants, capsys):
    a, b = pis("pi-a", "pi-b")
    old, new = a.sha256, sha_of(variants(1))
    assert deploy(sshd, "push", "pi-a", "pi-b", "--model", str(variants(1))) == 0
    assert a.sha256 == new and b.sha256 == new
    table = capsys.readouterr().out
    assert table.count("ok") >= 2 and new[:12] in table
    for pi in (a, b):
        models = pi.state / "models"
        assert (models / "mask_classifier.previous.tflite").read_bytes() == SHIPPED.read_bytes()
        assert not list(models.glob(".incoming*"))
    assert deploy(sshd, "status", "pi-a") == 0
    assert "running" in capsys.readouterr().out
    # and back again
    assert deploy(sshd, "rollback", "pi-a") == 0
    assert a.sha256 == old and "running the previous model" in capsys.readouterr().out


def test_a_deploy_user_who_does_not_own_the_live_model_pushes_and_rolls_back(sshd, pis, deploy_user, variants,
                                                                             capsys):
    if deploy_user is None:
        pytest.skip("needs root, to make a second user and let sshd log in as it")
    (pi,) = pis("pi-deployer")
    models = pi.state / "models"
    old, new = pi.sha256, sha_of(variants(1))
    assert (models / "mask_classifier.tflite").stat().st_uid == 0
    assert deploy(sshd, "push", "pi-deployer", "--model", str(variants(1))) == 0, \
        capsys.readouterr().out
    assert pi.sha256 == new
    live = (models / "mask_classifier.tflite").stat()  # put there by the deploy user, in the folder's group
    assert pwd.getpwuid(live.st_uid).pw_name == deploy_user.name
    assert grp.getgrgid(live.st_gid).gr_name == deploy_user.group
    assert (models / "mask_classifier.previous.tflite").read_bytes() == SHIPPED.read_bytes()
    assert deploy(sshd, "rollback", "pi-deployer") == 0, capsys.readouterr().out
    assert pi.sha256 == old


# Another test run, as far as the test users go: it holds its user's lock until it ends.
HOLD_LOCK = """import sys, time
from support.deploy import lock_test_user
assert lock_test_user(sys.argv[1]) is not None
print("locked", flush=True)
time.sleep(600)
"""


def test_the_deploy_user_is_this_runs_own_and_only_a_killed_runs_is_removed(deploy_user):
    """Two test runs at once on one machine (two checkouts) each make their own deploy user; a run removes another
    run's leftovers only once that run is dead (its lock gone with its process), never those of one still running."""
    if deploy_user is None:
        pytest.skip("needs root, to make users")
    assert DEPLOY_NAME.fullmatch(deploy_user.name) and deploy_user.group == group_of(deploy_user.name)
    assert len(deploy_user.name) <= 32 and len(deploy_user.group) <= 32  # useradd's and groupadd's limit
    assert deploy_user.name.split("-")[1] == str(os.getpid())
    runs = {}
    try:
        for run in ("running", "killed"):  # each a process that takes its lock and holds it until it ends
            user = f"mdtest-{os.getpid()}-{secrets.token_hex(3)}"
            holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, user], cwd=Path(__file__).parent,
                                      stdout=subprocess.PIPE, text=True)
            runs[run] = (user, holder)
            assert holder.stdout.readline() == "locked\n"
            subprocess.run(["groupadd", "--system", group_of(user)], check=True)
            subprocess.run(["useradd", "--system", "--no-create-home", "--groups", group_of(user), user], check=True)
        killed, holder = runs["killed"]
        holder.send_signal(signal.SIGKILL)  # killed between making its user and removing it
        holder.wait(10)
        assert killed in remove_stale_test_users()
        with pytest.raises(KeyError):
            pwd.getpwnam(killed)
        with pytest.raises(KeyError):
            grp.getgrnam(group_of(killed))
        running = runs["running"][0]
        assert pwd.getpwnam(running).pw_name == running and grp.getgrnam(group_of(running))  # left alone
        assert pwd.getpwnam(deploy_user.name) and grp.getgrnam(deploy_user.group)  # and so is our own
        assert lock_test_user(running) is None
    finally:
        for user, holder in runs.values():
            holder.kill()
            holder.wait(10)
            if (lock := lock_test_user(user)) is not None:
                remove_test_user(user, lock)


def test_a_corrupted_transfer_is_refused_and_the_live_model_untouched(sshd, pis, variants, capsys):
    (pi,) = pis("pi-corrupt")
    before = (pi.state / "models" / "mask_classifier.tflite").read_bytes()
    assert deploy(sshd, "push", "pi-corrupt", "--model", str(variants(1))) == 1
    assert "transfer corrupted" in capsys.readouterr().out
    assert (pi.state / "models" / "mask_classifier.tflite").read_bytes() == before
    assert not list((pi.state / "models").glob(".incoming*"))
    assert pi.sha256 == json.loads(SHIPPED.with_suffix(".json").read_text())["sha256"]


def test_an_unknown_host_key_is_refused(sshd, pis, capsys):
    (pi,) = pis("pi-stranger")
    assert deploy(sshd, "push", "pi-stranger") == 1
    assert "host key unknown or changed" in capsys.readouterr().out
    assert not list((pi.state / "models").glob(".incoming*"))


def test_one_failed_host_does_not_stop_the_others(sshd, pis, variants, capsys):
    (a,) = pis("pi-a")
    new = sha_of(variants(1))
    assert deploy(sshd, "push", "pi-stranger", "pi-a", "--model", str(variants(1))) == 1
    table = capsys.readouterr().out.splitlines()
    assert any(line.startswith("pi-stranger") and "FAILED" in line for line in table)
    assert any(line.startswith("pi-a") and " ok " in line for line in table)
    assert a.sha256 == new


def test_a_model_the_service_refuses_is_rolled_back(sshd, pis, tmp_path, capsys):
    (pi,) = pis("pi-a")
    old = pi.sha256
    # A model whose card is consistent but which the service cannot load: it refuses it, mask-deploy rolls back.
    bad = tmp_path / "mask_classifier.tflite"
    bad.write_bytes(b"not a model, but its card matches")
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    card["sha256"] = hashlib.sha256(bad.read_bytes()).hexdigest()
    bad.with_suffix(".json").write_text(json.dumps(card))
    assert main(["--ssh-config", str(sshd[0] / "ssh_config"), "--timeout", "3", "push", "--force", "pi-a",
                 "--model", str(bad)]) == 1
    assert "rolled back to the previous model" in capsys.readouterr().out
    assert pi.sha256 == old
    assert (pi.state / "models" / "mask_classifier.tflite").read_bytes() == SHIPPED.read_bytes()


def test_a_model_that_does_not_match_its_card_is_not_pushed(tmp_path, capsys):
    model = tmp_path / "mask_classifier.tflite"
    model.write_bytes(SHIPPED.read_bytes() + b"x")
    shutil.copy(SHIPPED.with_suffix(".json"), tmp_path / "mask_classifier.json")
    assert main(["push", "--force", "nowhere", "--model", str(model)]) == 2
    assert "does not match its card" in capsys.readouterr().err


# -- one command family (issue #14, item 4): options after the sub-command, exit codes ------------------------------

def test_the_common_options_may_follow_the_sub_command_and_a_later_one_wins():
    parse = cli.parser().parse
    before = parse(["--ssh-config", "a.conf", "--timeout", "5", "push", "pi-a"])
    after = parse(["push", "--ssh-config", "a.conf", "--timeout", "5", "pi-a"])
    assert (before.ssh_config, before.timeout) == (after.ssh_config, after.timeout) == (Path("a.conf"), 5.0)
    assert parse(["status", "pi-a", "--parallel", "2", "-v"]).parallel == 2
    both = parse(["--timeout", "5", "rollback", "--timeout", "7", "pi-a"])
    assert both.timeout == 7.0 and both.upload_timeout == 300.0 and both.lock_wait == 120.0  # defaults kept
    untouched = parse(["--lock-wait", "9", "pull", "pi-a", "--to", "d"])
    assert untouched.lock_wait == 9.0 and untouched.timeout == 30.0 and untouched.verbose is False


def test_bad_arguments_and_unreadable_input_are_exit_2_and_the_help_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["push", "pi-a", "--timeout", "0"])
    assert stop.value.code == 2 and "--timeout 0.0 is not between 0 and 86400 s" in capsys.readouterr().err
    assert main(["push", "--force", "nowhere", "--model", str(tmp_path / "none.tflite")]) == 2
    assert capsys.readouterr().err.startswith(f"mask-deploy: {tmp_path / 'none.json'}: model card not found")
    for argv in (["--help"], ["push", "--help"], ["status", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit codes:" in out and "2    bad input: a bad config, bad arguments, a model that does not" in out
        assert "--ssh-config" in out


def test_a_push_with_its_options_after_the_sub_command_lands(sshd, pis, variants, capsys):
    (pi,) = pis("pi-a")
    new = variants(1)
    argv = ["push", "--ssh-config", str(sshd[0] / "ssh_config"), "--timeout", "15", "--force", "pi-a", "--model",
            str(new)]
    assert main(argv) == 0, capsys.readouterr().out
    assert pi.sha256 == sha_of(new)
    assert main(["status", "pi-a", "--ssh-config", str(sshd[0] / "ssh_config")]) == 0
    assert "running" in capsys.readouterr().out




# -- the fake Pi itself ---------------------------------------------------------------------------------------------

def test_a_fake_pi_whose_service_writes_no_status_fails_the_test_in_time(tmp_path, monkeypatch):
    from support.pi import Pi

    from appliance.service import Service

    monkeypatch.setattr(Service, "run", lambda self, source: 0)  # a service that ends before its first status
    with pytest.raises(AssertionError, match=r"no status\.json, its service ended first"):
        Pi(tmp_path / "ended")
    release = threading.Event()
    monkeypatch.setattr(Service, "run", lambda self, source: release.wait())  # one that hangs before it
    monkeypatch.setattr(Service, "stop", lambda self: release.set())
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"no status\.json, within 0\.5 s of starting its service"):
        Pi(tmp_path / "hung", startup_timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5 and release.is_set()  # gave up in time, and stopped the service
