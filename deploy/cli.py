"""`mask-deploy`: push a model to one or many Pis over SSH, verified and swapped atomically, with rollback; pull the
face crops they collected. Argument parsing and the table; the actions are deploy.push (push, rollback),
deploy.pull, deploy.status, over deploy.ssh.

A model is pushed only when its card holds a gate that passed (`mask-train gate`); `--force` pushes one without,
says so, and marks the card the Pi gets ("push": {"forced": true, ...}).

For each host: upload the model and its card under temporary names, check the model's sha256 on the Pi against the
card, lock the models folder, rename the new pair into place (keeping the pair it replaces), wait until the running
service reports the new sha256, then keep the replaced pair as the rollback target; if the service does not take
the new model up, put the replaced pair back and say so. A failed push or a re-push of the live model leaves the
rollback target as it was; two pushes to one Pi take turns. `pull` copies each Pi's collected crops into
DIR/<host>/, checks each copy's sha256 against the one computed on the Pi, and only then deletes it there. Hosts run
in parallel; one failed host does not stop the others; the exit code is 0 only if every host succeeded.

SSH is the user's own OpenSSH client with their ~/.ssh/config, key authentication only (BatchMode), strict
host-key checking and no forwarding of the agent, X11 or ports, which the command line forces on whatever a config
file says. Everything a Pi sends is printed with its control characters escaped.

The options above the sub-commands (--ssh-config, --timeout, ...) may also follow the sub-command:
`mask-deploy push --ssh-config X HOST` is `mask-deploy --ssh-config X push HOST`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from appliance import MODELS_DIR, cliparse
from appliance.cliparse import FAULT, OK
from deploy.pull import pull_one
from deploy.push import prepare, push_one, rollback_one
from deploy.ssh import Host, Result, Timeouts, clean
from deploy.status import status_one

PROG = "mask-deploy"
TIMEOUTS = ("timeout", "upload_timeout", "lock_wait")  # seconds, each between 0 and a day


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """The options every sub-command takes, before or after its name."""
    parser.add_argument("--ssh-config", type=Path, help="an ssh_config file instead of ~/.ssh/config")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the service to report a new model (default 30)")
    parser.add_argument("--upload-timeout", type=float, default=300.0,
                        help="seconds one upload of the model may take (default 300)")
    parser.add_argument("--lock-wait", type=float, default=120.0,
                        help="seconds to wait for another push or rollback on the same Pi (default 120)")
    parser.add_argument("--parallel", type=int, default=8, help="hosts at once (default 8)")


def parser() -> cliparse.Family:
    family = cliparse.Family(PROG, __doc__, shared=add_common_options)
    p = family.command("push", "push a model and its card")
    p.add_argument("hosts", nargs="+")
    p.add_argument("--model", type=Path, default=MODELS_DIR / "mask_classifier.tflite")
    p.add_argument("--force", action="store_true",
                   help="push a model whose card has no passing gate (mask-train gate); said in the output and "
                        "recorded in the card the Pi gets")
    p = family.command("pull", "fetch the face crops a Pi collected into DIR/<host>/, verified, then delete them "
                               "there")
    p.add_argument("hosts", nargs="+")
    p.add_argument("--to", type=Path, required=True, metavar="DIR", help="where the crops go (DIR/<host>/)")
    p.add_argument("--keep", action="store_true", help="leave the crops on the Pi")
    family.command("rollback", "put the previous model back").add_argument("hosts", nargs="+")
    family.command("status", "liveness, model in use, uptime, last decisions").add_argument("hosts", nargs="+")
    return family


def _table(results: list[Result]) -> str:
    width = max(len(clean(r.host)) for r in results)
    lines = [f"{'host':<{width}}  {'result':<6}  {'model':<12}  detail"]
    lines += [f"{clean(r.host):<{width}}  {'ok' if r.ok else 'FAILED':<6}  {clean(r.sha256[:12]):<12}  "
              f"{clean(r.detail)}" for r in results]
    return "\n".join(lines)


def _guarded(job: Callable[[Host], Result], ssh_config: Path | None, timeouts: Timeouts) -> Callable[[str], Result]:
    """`job` for one host name, whatever goes wrong there: a bad name or an unexpected error fails that host only."""
    def one(name: str) -> Result:
        try:
            return job(Host(name, ssh_config, timeouts))
        except ValueError as exc:
            return Result(name, False, f"refused: {exc}")
        except Exception as exc:  # one host's surprise must not abort the others
            return Result(name, False, f"unexpected error: {exc!r}")
    return one


def _job(args: argparse.Namespace) -> Callable[[Host], Result]:
    """What to do on each host; for a push, the pair is checked first (BadInput: nothing is pushed anywhere)."""
    if args.command == "push":
        payload = prepare(args.model, args.force)
        if payload.forced:
            print(f"FORCED: {args.model} is pushed although {payload.forced}; the card on each Pi records the "
                  "forced push")
        return lambda h: push_one(h, payload.model, payload.card, payload.sha256)
    if args.command == "pull":
        return lambda h: pull_one(h, args.to, args.keep)
    return rollback_one if args.command == "rollback" else status_one


def act(args: argparse.Namespace) -> int:
    job = _job(args)
    timeouts = Timeouts(confirm=args.timeout, upload=args.upload_timeout, lock=args.lock_wait)
    with ThreadPoolExecutor(max_workers=max(1, min(args.parallel, len(args.hosts)))) as pool:
        results = list(pool.map(_guarded(job, args.ssh_config, timeouts), args.hosts))
    print(_table(results))
    return OK if all(r.ok for r in results) else FAULT


def _bad_input() -> tuple[type[Exception], ...]:
    from appliance.seeing.card import CardError

    return CardError, OSError  # the model or its card cannot be read: host failures never reach here


def main(argv: list[str] | None = None) -> int:
    family = parser()
    args = family.parse(argv)
    for option in TIMEOUTS:
        if not 0 < getattr(args, option) < 86400:
            family.error(f"--{option.replace('_', '-')} {getattr(args, option)} is not between 0 and 86400 s")
    return cliparse.run(PROG, lambda: act(args), bad_input=_bad_input)


if __name__ == "__main__":
    sys.exit(main())
