"""The way to a Pi: the user's own OpenSSH client with their ~/.ssh/config, key authentication only (BatchMode),
strict host-key checking and no forwarding of the agent, X11 or ports, which the command line forces on whatever a
config file says; the Pi's lock on its models folder; its status report. Everything a Pi sends is printed with its
control characters escaped (`clean`)."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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


class DeployError(RuntimeError):
    """One step on one host failed; the message says which and why."""


@dataclass
class Result:
    """What one action did on one host: a row of mask-deploy's table."""

    host: str
    ok: bool
    detail: str
    sha256: str = ""


@dataclass(frozen=True)
class Timeouts:
    """How long mask-deploy waits for each kind of step, in seconds."""

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


def _reason(stderr: str, returncode: int) -> str:
    if "Host key verification failed" in stderr:
        return "host key unknown or changed (add it to known_hosts after checking it; never skipped)"
    err = stderr.strip().splitlines()
    return clean(err[-1]) if err else f"exit {returncode}"


def _after_mark(text: str, what: str) -> str:
    """The output after remote.MARK; what a login shell printed before it (a banner, an rc file) is dropped."""
    head, sep, tail = text.partition(remote.MARK + "\n")
    if not sep:
        raise DeployError(f"{what}: unexpected answer from the Pi: {clean(text.strip()[:120]) or 'nothing'}")
    return tail


class Host:
    """One Pi, reached by ssh; each method runs one of deploy.remote's steps there."""

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
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        assert stdin and stdout and stderr  # all three are PIPE: set by Popen (said for the type checker)
        lines: queue.Queue[bytes | None] = queue.Queue()

        def read() -> None:
            for line in stdout:
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
                    raise DeployError(f"lock: {_reason(stderr.read().decode(errors='replace'), proc.returncode)}")
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
                stdin.close()
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
