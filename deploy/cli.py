"""`mask-deploy`: push a model to one or many Pis over SSH, verified and swapped atomically, with rollback.

For each host: upload the model and its card under temporary names, check the model's sha256 on the Pi against the
card, keep the current model as previous and rename the new one into place, wait until the running service reports
the new sha256 in its status, and if it does not, put the previous model back and say so. Hosts run in parallel;
one failed host does not stop the others; the exit code is 0 only if every host succeeded.

SSH is the user's own OpenSSH client with their ~/.ssh/config, key authentication only (BatchMode) and strict
host-key checking, which the command line forces on whatever a config file says.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance import MODELS_DIR
from appliance.card import CardError, card_path_for, load_card
from deploy import remote

SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]


class DeployError(RuntimeError):
    """One step on one host failed; the message says which and why."""


@dataclass
class Result:
    host: str
    ok: bool
    detail: str
    sha256: str = ""


class Host:
    def __init__(self, name: str, ssh_config: Path | None = None, timeout: float = 60.0):
        self.name = name
        self.base = ["ssh", *SSH_OPTIONS, *(["-F", str(ssh_config)] if ssh_config else []), name]
        self.timeout = timeout

    def run(self, script: str, *, stdin: bytes | None = None, what: str) -> str:
        try:
            proc = subprocess.run([*self.base, script], input=stdin, capture_output=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"{what}: no answer in {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace")
            err = stderr.strip().splitlines()
            reason = err[-1] if err else f"exit {proc.returncode}"
            if "Host key verification failed" in stderr:
                reason = "host key unknown or changed (add it to known_hosts after checking it; never skipped)"
            raise DeployError(f"{what}: {reason}")
        return proc.stdout.decode(errors="replace")

    def status(self) -> dict:
        try:
            return json.loads(self.run(remote.STATUS, what="read status"))
        except json.JSONDecodeError:
            raise DeployError("read status: status.json is not JSON") from None

    def wait_for(self, sha256: str, timeout: float) -> dict:
        """Poll the service's status until it runs `sha256`; DeployError if it does not within `timeout`."""
        deadline = time.monotonic() + timeout
        status: dict = {}
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except DeployError:
                status = {}
            if status.get("model_sha256") == sha256 and status.get("running", False):
                return status
            time.sleep(0.5)
        running = status.get("model_sha256", "unknown")[:12]
        raise DeployError(f"service did not report model {sha256[:12]} within {timeout:.0f} s (runs {running})")


def push_one(host: Host, model_bytes: bytes, card_bytes: bytes, sha256: str, confirm_timeout: float) -> Result:
    token = secrets.token_hex(4)
    tmp_model, tmp_card = f".incoming-{token}.tflite", f".incoming-{token}.json"
    try:
        host.run(remote.upload(tmp_card), stdin=card_bytes, what="upload card")
        host.run(remote.upload(tmp_model), stdin=model_bytes, what="upload model")
        sums = dict(reversed(line.split(maxsplit=1)) for line in
                    host.run(remote.sha256(tmp_model, tmp_card), what="checksum").splitlines())
        got_model = next(v for k, v in sums.items() if k.endswith(tmp_model))
        got_card = next(v for k, v in sums.items() if k.endswith(tmp_card))
        if got_model != sha256 or got_card != hashlib.sha256(card_bytes).hexdigest():
            raise DeployError(f"transfer corrupted: sha256 on the Pi is {got_model[:12]}, the card says "
                              f"{sha256[:12]}; nothing was changed")
        host.run(remote.swap(tmp_model, tmp_card), what="swap")
    except DeployError as exc:
        _cleanup(host, tmp_model, tmp_card)
        return Result(host.name, False, str(exc))
    try:
        host.wait_for(sha256, confirm_timeout)
        return Result(host.name, True, "running the new model", sha256)
    except DeployError as exc:
        rolled = rollback_one(host, confirm_timeout)
        verdict = "rolled back to the previous model" if rolled.ok else f"ROLLBACK FAILED: {rolled.detail}"
        return Result(host.name, False, f"{exc}; {verdict}", rolled.sha256)


def _cleanup(host: Host, *names: str) -> None:
    # Where the host is unreachable, the temporary files stay; the service never looks at them.
    with contextlib.suppress(DeployError):
        host.run(remote.remove(*names), what="clean up")


def rollback_one(host: Host, confirm_timeout: float) -> Result:
    try:
        host.run(remote.rollback(), what="rollback")
        previous = json.loads(host.run(remote.CARD_IN_USE, what="read card"))["sha256"]
        host.wait_for(previous, confirm_timeout)
        return Result(host.name, True, "running the previous model", previous)
    except (DeployError, json.JSONDecodeError, KeyError) as exc:
        return Result(host.name, False, str(exc))


def status_one(host: Host) -> Result:
    try:
        s = host.status()
        decisions = json.loads(host.run(remote.LAST_DECISIONS, what="read events") or "[]")
    except (DeployError, json.JSONDecodeError) as exc:
        return Result(host.name, False, str(exc))
    last = ", ".join(f"{time.strftime('%H:%M:%S', time.localtime(t))} {state}" for t, state, _ in decisions)
    detail = (f"{'running' if s.get('running') else 'stopped'}, up {s.get('uptime', 0):.0f} s, {s.get('fps', 0)} fps, "
              f"door {s.get('door')}, last: {last or 'none'}")
    return Result(host.name, bool(s.get("running")), detail, s.get("model_sha256", ""))


def _table(results: list[Result]) -> str:
    width = max(len(r.host) for r in results)
    lines = [f"{'host':<{width}}  {'result':<6}  {'model':<12}  detail"]
    lines += [f"{r.host:<{width}}  {'ok' if r.ok else 'FAILED':<6}  {r.sha256[:12]:<12}  {r.detail}" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mask-deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ssh-config", type=Path, help="an ssh_config file instead of ~/.ssh/config")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the service to report a new model (default 30)")
    parser.add_argument("--parallel", type=int, default=8, help="hosts at once (default 8)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="push a model and its card")
    p.add_argument("hosts", nargs="+")
    p.add_argument("--model", type=Path, default=MODELS_DIR / "mask_classifier.tflite")
    sub.add_parser("rollback", help="put the previous model back").add_argument("hosts", nargs="+")
    sub.add_parser("status", help="model in use, uptime, last decisions").add_argument("hosts", nargs="+")
    args = parser.parse_args(argv)

    hosts = [Host(name, args.ssh_config) for name in args.hosts]
    if args.command == "push":
        try:
            card = load_card(card_path_for(args.model))
            data = args.model.read_bytes()
        except (CardError, OSError) as exc:
            print(f"mask-deploy: {exc}", file=sys.stderr)
            return 2
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != card.sha256:
            print(f"mask-deploy: {args.model}: sha256 {sha256[:12]} does not match its card ({card.sha256[:12]}); "
                  "nothing pushed", file=sys.stderr)
            return 2
        card_bytes = card_path_for(args.model).read_bytes()
        job = lambda h: push_one(h, data, card_bytes, sha256, args.timeout)  # noqa: E731
    elif args.command == "rollback":
        job = lambda h: rollback_one(h, args.timeout)  # noqa: E731
    else:
        job = status_one
    with ThreadPoolExecutor(max_workers=max(1, min(args.parallel, len(hosts)))) as pool:
        results = list(pool.map(job, hosts))
    print(_table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
