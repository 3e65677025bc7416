"""mask-deploy against a real OpenSSH server on 127.0.0.1, pushing to fake Pi folders with a real service running."""

from __future__ import annotations

import contextlib
import getpass
import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import SHIPPED, scene_images

from appliance import config
from appliance.service import Service
from appliance.sources import ImageSource
from deploy import cli
from deploy.cli import main

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# As root, the tests also push as a deploy user who is not root and does not own the live model, as on a Pi: that
# user is in the group that owns the models folder (set-gid, group-writable), as deploy/install.sh sets it up.
DEPLOY_USER, DEPLOY_GROUP = "mask-deploy-test", "mask-deploy-test-models"

# The "Pi" side of every ssh session. It prints a login banner first for a host that asks (LOGIN_BANNER), as a
# login shell's start-up files may; it notes whether the client forwarded its agent (sshd sets SSH_AUTH_SOCK in the
# session only then); and for a host that asks (CORRUPT_UPLOADS), every model upload keeps only its first 1000
# bytes: a corrupted transfer on a real SSH session, without touching mask-deploy.
WRAPPER = """#!/bin/sh
if [ -n "$LOGIN_BANNER" ]; then printf '\\nShop 12 door Pi: authorised use only\\n'; fi
if [ -n "$SSH_AUTH_SOCK" ]; then echo "$SSH_AUTH_SOCK" >> "$MASK_APPLIANCE_STATE.agent-forwarded"; fi
case "$SSH_ORIGINAL_COMMAND" in
  *'.tflite"')
    if [ -n "$CORRUPT_UPLOADS" ]; then
      { head -c 1000; cat > /dev/null; } | sh -c "$SSH_ORIGINAL_COMMAND"
      exit
    fi ;;
esac
exec sh -c "$SSH_ORIGINAL_COMMAND"
"""
HOSTS = ("pi-a", "pi-b", "pi-stranger", "pi-corrupt", "pi-deployer", "pi-banner", "pi-hostile", "pi-proc",
         "pi-files", "pi-newkey")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deploy_user():
    """A real non-root user and its group, made for these tests and removed after them; None unless root."""
    if os.geteuid() != 0:
        yield None
        return
    for leftover in (["userdel", DEPLOY_USER], ["groupdel", DEPLOY_GROUP]):  # from a run that was killed
        subprocess.run(leftover, check=False, capture_output=True)
    subprocess.run(["groupadd", "--system", DEPLOY_GROUP], check=True)
    # Password "*": no password, but not locked ("!"), which sshd without PAM refuses even for key logins.
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", "--password", "*",
                    "--groups", DEPLOY_GROUP, DEPLOY_USER], check=True)
    yield DEPLOY_USER
    subprocess.run(["userdel", DEPLOY_USER], check=False)
    subprocess.run(["groupdel", DEPLOY_GROUP], check=False)


@pytest.fixture(scope="module")
def sshd(deploy_user):
    """An sshd on 127.0.0.1 with a throw-away host key, and an ssh_config naming the 'Pis' it serves. Its folder
    can be read by others (not pytest's private tmp), so that a non-root login reaches its keys and state."""
    if not Path(SSHD).exists():
        pytest.fail("sshd is missing: .ci/run installs openssh-server")
    d = Path(tempfile.mkdtemp(prefix="mask-deploy-sshd-"))
    d.chmod(0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "id"], check=True)
    shutil.copy(d / "id.pub", d / "authorized_keys")
    (d / "wrapper").write_text(WRAPPER)
    (d / "wrapper").chmod(0o755)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"AcceptEnv MASK_APPLIANCE_STATE CORRUPT_UPLOADS LOGIN_BANNER\nForceCommand {d / 'wrapper'}\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    log = open(d / "sshd.log", "w")  # noqa: SIM115 (open for the server's lifetime)
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", d / "sshd_config"], stderr=log)
    key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {key[0]} {key[1]}\n")
    (d / "empty_known_hosts").write_text("")
    (d / "newkey_known_hosts").write_text("")
    hosts = {name: d / name for name in HOSTS}
    entries = []
    for name, state in hosts.items():
        known = d / {"pi-stranger": "empty_known_hosts", "pi-newkey": "newkey_known_hosts"}.get(name, "known_hosts")
        extra = {"pi-corrupt": " CORRUPT_UPLOADS=1", "pi-banner": " LOGIN_BANNER=1"}.get(name, "")  # one SetEnv
        user = deploy_user if name == "pi-deployer" and deploy_user else getpass.getuser()
        # An operator's config that forwards everything it can: mask-deploy must forward nothing.
        hostile = ("  ForwardAgent yes\n  ForwardX11 yes\n  ForwardX11Trusted yes\n"
                   f"  LocalForward 127.0.0.1:{_free_port()} 127.0.0.1:{port}\n"
                   if name == "pi-hostile" else "")
        if name == "pi-newkey":  # an operator's config that trusts a host key it has never seen
            hostile = "  StrictHostKeyChecking accept-new\n"
        entries.append(
            f"Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {d / 'id'}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  SetEnv MASK_APPLIANCE_STATE={state}{extra}\n"
            f"{hostile}"
        )
    (d / "ssh_config").write_text("\n".join(entries))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield d, hosts
    server.terminate()
    server.wait(10)
    log.close()
    shutil.rmtree(d)


class PacedImageSource(ImageSource):
    """An ImageSource at a real 5 frames a second (ImageSource reads as fast as it can): the tests' services leave
    the CPU to the rest. Decisions run on the source's simulated clock, so they are the same."""

    def frames(self):
        for frame in super().frames():
            yield frame
            time.sleep(0.2)


class Pi:
    """A fake Pi's state folder with the real service running on it (models/, events.db, status.json)."""

    def __init__(self, state: Path, group: str | None = None, fresh: bool = True):
        """fresh: put the shipped model live first; else the service starts on the models already there."""
        self.state = state
        (state / "models").mkdir(parents=True, exist_ok=True)
        for suffix in (".tflite", ".json") if fresh else ():
            shutil.copy(SHIPPED.with_suffix(suffix), state / "models" / f"mask_classifier{suffix}")
        if group:  # as deploy/install.sh leaves it: the live model is the service's, the folder the group's
            shutil.chown(state / "models", group=group)
            (state / "models").chmod(0o2775)
        cfg = config.parse({"classifier": {"model": str(state / "models" / "mask_classifier.tflite")},
                            "events": {"database": str(state / "events.db")}, "service": {"model_poll": 0.2},
                            "gpio": {"relay_pin": None, "buzzer_pin": None, "green_pin": None, "red_pin": None}})
        self.service = Service(cfg)
        source = PacedImageSource(scene_images("without_mask", limit=1), still_frames=10**6)
        self.thread = threading.Thread(target=self.service.run, args=(source,))
        self.thread.start()
        while not (state / "status.json").exists():
            time.sleep(0.05)

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(30)

    @property
    def sha256(self) -> str:
        return json.loads((self.state / "status.json").read_text())["model_sha256"]


@pytest.fixture
def pis(sshd):
    d, hosts = sshd
    started = []

    def start(*names: str, fresh: bool = True) -> list[Pi]:
        for name in names:
            if hosts[name].exists() and fresh:
                shutil.rmtree(hosts[name])
            started.append(Pi(hosts[name], DEPLOY_GROUP if name == "pi-deployer" else None, fresh))
        return started[-len(names):]

    yield start
    for pi in started:
        pi.stop()


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """variants(n): a model that loads and differs from the shipped one and from every other n, with a card that
    matches: the shipped model with n zero bytes after its flatbuffer (which TFLite does not read). Cheaper than
    training one, and each push of a new n is a real model change for the service."""
    root = tmp_path_factory.mktemp("variants")

    def make(n: int) -> Path:
        model = root / f"v{n}" / "mask_classifier.tflite"
        if not model.exists():
            model.parent.mkdir()
            data = SHIPPED.read_bytes() + bytes(n)
            model.write_bytes(data)
            card = json.loads(SHIPPED.with_suffix(".json").read_text())
            card["sha256"] = hashlib.sha256(data).hexdigest()
            card["gate"] = PASSING_GATE  # pushed without --force, as a model that passed `mask-train gate`
            model.with_suffix(".json").write_text(json.dumps(card, indent=2))
        return model

    return make


def sha_of(model: Path) -> str:
    return hashlib.sha256(model.read_bytes()).hexdigest()


PASSING_GATE = {"passed": True, "reason": "a test card: the shipped model with padding"}


def deploy(sshd, *args: str) -> int:
    """mask-deploy with the test ssh_config. A push of a model whose card has no passing gate (the shipped model,
    the unloadable ones) gets --force: these tests are about the transport; test_pull.py tests the gate."""
    args = list(args)
    if "push" in args and "--force" not in args:
        model = Path(args[args.index("--model") + 1]) if "--model" in args else SHIPPED
        with contextlib.suppress(OSError, ValueError):
            if json.loads(model.with_suffix(".json").read_text()).get("gate", {}).get("passed") is not True:
                args.insert(args.index("push") + 1, "--force")
    return main(["--ssh-config", str(sshd[0] / "ssh_config"), "--timeout", "15", *args])


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
    assert pwd.getpwuid(live.st_uid).pw_name == DEPLOY_USER and grp.getgrgid(live.st_gid).gr_name == DEPLOY_GROUP
    assert (models / "mask_classifier.previous.tflite").read_bytes() == SHIPPED.read_bytes()
    assert deploy(sshd, "rollback", "pi-deployer") == 0, capsys.readouterr().out
    assert pi.sha256 == old


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
