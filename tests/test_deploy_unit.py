"""systemd/mask-appliance.service (issue #13, item 13): its hardening is there, systemd-analyze scores it, and the
real service runs under the unit's system call filter and environment. No systemd runs here, so the filter is put
on the service's process the way systemd does it: a seccomp filter, EPERM for every system call in the groups the
unit denies, as systemd-analyze lists them."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support.data import REPO, pi_service_config

UNIT = REPO / "systemd/mask-appliance.service"


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(key + "=")]


def test_the_unit_carries_the_hardening_of_issue_13():
    assert unit_values("StateDirectoryMode") == ["0750"]
    assert "PYTHONNOUSERSITE=1" in unit_values("Environment")
    assert unit_values("DevicePolicy") == ["closed"]
    assert unit_values("DeviceAllow") == ["char-video4linux rw", "char-media rw", "char-dma_heap rw",
                                          "char-gpiochip rw"]
    assert unit_values("SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert unit_values("SystemCallErrorNumber") == ["EPERM"]
    assert unit_values("RemoveIPC") == ["yes"] and unit_values("PrivateMounts") == ["yes"]
    assert unit_values("PrivateDevices") == []  # it would hide the camera and the GPIO chip


def test_systemd_analyze_security_scores_the_unit_1_5_or_better():
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True,
                          text=True)
    m = re.search(r"Overall exposure level for mask-appliance\.service: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 1.5  # 2.0 before issue 13


def test_the_units_environment_turns_the_user_site_off(tmp_path):
    # The service's home is its writable state folder; a .pth file in a user site there would run at every start.
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    for value in unit_values("Environment"):
        key, _, val = value.partition("=")
        env[key] = val
    probe = ["/usr/bin/python3", "-c", "import site, sys; print(site.ENABLE_USER_SITE)"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "False"
    del env["PYTHONNOUSERSITE"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True).stdout.strip() == "True"


def denied_syscalls() -> list[str]:
    """The system calls of the unit's `SystemCallFilter=~...` groups, nested groups expanded, from systemd."""
    (groups,) = [v[1:].split() for v in unit_values("SystemCallFilter") if v.startswith("~")]
    names, seen = set(), set()
    while groups:
        group = groups.pop()
        if group in seen:
            continue
        seen.add(group)
        out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines()[1:]:
            word = line.strip()
            if word.startswith("@"):
                groups.append(word)
            elif word and not word.startswith("#"):
                names.add(word)
    return sorted(names)


def _seccomp_eperm(names: list[str]):
    """A preexec_fn that loads a seccomp filter: every call in `names` fails with EPERM, the rest are allowed."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    allow, eperm = 0x7FFF0000, 0x00050000 | errno.EPERM  # SCMP_ACT_ALLOW, SCMP_ACT_ERRNO(EPERM)
    numbers = [n for n in (lib.seccomp_syscall_resolve_name(name.encode()) for name in names) if n >= 0]

    def load() -> None:
        ctx = lib.seccomp_init(allow)
        for number in numbers:
            lib.seccomp_rule_add(ctx, eperm, number, 0)
        if lib.seccomp_load(ctx) != 0:
            os._exit(99)

    return load, len(numbers)


def test_the_service_runs_a_scene_under_the_units_system_call_filter(tmp_path):
    if not (ctypes.util.find_library("seccomp") or Path("/usr/lib/x86_64-linux-gnu/libseccomp.so.2").exists()):
        pytest.fail("libseccomp is missing (it comes with systemd)")
    names = denied_syscalls()
    assert {"setpriority", "sched_setaffinity", "setuid", "chown", "chroot"} <= set(names)
    load, resolved = _seccomp_eperm(names)
    assert resolved > 40
    # the filter bites: lowering one's own priority is a @resources call
    probe = subprocess.run([sys.executable, "-c", "import os; os.nice(1)"], preexec_fn=load, capture_output=True,
                           text=True)
    assert probe.returncode == 1 and "PermissionError" in probe.stderr
    # the real service under it: starts, decides on a scene without a mask, stops at the scene's end cleanly
    state = tmp_path / "state"
    cfg = pi_service_config(state, tmp_path, "still_frames = 40\n")
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "mask-appliance"), "run", "--config", str(cfg)],
                          env=env, preexec_fn=load, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    con = sqlite3.connect(f"file:{state / 'events.db'}?mode=ro", uri=True)
    kinds = [k for (k,) in con.execute("SELECT kind FROM events ORDER BY id")]
    states = [s for (s,) in con.execute("SELECT state FROM events WHERE kind = 'decision'")]
    con.close()
    assert kinds[0] == "start" and kinds[-1] == "stop" and "deny" in states
    assert "fault" not in kinds
    assert json.loads((state / "status.json").read_text())["running"] is False
