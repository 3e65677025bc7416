"""The fixtures of mask-deploy's tests: a real OpenSSH server on 127.0.0.1 whose ssh_config names the fake Pis it
serves, a real non-root deploy user (as root), fake Pis with the real service running, and cheap model variants.
Registered by tests/conftest.py (pytest_plugins). sshd and deploy_user are per test module, as before."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support.data import SHIPPED
from support.deploy import (
    DEPLOY_GROUP,
    DEPLOY_USER,
    PASSING_GATE,
    DeployUser,
    lock_test_user,
    remove_stale_test_users,
    remove_test_user,
)

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

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
    """This run's own non-root user and its group (DEPLOY_USER, DEPLOY_GROUP), made for these tests and removed
    after them, as a DeployUser; None unless root."""
    if os.geteuid() != 0:
        yield None
        return
    lock = lock_test_user(DEPLOY_USER)  # first: from now on no other run takes our names for a killed run's
    assert lock is not None, f"{DEPLOY_USER}: locked by another process"
    remove_stale_test_users()
    try:
        subprocess.run(["groupadd", "--system", DEPLOY_GROUP], check=True)
        # Password "*": no password, but not locked ("!"), which sshd without PAM refuses even for key logins.
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", "--password", "*",
                        "--groups", DEPLOY_GROUP, DEPLOY_USER], check=True)
        yield DeployUser(DEPLOY_USER, DEPLOY_GROUP)
    finally:
        remove_test_user(DEPLOY_USER, lock)


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
        user = deploy_user.name if name == "pi-deployer" and deploy_user else getpass.getuser()
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


@pytest.fixture
def pis(sshd, deploy_user):
    """pis(*names, fresh=True): start a fake Pi with the real service for each of the test ssh_config's host
    names (fresh: its folder emptied and the shipped model put live); each is stopped after the test."""
    from support.pi import Pi  # here, not above: only the tests that start a Pi load the service

    d, hosts = sshd
    started = []

    def start(*names: str, fresh: bool = True) -> list[Pi]:
        for name in names:
            if hosts[name].exists() and fresh:
                shutil.rmtree(hosts[name])
            group = deploy_user.group if name == "pi-deployer" and deploy_user else None
            started.append(Pi(hosts[name], group, fresh))
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
