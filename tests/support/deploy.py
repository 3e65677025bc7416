"""mask-deploy's tests' helpers: the test deploy user and group, model hashes and cards, and mask-deploy run with the
test ssh_config (the sshd, the fake Pis and the model variants are fixtures: plugins/deploy.py)."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

from deploy.cli import main
from support.data import SHIPPED

# As root, the tests also push as a deploy user who is not root and does not own the live model, as on a Pi: that
# user is in the group that owns the models folder (set-gid, group-writable), as deploy/install.sh sets it up.
# The names are this test run's own (this process's): two runs at once on one machine, from two checkouts, must
# never meet, let alone remove each other's user. The pid and a random token make them unique; DEPLOY_NAME tells a
# test user from any other, and its lock whether a live run holds it (remove_stale_test_users). Short: useradd and
# groupadd take 32 characters at most, a lower-case letter first.
DEPLOY_NAME = re.compile(r"mdtest-[0-9]+-[0-9a-f]{6}")


def group_of(user: str) -> str:
    """The models group that goes with a test deploy user."""
    return f"{user}-models"


DEPLOY_USER = f"mdtest-{os.getpid()}-{secrets.token_hex(3)}"  # 21 characters at most (pid_max is 2**22)
DEPLOY_GROUP = group_of(DEPLOY_USER)  # 28 at most
# Where each run's test user has its lock file: one place for every checkout on the machine.
LOCKS = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())


class DeployUser(NamedTuple):
    """The deploy_user fixture's user and the group that owns the fake Pis' models folders."""

    name: str
    group: str


def lock_test_user(user: str) -> int | None:
    """Take `user`'s lock (an flock, which the kernel lets go of when its process ends, however it ends): the open
    file, or None when a live process holds it."""
    fd = os.open(LOCKS / f"{user}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_test_user(user: str, lock: int) -> None:
    """Remove a test user, its group and its lock file, then let go of the lock."""
    subprocess.run(["userdel", user], check=False, capture_output=True)
    subprocess.run(["groupdel", group_of(user)], check=False, capture_output=True)
    (LOCKS / f"{user}.lock").unlink(missing_ok=True)
    os.close(lock)


def remove_stale_test_users() -> list[str]:
    """Remove the test users and groups of killed runs, and say which: those named by the test scheme whose lock
    no live process holds (a live run takes its lock before it makes its names). Another run's are left alone."""
    names = {u.pw_name for u in pwd.getpwall()} | {g.gr_name.removesuffix("-models") for g in grp.getgrall()}
    removed = []
    for user in sorted(n for n in names if DEPLOY_NAME.fullmatch(n)):
        lock = lock_test_user(user)
        if lock is not None:
            remove_test_user(user, lock)
            removed.append(user)
    return removed


PASSING_GATE = {"passed": True, "reason": "a test card: the shipped model with padding"}


def sha_of(model: Path) -> str:
    return hashlib.sha256(model.read_bytes()).hexdigest()


def deploy(sshd: tuple[Path, dict[str, Path]], *args: str) -> int:
    """mask-deploy with the test ssh_config. A push of a model whose card has no passing gate (the shipped model,
    the unloadable ones) gets --force: these tests are about the transport; test_pull.py tests the gate."""
    argv = list(args)
    if "push" in argv and "--force" not in argv:
        model = Path(argv[argv.index("--model") + 1]) if "--model" in argv else SHIPPED
        with contextlib.suppress(OSError, ValueError):
            if json.loads(model.with_suffix(".json").read_text()).get("gate", {}).get("passed") is not True:
                argv.insert(argv.index("push") + 1, "--force")
    return main(["--ssh-config", str(sshd[0] / "ssh_config"), "--timeout", "15", *argv])


def models_of(state: Path) -> dict[str, str]:
    """sha256 of every model file in a Pi's models folder, by name, and a check that each card matches its model."""
    folder = state / "models"
    found = {}
    for model in sorted(folder.glob("*.tflite")) + sorted(folder.glob(".*.tflite")):
        card = json.loads(model.with_suffix(".json").read_text())
        assert card["sha256"] == sha_of(model), f"{model.name}: its card is for another model"
        found[model.name] = sha_of(model)
    return found


def unloadable(tmp_path: Path) -> Path:
    """A model whose card matches it but which the service cannot load: it refuses it."""
    bad = tmp_path / "bad" / "mask_classifier.tflite"
    bad.parent.mkdir()
    bad.write_bytes(b"not a model, but its card matches")
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    card["sha256"] = sha_of(bad)
    bad.with_suffix(".json").write_text(json.dumps(card))
    return bad


def ungated(variants, n: int, gate: dict | None = None) -> Path:
    """variants(n) with its card's gate taken out, or replaced by `gate`."""
    model = variants(n)
    card = json.loads(model.with_suffix(".json").read_text())
    card.pop("gate", None)
    if gate is not None:
        card["gate"] = gate
    model.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return model
