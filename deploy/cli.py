"""`mask-deploy`: push a model to one or many Pis over SSH, verified and swapped atomically, with rollback; pull the
face crops they collected.

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
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import os
import queue
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance import MODELS_DIR
from appliance.card import CardError, card_path_for, load_card
from deploy import remote

# Options given on the command line win over every ssh_config file (ssh keeps the first value it obtains).
SSH_OPTIONS = [
    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no", "-o", "ConnectTimeout=10",
    # A Pi must never reach the operator's agent, display or ports, whatever their ssh config says.
    "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ForwardX11Trusted=no", "-o", "ClearAllForwardings=yes",
    "-o", "Tunnel=no", "-o", "GSSAPIDelegateCredentials=no", "-o", "PermitLocalCommand=no",
    # Our command, not one from a config file; no shared master connection opened with other options.
    "-o", "RemoteCommand=none", "-o", "RequestTTY=no", "-o", "ControlMaster=no", "-o", "ControlPath=none",
]
SHA256_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


class DeployError(RuntimeError):
    """One step on one host failed; the message says which and why."""


@dataclass
class Result:
    host: str
    ok: bool
    detail: str
    sha256: str = ""


@dataclass(frozen=True)
class Timeouts:
    confirm: float = 30.0  # for the service to report a model
    step: float = 60.0  # one ssh command
    upload: float = 300.0  # one upload (slow shop links)
    lock: float = 120.0  # for another push or rollback on the same Pi to finish


def clean(text: object) -> str:
    """`text` with control and format characters (escape sequences, carriage returns, bidi overrides) escaped, so
    that nothing a Pi sends can rewrite the operator's terminal or fake a line of the table."""
    return "".join(c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def host_problem(name: str) -> str | None:
    """Why `name` cannot be a host, or None. A leading '-' would reach ssh as an option (-oProxyCommand=...)."""
    if not name:
        return "an empty host name"
    if name.startswith("-"):
        return f"host {clean(name)!r} starts with '-' (ssh would take it as an option)"
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in name):
        return f"host {clean(name)!r} contains spaces or control characters"
    return None


def _after_mark(text: str, what: str) -> str:
    """The output after remote.MARK; what a login shell printed before it (a banner, an rc file) is dropped."""
    head, sep, tail = text.partition(remote.MARK + "\n")
    if not sep:
        raise DeployError(f"{what}: unexpected answer from the Pi: {clean(text.strip()[:120]) or 'nothing'}")
    return tail


class Host:
    def __init__(self, name: str, ssh_config: Path | None = None, timeouts: Timeouts | None = None):
        if problem := host_problem(name):
            raise ValueError(problem)
        self.name = name
        # "--" ends ssh's options: whatever the name, it is a destination.
        self.base = ["ssh", *SSH_OPTIONS, *(["-F", str(ssh_config)] if ssh_config else []), "--", name]
        self.timeouts = timeouts or Timeouts()

    def run(self, script: str, *, stdin: bytes | None = None, what: str, timeout: float | None = None,
            marked: bool = False) -> str:
        out = self.run_bytes(script, stdin=stdin, what=what, timeout=timeout).decode(errors="replace")
        return _after_mark(out, what) if marked else out

    def run_bytes(self, script: str, *, stdin: bytes | None = None, what: str, timeout: float | None = None) -> bytes:
        timeout = self.timeouts.step if timeout is None else timeout
        try:
            proc = subprocess.run([*self.base, script], input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"{what}: no answer in {timeout:.0f} s") from None
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace")
            raise DeployError(f"{what}: {_reason(stderr, proc.returncode)}")
        return proc.stdout

    def run_marked_bytes(self, script: str, *, stdin: bytes | None = None, what: str,
                         timeout: float | None = None) -> bytes:
        """The output's bytes after remote.MARK's line (binary: crops)."""
        out = self.run_bytes(script, stdin=stdin, what=what, timeout=timeout)
        head, sep, tail = out.partition(remote.MARK.encode() + b"\n")
        if not sep:
            raise DeployError(f"{what}: unexpected answer from the Pi: "
                              f"{clean(out.decode(errors='replace').strip()[:120]) or 'nothing'}")
        return tail

    @contextlib.contextmanager
    def locked(self) -> Iterator[Callable[[], None]]:
        """Hold the Pi's lock on its models folder for the duration (an ssh session that holds `flock`). Yields a
        check to call before each change: it raises DeployError if the session, and so the lock, was lost."""
        wait = self.timeouts.lock
        proc = subprocess.Popen([*self.base, remote.lock(wait)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        lines: queue.Queue[bytes | None] = queue.Queue()

        def read() -> None:
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            deadline = time.monotonic() + wait + self.timeouts.step
            seen_mark = False
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise DeployError(f"lock: no answer in {wait + self.timeouts.step:.0f} s") from None
                if line is None:
                    proc.wait(10)
                    if proc.returncode == remote.LOCK_BUSY:
                        raise DeployError(f"lock: another push or rollback still holds the models folder after "
                                          f"{wait:.0f} s; nothing was changed")
                    raise DeployError(f"lock: {_reason(proc.stderr.read().decode(errors='replace'), proc.returncode)}")
                text = line.decode(errors="replace").rstrip("\n")
                if seen_mark and text == remote.LOCKED:
                    break
                seen_mark = seen_mark or text == remote.MARK

            def still_held() -> None:
                if proc.poll() is not None:
                    raise DeployError("lock: the session holding the models folder's lock ended")

            yield still_held
        finally:
            # Closing stdin ends the remote `cat`, and with it the lock.
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(self.timeouts.step)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def report(self) -> dict:
        """The Pi's status report (remote.STATUS): status.json, its age, pid and systemd liveness, decisions."""
        try:
            report = json.loads(self.run(remote.STATUS, what="read status", marked=True))
        except json.JSONDecodeError:
            raise DeployError("read status: the Pi's answer is not JSON") from None
        if not isinstance(report, dict):
            raise DeployError("read status: the Pi's answer is not a JSON object")
        return report

    def wait_for(self, sha256: str, timeout: float) -> dict:
        """Poll the service's status until it runs `sha256`; DeployError if it does not within `timeout`."""
        deadline = time.monotonic() + timeout
        report: dict = {}
        while time.monotonic() < deadline:
            try:
                report = self.report()
            except DeployError:
                report = {}
            if _status(report).get("model_sha256") == sha256 and judge(report)[0]:
                return report
            time.sleep(0.5)
        running = str(_status(report).get("model_sha256", "unknown"))[:12]
        raise DeployError(f"service did not report model {sha256[:12]} within {timeout:.0f} s (runs {running})")


def _reason(stderr: str, returncode: int) -> str:
    if "Host key verification failed" in stderr:
        return "host key unknown or changed (add it to known_hosts after checking it; never skipped)"
    err = stderr.strip().splitlines()
    return clean(err[-1]) if err else f"exit {returncode}"


def _status(report: dict) -> dict:
    status = report.get("status")
    return status if isinstance(status, dict) else {}


def _num(value: object, default: float = 0.0) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def judge(report: dict) -> tuple[bool, list[str]]:
    """Whether the service runs, and if not, why: systemd's word where the Pi runs systemd, else the pid in
    status.json; and the status must be fresh (the loop writes it every status_interval, 5 s by default), because
    after a SIGKILL or a power cut status.json still says "running"."""
    status = _status(report)
    if not status:
        return False, [str(report.get("error", "no status.json"))]
    why = []
    systemd = report.get("systemd")
    if systemd is not None and systemd != "active":
        why.append(f"systemd says {systemd}")
    if report.get("pid_alive") is False:
        why.append(f"pid {status.get('pid')} is gone")
    if not status.get("running"):
        why.append("it stopped")
    age, stale_after = _num(report.get("age")), 3 * _num(status.get("status_interval"), 5.0) + 10
    if age > stale_after:
        why.append(f"no status for {age:.0f} s")
    return not why, why


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
                host.wait_for(sha256, t.confirm)
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
        host.wait_for(previous, confirm)
        return Result(host.name, True, "running the previous model", previous)
    except (DeployError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return Result(host.name, False, clean(exc))


def rollback_one(host: Host) -> Result:
    try:
        with host.locked() as still_held:
            return _restore(host, remote.rollback(), "rollback", host.timeouts.confirm, still_held)
    except DeployError as exc:
        return Result(host.name, False, str(exc))


def status_one(host: Host) -> Result:
    try:
        report = host.report()
    except DeployError as exc:
        return Result(host.name, False, str(exc))
    status = _status(report)
    alive, why = judge(report)
    decisions = report.get("decisions") or []
    last = ", ".join(f"{time.strftime('%H:%M:%S', time.localtime(_num(d[0])))} {d[1]}" for d in decisions
                     if isinstance(d, list) and len(d) >= 2)
    if "events_error" in report:
        last = f"events unreadable ({report['events_error']})"
    age = _num(report.get("age"))
    if alive:
        head = f"running, up {_num(status.get('uptime')) + age:.0f} s, {_num(status.get('fps')):g} fps, " \
               f"door {status.get('door')}"
    elif status:
        head = f"NOT RUNNING ({'; '.join(why)}); last status {age:.0f} s ago: door {status.get('door')}"
    else:
        head = f"NOT RUNNING ({'; '.join(why)})"
    if status.get("model_fallback"):  # the live model was refused at start: the service runs the previous one
        head += f", FALLBACK: {status['model_fallback']}"
    sha = status.get("model_sha256", "")
    return Result(host.name, alive, f"{head}, last: {last or 'none'}", sha if isinstance(sha, str) else "")


# -- pull: the crops a Pi collected (appliance/collect.py), copied, verified, then deleted there ---------------------
CROP_NAME = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9]{3}-[0-9a-f]{6}\.jpg")  # appliance.collect.NAME
PULL_BATCH = 100  # crops per transfer: an interrupted pull redoes at most one batch
INDEX = "index.jsonl"


def _manifest(host: Host) -> list[dict]:
    """The Pi's crops with their sha256 (computed there) and index lines; anything malformed is dropped."""
    text = host.run_marked_bytes(remote.collect("list"), what="list crops").decode(errors="replace")
    crops = []
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if (isinstance(d, dict) and isinstance(d.get("file"), str) and CROP_NAME.fullmatch(d["file"])
                and isinstance(d.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", d["sha256"])
                and isinstance(d.get("info"), dict)):
            crops.append(d)
    return crops


def _frames(data: bytes) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes or None where the crop was gone) from remote.collect("send")'s stream."""
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        head = json.loads(data[pos:end])
        size = int(head["size"])
        pos = end + 1
        if size < 0:
            yield head["file"], None
            continue
        if pos + size > len(data):
            raise DeployError(f"fetch crops: the stream ends inside {clean(head['file'])}")
        yield head["file"], data[pos:pos + size]
        pos += size


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Local:
    """DIR/<host>/: verified crops and index.jsonl (one line per crop: the Pi's line, its sha256 and host)."""

    def __init__(self, folder: Path, host: str):
        self.folder, self.host = folder, host
        folder.mkdir(parents=True, exist_ok=True)
        self.index = folder / INDEX
        self.listed: set[str] = set()
        if self.index.exists():
            for line in self.index.read_text().splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    self.listed.add(json.loads(line).get("file"))

    def has(self, crop: dict) -> bool:
        path = self.folder / crop["file"]
        return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == crop["sha256"]

    def store(self, crop: dict, data: bytes) -> None:
        """The verified crop in place (whole or absent), then its index line; both on disk before returning."""
        path = self.folder / crop["file"]
        tmp = self.folder / f".{crop['file']}.part"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        self.list(crop)

    def list(self, crop: dict) -> None:
        if crop["file"] in self.listed:
            return
        line = {**crop["info"], "file": crop["file"], "sha256": crop["sha256"], "host": self.host}
        with open(self.index, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.listed.add(crop["file"])


def pull_one(host: Host, dest: Path, keep: bool, batch: int | None = None) -> Result:
    """Copy the Pi's new crops into dest/<host>/, each checked against the sha256 the Pi computed, and delete on the
    Pi only those whose copy is verified and on disk here. Run again after an interruption: crops already here are
    not fetched again (only deleted there), and nothing is deleted that is not here."""
    if "/" in host.name or host.name in (".", ".."):
        return Result(host.name, False, "refused: a host name for pull cannot contain '/' (it names a folder)")
    try:
        crops = _manifest(host)
        local = _Local(dest / host.name, host.name)
        here = [c for c in crops if local.has(c)]
        for c in here:  # copied by an interrupted pull, perhaps before its line was written
            local.list(c)
        todo = [c for c in crops if c not in here]
        fetched, corrupt, deleted, changed = 0, [], 0, 0
        verified = [(c["file"], c["sha256"]) for c in here]
        batch = max(1, batch or PULL_BATCH)
        for part in [todo[i:i + batch] for i in range(0, len(todo), batch)] or [[]]:
            if part:
                wanted = {c["file"]: c for c in part}
                stream = host.run_marked_bytes(remote.collect("send"), stdin="\n".join(wanted).encode(),
                                               what="fetch crops", timeout=host.timeouts.upload)
                try:
                    frames = list(_frames(stream))
                except (ValueError, KeyError, TypeError) as exc:
                    raise DeployError(f"fetch crops: unreadable answer from the Pi ({clean(exc)})") from None
                for name, data in frames:
                    crop = wanted.pop(name, None)
                    if crop is None or data is None:
                        continue  # not asked for, or pruned on the Pi meanwhile
                    if hashlib.sha256(data).hexdigest() != crop["sha256"]:
                        corrupt.append(name)  # left on the Pi: the next pull tries again
                        continue
                    local.store(crop, data)
                    verified.append((name, crop["sha256"]))
                    fetched += 1
                _fsync_dir(local.folder)
            if verified and not keep:
                answer = json.loads(host.run_marked_bytes(
                    remote.collect("delete"), stdin="".join(f"{n} {h}\n" for n, h in verified).encode(),
                    what="delete pulled crops"))
                deleted += int(answer.get("deleted", 0))
                changed += len(answer.get("changed", []))
            verified = []
    except DeployError as exc:
        return Result(host.name, False, str(exc))
    except (OSError, ValueError) as exc:
        return Result(host.name, False, f"pull: {clean(exc)}")
    detail = f"{fetched} new crops in {local.folder}"
    if here:
        detail += f", {len(here)} were here already"
    detail += ", kept on the Pi" if keep else f", {deleted} deleted on the Pi"
    if corrupt:
        detail += f"; {len(corrupt)} arrived corrupted and stay on the Pi (pull again)"
    if changed:
        detail += f"; {changed} changed on the Pi after listing and were kept there"
    return Result(host.name, not corrupt, detail)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mask-deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ssh-config", type=Path, help="an ssh_config file instead of ~/.ssh/config")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the service to report a new model (default 30)")
    parser.add_argument("--upload-timeout", type=float, default=300.0,
                        help="seconds one upload of the model may take (default 300)")
    parser.add_argument("--lock-wait", type=float, default=120.0,
                        help="seconds to wait for another push or rollback on the same Pi (default 120)")
    parser.add_argument("--parallel", type=int, default=8, help="hosts at once (default 8)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="push a model and its card")
    p.add_argument("hosts", nargs="+")
    p.add_argument("--model", type=Path, default=MODELS_DIR / "mask_classifier.tflite")
    p.add_argument("--force", action="store_true",
                   help="push a model whose card has no passing gate (mask-train gate); said in the output and "
                        "recorded in the card the Pi gets")
    p = sub.add_parser("pull", help="fetch the face crops a Pi collected into DIR/<host>/, verified, then delete "
                                    "them there")
    p.add_argument("hosts", nargs="+")
    p.add_argument("--to", type=Path, required=True, metavar="DIR", help="where the crops go (DIR/<host>/)")
    p.add_argument("--keep", action="store_true", help="leave the crops on the Pi")
    sub.add_parser("rollback", help="put the previous model back").add_argument("hosts", nargs="+")
    sub.add_parser("status", help="liveness, model in use, uptime, last decisions").add_argument("hosts", nargs="+")
    args = parser.parse_args(argv)
    for option in ("timeout", "upload_timeout", "lock_wait"):
        if not 0 < getattr(args, option) < 86400:
            parser.error(f"--{option.replace('_', '-')} {getattr(args, option)} is not between 0 and 86400 s")

    timeouts = Timeouts(confirm=args.timeout, upload=args.upload_timeout, lock=args.lock_wait)
    job: Callable[[Host], Result]
    if args.command == "push":
        try:
            card = load_card(card_path_for(args.model))
            data = args.model.read_bytes()
            card_bytes = card_path_for(args.model).read_bytes()
        except (CardError, OSError) as exc:
            print(f"mask-deploy: {exc}", file=sys.stderr)
            return 2
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != card.sha256:
            print(f"mask-deploy: {args.model}: sha256 {sha256[:12]} does not match its card ({card.sha256[:12]}); "
                  "nothing pushed", file=sys.stderr)
            return 2
        why = gate_problem(json.loads(card_bytes))
        if why and not args.force:
            print(f"mask-deploy: {card_path_for(args.model)}: {why}; nothing pushed (score it against the live "
                  "model with `mask-train gate NEW --baseline OLD`, or push it anyway with --force)", file=sys.stderr)
            return 2
        if why:
            print(f"FORCED: {args.model} is pushed although {why}; the card on each Pi records the forced push")
            card_bytes = forced_card(card_bytes, why)
        job = lambda h: push_one(h, data, card_bytes, sha256)  # noqa: E731
    elif args.command == "pull":
        job = lambda h: pull_one(h, args.to, args.keep)  # noqa: E731
    elif args.command == "rollback":
        job = rollback_one
    else:
        job = status_one
    with ThreadPoolExecutor(max_workers=max(1, min(args.parallel, len(args.hosts)))) as pool:
        results = list(pool.map(_guarded(job, args.ssh_config, timeouts), args.hosts))
    print(_table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
