"""deploy/install.sh under a fake root, with stub system commands that log what they are asked and keep state."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

# One stub for apt-get, dpkg-query, getent, useradd, usermod, userdel, id, systemctl, chown and python3: it logs
# its arguments and keeps just enough state (installed packages, users, groups, enabled units) for the
# installer's checks to see its own earlier work.
STUB = r"""#!/usr/bin/env bash
name=$(basename "$0"); S=$STUB_STATE; echo "$name $*" >> "$S/log"
case "$name" in
  apt-get) [ "$1" = install ] && for p in "${@:2}"; do [[ $p == -* ]] || touch "$S/pkg-$p"; done ;;
  dpkg-query) p=${!#}; [ -f "$S/pkg-$p" ] && printf 'install ok installed' || exit 1 ;;
  getent) [ "$1" = group ] && exit 0; [ -f "$S/user-$2" ] || exit 2; echo "$2:x:999:999::/:/bin/false" ;;
  useradd) touch "$S/user-${!#}" ;;
  usermod) echo "$2" >> "$S/groups-$3" ;;
  userdel) rm -f "$S/user-$1" ;;
  id) [ -f "$S/groups-$2" ] && tr '\n' ' ' < "$S/groups-$2"; echo ;;
  systemctl)
    unit=${!#}
    case "$1" in
      is-enabled) [ -f "$S/enabled-$unit" ]; exit $? ;;
      is-active) [ -f "$S/active-$unit" ]; exit $? ;;
      enable) touch "$S/enabled-$unit" ;;
      start|restart) touch "$S/active-$unit" ;;
      disable) rm -f "$S/enabled-$unit" "$S/active-$unit" ;;
    esac ;;
  python3)  # python3 -m venv --system-site-packages DIR
    mkdir -p "${!#}/bin"; for t in python pip; do cp "$0" "${!#}/bin/$t"; done ;;
esac
exit 0
"""


@pytest.fixture
def fake(tmp_path):
    bin_dir, state, root = tmp_path / "bin", tmp_path / "state", tmp_path / "root"
    for d in (bin_dir, state, root):
        d.mkdir()
    (bin_dir / "stub").write_text(STUB)
    (bin_dir / "stub").chmod(0o755)
    for name in ("apt-get", "dpkg-query", "getent", "useradd", "usermod", "userdel", "id", "systemctl", "chown",
                 "python3"):
        (bin_dir / name).symlink_to(bin_dir / "stub")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_STATE": str(state),
           "MASK_INSTALL_ROOT": str(root), "SUDO_USER": "pi"}

    def run(*args: str, src: Path = REPO) -> tuple[str, list[str]]:
        (state / "log").write_text("")
        proc = subprocess.run(["bash", str(src / "deploy" / "install.sh"), *args], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, (state / "log").read_text().splitlines()

    return root, run


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_first_install_puts_everything_in_place(fake):
    root, run = fake
    out, log = run()
    assert "installed and running" in out
    apt = [line for line in log if line.startswith("apt-get install")][0]
    for package in ("python3-picamera2", "python3-libcamera", "python3-systemd", "python3-lgpio", "python3-numpy"):
        assert package in apt
    assert any(line.startswith("useradd --system --user-group") for line in log)
    assert "usermod -aG mask-appliance pi" in log and "usermod -aG video mask-appliance" in log
    assert any("python3 -m venv --system-site-packages" in line for line in log)
    pip = [line for line in log if line.startswith("pip install")][0]
    assert "-c" in pip and pip.endswith("/opt/mask-appliance/src[pi]")
    actions = [line for line in log if line.startswith("systemctl") and "is-" not in line]
    assert actions == ["systemctl daemon-reload", "systemctl enable mask-appliance", "systemctl start mask-appliance"]
    assert (root / "etc/mask-appliance/config.toml").read_text() == (REPO / "deploy/config.pi.toml").read_text()
    assert (root / "etc/systemd/system/mask-appliance.service").read_bytes() == (
        REPO / "systemd/mask-appliance.service").read_bytes()
    models = root / "var/lib/mask-appliance/models"
    assert (models / "mask_classifier.tflite").read_bytes() == (REPO / "models/mask_classifier.tflite").read_bytes()
    assert oct((models).stat().st_mode)[-4:] == "2775"
    assert (root / "opt/mask-appliance/src/appliance/service.py").is_file()


def test_running_it_again_changes_nothing_and_keeps_an_edited_config(fake):
    root, run = fake
    run()
    config = root / "etc/mask-appliance/config.toml"
    config.write_text(config.read_text() + "\n[policy]\nmode = \"unlock-on-masked\"\n")
    before = tree(root)
    out, log = run()
    assert "nothing to change" in out
    acting = [line for line in log if line.split()[0] in ("apt-get", "useradd", "usermod", "pip")
              or line.startswith(("systemctl enable", "systemctl start", "systemctl restart", "systemctl daemon"))]
    assert acting == []
    assert tree(root) == before


def test_new_code_is_reinstalled_and_the_service_restarted(fake, tmp_path):
    root, run = fake
    src = tmp_path / "checkout"
    for part in ("appliance", "models", "deploy", "systemd", "pyproject.toml", "README.md"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, src / part)
    run(src=src)
    (src / "appliance" / "policy.py").write_text((src / "appliance" / "policy.py").read_text() + "\n# changed\n")
    out, log = run(src=src)
    assert any(line.startswith("pip install") for line in log)
    assert "systemctl restart mask-appliance" in log
    assert (root / "opt/mask-appliance/src/appliance/policy.py").read_text().endswith("# changed\n")


def test_uninstall_keeps_config_and_state_unless_purged(fake):
    root, run = fake
    run()
    out, log = run("--uninstall")
    assert "systemctl disable --now mask-appliance" in log
    assert not (root / "etc/systemd/system/mask-appliance.service").exists()
    assert not (root / "opt/mask-appliance").exists()
    assert (root / "etc/mask-appliance/config.toml").exists() and (root / "var/lib/mask-appliance/models").exists()
    run()
    run("--uninstall", "--purge")
    assert not (root / "etc/mask-appliance").exists() and not (root / "var/lib/mask-appliance").exists()


def test_shell_scripts_pass_shellcheck():
    names = ("deploy/install.sh", "deploy/pi-check", "scripts/test", "scripts/demo", "scripts/venv", ".ci/run")
    scripts = [REPO / name for name in names]
    proc = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_the_unit_passes_systemd_analyze_verify():
    proc = subprocess.run(["systemd-analyze", "verify", str(REPO / "systemd/mask-appliance.service")],
                          capture_output=True, text=True)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    # The one thing a CI machine lacks is the installed program itself; anything else is a real complaint.
    assert complaints in ([], ["mask-appliance.service: Command /opt/mask-appliance/venv/bin/mask-appliance is not "
                               "executable: No such file or directory"]), complaints
    unit = (REPO / "systemd/mask-appliance.service").read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=mask-appliance",
                    "SupplementaryGroups=video gpio", "StateDirectory=mask-appliance", "NoNewPrivileges=yes",
                    "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        assert setting in unit


def test_the_fleet_playbook_is_valid_ansible():
    import sys

    playbook = Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(playbook), "-i", str(REPO / "deploy/ansible/inventory.example.ini"),
                           str(REPO / "deploy/ansible/site.yml"), "--syntax-check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
