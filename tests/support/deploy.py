"""mask-deploy's tests' helpers: the test deploy user and group, model hashes and cards, and mask-deploy run with the
test ssh_config (the sshd, the fake Pis and the model variants are fixtures: plugins/deploy.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from deploy.cli import main
from support.data import SHIPPED

# As root, the tests also push as a deploy user who is not root and does not own the live model, as on a Pi: that
# user is in the group that owns the models folder (set-gid, group-writable), as deploy/install.sh sets it up.
DEPLOY_USER, DEPLOY_GROUP = "mask-deploy-test", "mask-deploy-test-models"
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
