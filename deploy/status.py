"""`mask-deploy status`, and the liveness judgement a push waits on: is the service running, and which model."""

from __future__ import annotations

import time
from typing import cast

from appliance.vocab import Status
from deploy.ssh import DeployError, Host, Result


def status_of(report: dict) -> Status:
    """The status.json part of a Pi's report (the appliance's Status keys), or {} where it is missing or not an
    object."""
    status = report.get("status")
    return cast(Status, status) if isinstance(status, dict) else Status()


def _num(value: object, default: float = 0.0) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def judge(report: dict) -> tuple[bool, list[str]]:
    """Whether the service runs, and if not, why: systemd's word where the Pi runs systemd, else the pid in
    status.json; and the status must be fresh (the loop writes it every status_interval, 5 s by default), because
    after a SIGKILL or a power cut status.json still says "running"."""
    status = status_of(report)
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


def wait_for(host: Host, sha256: str, timeout: float) -> dict:
    """Poll the service's status until it runs `sha256`; DeployError if it does not within `timeout`."""
    deadline = time.monotonic() + timeout
    report: dict = {}
    while time.monotonic() < deadline:
        try:
            report = host.report()
        except DeployError:
            report = {}
        if status_of(report).get("model_sha256") == sha256 and judge(report)[0]:
            return report
        time.sleep(0.5)
    running = str(status_of(report).get("model_sha256", "unknown"))[:12]
    raise DeployError(f"service did not report model {sha256[:12]} within {timeout:.0f} s (runs {running})")


def status_one(host: Host) -> Result:
    try:
        report = host.report()
    except DeployError as exc:
        return Result(host.name, False, str(exc))
    status = status_of(report)
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
