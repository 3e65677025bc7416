"""`mask-deploy push` and `rollback`: a model and its card onto a Pi, verified, swapped under the Pi's lock, confirmed
by the running service, and put back when the service does not take it up.

For each host: upload the pair under temporary names, check the model's sha256 on the Pi against the card, lock the
models folder, rename the new pair into place (keeping the pair it replaces), wait until the running service reports
the new sha256, then keep the replaced pair as the rollback target. A failed push or a re-push of the live model
leaves the rollback target as it was. A model is pushed only when its card holds a gate that passed (`mask-train
gate`); --force pushes one without, says so, and marks the card the Pi gets."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.cliparse import BadInput
from appliance.seeing.card import card_path_for, load_card
from deploy import remote
from deploy.ssh import DeployError, Host, Result, clean
from deploy.status import wait_for

SHA256_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


@dataclass(frozen=True)
class Payload:
    """What goes to every Pi: the model's bytes, its card's bytes (marked when forced) and the model's sha256."""

    model: bytes
    card: bytes
    sha256: str
    forced: str | None = None  # why the push was forced, or None


def gate_problem(card: object) -> str | None:
    """Why a card (parsed JSON) may not be pushed without --force, or None: it needs a gate that passed."""
    gate = card.get("gate") if isinstance(card, dict) else None
    if not isinstance(gate, dict):
        return "its card has no gate"
    if gate.get("passed") is not True:
        return f"its gate did not pass ({clean(gate.get('reason', 'no reason given'))})"
    return None


def forced_card(card_bytes: bytes, why: str) -> bytes:
    """The card as the Pi gets it after --force: a "push" entry saying so (the card records the model's sha256,
    not its own, so it stays valid); the service logs it with the model swap."""
    card = json.loads(card_bytes)
    card["push"] = {"forced": True, "reason": why, "time": round(time.time(), 3),
                    "by": f"{getpass.getuser()}@{socket.gethostname()}"}
    return (json.dumps(card, indent=2) + "\n").encode()


def prepare(model: Path, force: bool) -> Payload:
    """The pair at `model` as pushed, checked before any host is touched. BadInput (CardError, OSError) where the
    card is unreadable, the model does not match it, or it has no passing gate and `force` is off."""
    card_path = card_path_for(model)
    card = load_card(card_path)
    data, card_bytes = model.read_bytes(), card_path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != card.sha256:
        raise BadInput(f"{model}: sha256 {sha256[:12]} does not match its card ({card.sha256[:12]}); nothing pushed")
    why = gate_problem(json.loads(card_bytes))
    if why and not force:
        raise BadInput(f"{card_path}: {why}; nothing pushed (score it against the live model with `mask-train gate "
                       "NEW --baseline OLD`, or push it anyway with --force)")
    return Payload(data, forced_card(card_bytes, why) if why else card_bytes, sha256, why)


def _sums(text: str, names: tuple[str, ...]) -> dict[str, str]:
    """sha256sum's lines for `names`, parsed strictly: any other line is ignored, a missing one is an error."""
    got = {}
    for line in text.splitlines():
        if (m := SHA256_LINE.fullmatch(line)) and (name := m.group(2).rsplit("/", 1)[-1]) in names:
            got[name] = m.group(1)
    for name in names:
        if name not in got:
            raise DeployError(f"checksum: no sha256 for {name} in the Pi's answer")
    return got


def push_one(host: Host, model_bytes: bytes, card_bytes: bytes, sha256: str) -> Result:
    token = secrets.token_hex(4)
    tmp_model, tmp_card = f".incoming-{token}.tflite", f".incoming-{token}.json"
    uploaded = True  # until the swap has taken them, the temporary files are ours to remove
    t = host.timeouts
    try:
        host.run(remote.upload(tmp_card), stdin=card_bytes, what="upload card", timeout=t.upload)
        host.run(remote.upload(tmp_model), stdin=model_bytes, what="upload model", timeout=t.upload)
        sums = _sums(host.run(remote.sha256(tmp_model, tmp_card), what="checksum", marked=True),
                     (tmp_model, tmp_card))
        if sums[tmp_model] != sha256 or sums[tmp_card] != hashlib.sha256(card_bytes).hexdigest():
            raise DeployError(f"transfer corrupted: sha256 on the Pi is {sums[tmp_model][:12]}, the card says "
                              f"{sha256[:12]}; nothing was changed")
        with host.locked() as still_held:
            still_held()
            outcome = host.run(remote.swap(tmp_model, tmp_card), what="swap", marked=True).strip()
            if outcome not in ("swapped", "same"):
                raise DeployError(f"swap: unexpected answer from the Pi: {clean(outcome[:120])}")
            uploaded = False
            try:
                wait_for(host, sha256, t.confirm)
            except DeployError as exc:
                if outcome == "same":
                    return Result(host.name, False, f"{exc}; it was already the live model, nothing changed")
                back = _restore(host, remote.restore(), "restore", t.confirm, still_held)
                verdict = "rolled back to the previous model" if back.ok else f"ROLLBACK FAILED: {back.detail}"
                return Result(host.name, False, f"{exc}; {verdict}", back.sha256)
            if outcome == "same":
                return Result(host.name, True, "already running this model; previous kept", sha256)
            still_held()
            host.run(remote.commit(), what="keep the replaced model as previous")
            return Result(host.name, True, "running the new model", sha256)
    except DeployError as exc:
        return Result(host.name, False, str(exc))
    finally:
        if uploaded:
            _cleanup(host, tmp_model, tmp_card)


def _cleanup(host: Host, *names: str) -> None:
    # Where the host is unreachable, the temporary files stay; the service never looks at them.
    with contextlib.suppress(DeployError):
        host.run(remote.remove(*names), what="clean up")


def _restore(host: Host, script: str, what: str, confirm: float, still_held: Callable[[], None]) -> Result:
    """Under the lock: run `script` (restore or rollback), then wait for the service to run the card now live."""
    try:
        still_held()
        host.run(script, what=what)
        previous = json.loads(host.run(remote.CARD_IN_USE, what="read card", marked=True))["sha256"]
        if not isinstance(previous, str):
            raise DeployError("read card: its sha256 is not a string")
        wait_for(host, previous, confirm)
        return Result(host.name, True, "running the previous model", previous)
    except (DeployError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return Result(host.name, False, clean(exc))


def rollback_one(host: Host) -> Result:
    try:
        with host.locked() as still_held:
            return _restore(host, remote.rollback(), "rollback", host.timeouts.confirm, still_held)
    except DeployError as exc:
        return Result(host.name, False, str(exc))
