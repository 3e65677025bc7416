"""deploy/install.sh under a fake root, with stub system commands that log what they are asked and keep state."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.data import REPO

# One stub for apt-get, dpkg, dpkg-query, getent, useradd, usermod, userdel, id, systemctl, chown and python3: it
# logs its arguments and keeps just enough state (installed packages, users, groups, enabled units) for the
# installer's checks to see its own earlier work. dpkg answers $STUB_ARCH; python3 (and the venv's python, a copy
# of it) answers numpy's version and file as $STUB_NUMPY (or, for the venv, $STUB_VENV_NUMPY) says, and where the
# installed package keeps its models. The venv's pip keeps a copy of the tree it was asked to install (state/pip-src,
# owners and modes as pip found them) and puts its appliance package, links followed, into the venv's
# site-packages, as the wheel would (test_the_wheel_carries_... builds and installs a real one).
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
  dpkg) echo "${STUB_ARCH:-arm64}" ;;
  pip)  # pip install ... DIR[pi]: keep DIR as pip found it, and put in the venv what a wheel of it holds
    src=${!#}; src=${src%"[pi]"}; site=$(dirname "$0")/../lib/site-packages
    rm -rf "$S/pip-src" "$site/appliance"; cp -a "$src" "$S/pip-src"
    mkdir -p "$site"; cp -RL "$src/appliance" "$site/" ;;
  python3|python)
    if [ "$1" = -m ]; then  # python3 -m venv --system-site-packages DIR
      mkdir -p "${!#}/bin"; for t in python pip; do cp "$0" "${!#}/bin/$t"; done
    elif [[ $* == *MODELS_DIR* ]]; then  # the installed package's models
      echo "$(cd "$(dirname "$0")/.." && pwd)/lib/site-packages/appliance/models"
    elif [[ $* == *numpy* ]]; then
      apt="2.2.4 /usr/lib/python3/dist-packages/numpy/__init__.py"
      numpy=${STUB_NUMPY:-$apt}; [ "$name" = python ] && numpy=${STUB_VENV_NUMPY:-$numpy}
      [[ $* == *__version__* ]] && echo "$numpy" || echo "${numpy#* }"
    fi ;;
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
    for name in ("apt-get", "dpkg", "dpkg-query", "getent", "useradd", "usermod", "userdel", "id", "systemctl", "chown",
                 "python3"):
        (bin_dir / name).symlink_to(bin_dir / "stub")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_STATE": str(state),
           "MASK_INSTALL_ROOT": str(root), "SUDO_USER": "pi"}
    os_release(root, "trixie")

    def run(*args: str, src: Path = REPO, fails: bool = False, **stub_env: str) -> tuple[str, list[str]]:
        (state / "log").write_text("")
        proc = subprocess.run(["bash", str(src / "deploy" / "install.sh"), *args], env={**env, **stub_env},
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode != 0) == fails, proc.stderr
        return (proc.stderr if fails else proc.stdout), (state / "log").read_text().splitlines()

    return root, run


RELEASES = {  # /etc/os-release as Raspberry Pi OS writes it (64-bit: ID=debian; 32-bit: ID=raspbian)
    "bookworm": ("debian", "12", "Debian GNU/Linux 12 (bookworm)"),
    "trixie": ("debian", "13", "Debian GNU/Linux 13 (trixie)"),
    "bullseye": ("debian", "11", "Debian GNU/Linux 11 (bullseye)"),
    "noble": ("ubuntu", "24.04", "Ubuntu 24.04.1 LTS"),
}


def os_release(root: Path, codename: str) -> None:
    distro, version, pretty = RELEASES[codename]
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/os-release").write_text(f'PRETTY_NAME="{pretty}"\nID={distro}\nVERSION_ID="{version}"\n'
                                         f"VERSION_CODENAME={codename}\n")


PARTS = ("appliance", "training", "models", "deploy", "systemd", "pyproject.toml", "README.md", "docs")


def checkout(dst: Path) -> Path:
    """A copy of this checkout's parts that the installer reads, links kept (appliance/models -> ../models)."""
    for part in PARTS:
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, dst / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / part, dst / part)
    return dst


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
    pip = [line for line in log if line.startswith("pip install")][0].split()
    # not editable: pip builds a wheel from a copy under /opt, which is gone once the package is installed
    assert "-e" not in pip and "--editable" not in pip
    stage = Path(pip[-1].removesuffix("[pi]"))
    assert stage.parent == root / "opt/mask-appliance" and stage.name.startswith("build.") and not stage.exists()
    assert f"{stage}/deploy/constraints/trixie.txt" in pip
    assert sorted(p.name for p in (root / "opt/mask-appliance").iterdir()) == [
        ".stamp", "README.md", "docs", "numpy-from-apt.txt", "venv"]
    # the unit's Documentation= links lead to the README and the troubleshooting page, installed for everyone to
    # read, with every page and picture of the manual that the README's links lead to
    unit = (REPO / "systemd/mask-appliance.service").read_text()
    docs = re.findall(r"file://(/\S+)", "".join(re.findall(r"^Documentation=(.*)$", unit, re.MULTILINE)))
    assert docs == ["/opt/mask-appliance/README.md", "/opt/mask-appliance/docs/troubleshooting.md"]
    for doc in docs:
        installed = root / doc.lstrip("/")
        assert installed.read_bytes() == (REPO / doc.removeprefix("/opt/mask-appliance/")).read_bytes()
        assert oct(installed.stat().st_mode)[-4:] == "0644"
    app = root / "opt/mask-appliance"
    links = re.findall(r"\]\((docs/[^)#]+)", (REPO / "README.md").read_text())
    assert links and all((app / link).is_file() for link in links), [x for x in links if not (app / x).is_file()]
    manual = sorted(p.relative_to(REPO) for p in (REPO / "docs").rglob("*") if p.suffix in (".md", ".png")
                    and not {"_generated", "_ext"} & set(p.parts))
    assert sorted(p.relative_to(app) for p in (app / "docs").rglob("*") if p.is_file()) == manual
    actions = [line for line in log if line.startswith("systemctl") and "is-" not in line]
    assert actions == ["systemctl daemon-reload", "systemctl enable mask-appliance", "systemctl start mask-appliance"]
    assert (root / "etc/mask-appliance/config.toml").read_text() == (REPO / "deploy/config.pi.toml").read_text()
    assert (root / "etc/systemd/system/mask-appliance.service").read_bytes() == (
        REPO / "systemd/mask-appliance.service").read_bytes()
    models = root / "var/lib/mask-appliance/models"
    assert (models / "mask_classifier.tflite").read_bytes() == (REPO / "models/mask_classifier.tflite").read_bytes()
    assert (models / "mask_classifier.json").read_bytes() == (REPO / "models/mask_classifier.json").read_bytes()
    assert oct((models).stat().st_mode)[-4:] == "2775"
    assert (root / "opt/mask-appliance/venv/lib/site-packages/appliance/service.py").is_file()
    # the venv's python asks the installed package, never a checkout in the folder the installer was started from
    venv = [line for line in log if line.startswith("python ")]
    assert len(venv) == 4 and all(line.startswith("python -I -c ") for line in venv), venv


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


def test_a_missing_readme_is_put_back_without_restarting_the_service(fake):
    root, run = fake
    run()
    readme = root / "opt/mask-appliance/README.md"
    readme.unlink()
    out, log = run()
    assert "nothing to change" not in out and f"install: README {readme}" in out
    assert readme.read_bytes() == (REPO / "README.md").read_bytes()
    assert not any(line.startswith(("pip install", "systemctl restart")) for line in log)
    assert "nothing to change" in run()[0]


def test_new_code_is_reinstalled_and_the_service_restarted(fake, tmp_path):
    root, run = fake
    src = checkout(tmp_path / "checkout")
    run(src=src)
    policy = src / "appliance" / "deciding" / "policy.py"
    policy.write_text(policy.read_text() + "\n# changed\n")
    out, log = run(src=src)
    assert any(line.startswith("pip install") for line in log)
    assert "systemctl restart mask-appliance" in log
    site = root / "opt/mask-appliance/venv/lib/site-packages"
    assert (site / "appliance/deciding/policy.py").read_text().endswith("# changed\n")


def test_a_failed_pip_install_leaves_no_copy_behind_and_is_retried(fake, tmp_path):
    root, run = fake
    run()
    venv_pip = root / "opt/mask-appliance/venv/bin/pip"
    working = venv_pip.read_text()
    venv_pip.write_text("#!/bin/sh\necho 'pip: no network' >&2\nexit 1\n")  # pip fails: the index is unreachable
    src = checkout(tmp_path / "checkout")
    policy = src / "appliance" / "deciding" / "policy.py"
    policy.write_text(policy.read_text() + "\n# changed\n")
    err, _ = run(src=src, fails=True)
    assert "pip: no network" in err
    assert not list((root / "opt/mask-appliance").glob("build.*"))
    venv_pip.write_text(working)
    out, log = run(src=src)  # the stamp was not written, so the next run installs the new code
    assert any(line.startswith("pip install") for line in log) and "systemctl restart mask-appliance" in log


def test_an_install_from_a_package_without_its_models_is_refused(fake, tmp_path):
    root, run = fake
    src = checkout(tmp_path / "checkout")
    (src / "appliance/models").unlink()  # a package built without its data (no link to models/)
    err, _ = run(src=src, fails=True)
    assert re.fullmatch(r"install: the installed package has no shipped model and asset manifest in \S+/venv/lib/"
                        r"site-packages/appliance/models \(built without models/\?\)", err.strip()), err


def test_an_editable_install_of_an_earlier_version_is_replaced(fake):
    root, run = fake
    run()
    (root / "opt/mask-appliance/.stamp").unlink()
    old = root / "opt/mask-appliance/src"  # where installs before the wheel kept an editable checkout
    (old / "appliance").mkdir(parents=True)
    out, log = run()
    assert any(line.startswith("pip install") for line in log) and not old.exists()


def test_the_wheel_carries_the_shipped_model_and_the_asset_manifest(tmp_path):
    """A real wheel, built offline from a copy of the checkout (as install.sh builds it) and installed, not editable,
    into a folder outside the repository: the package finds its own model, card and manifest there."""
    src = checkout(tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("mask_appliance-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = z.read("appliance/models/mask_classifier.tflite")
    assert shipped == (REPO / "models/mask_classifier.tflite").read_bytes()
    assert {"appliance/models/mask_classifier.json", "appliance/models/assets.toml"} <= names
    assert not [n for n in names if n.startswith("models/")]  # nothing loose at the top of site-packages
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    probe = ("import json, appliance, appliance.assets as a; print(json.dumps([appliance.__file__, "
             "str(appliance.MODELS_DIR), str(a.MANIFEST), str(a.resolve('yunet', download=False))]))")
    # PYTHONPATH comes before the repository's editable install, as the venv's site-packages does on a Pi
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    module, models, manifest, yunet = json.loads(proc.stdout)
    assert module == str(site / "appliance/__init__.py")
    assert models == str(site / "appliance/models") and manifest == str(site / "appliance/models/assets.toml")
    assert yunet.endswith("face-detectors/face_detection_yunet_2026may.onnx")


def test_in_a_checkout_the_models_are_the_repositorys_models_folder():
    import appliance

    assert (REPO / "appliance/models").resolve() == REPO / "models"
    assert appliance.MODELS_DIR == REPO / "models"


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
    names = ("deploy/install.sh", "deploy/pi-check", "deploy/release-tests", "scripts/test", "scripts/demo",
             "scripts/venv", ".ci/run")
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
    playbook = Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(playbook), "-i", str(REPO / "deploy/ansible/inventory.example.ini"),
                           str(REPO / "deploy/ansible/site.yml"), "--syntax-check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("codename, numpy", [("bookworm", "1.24.2"), ("trixie", "2.2.4")])
def test_each_release_gets_its_own_constraints_and_keeps_apts_numpy(fake, codename, numpy):
    root, run = fake
    os_release(root, codename)
    out, log = run(STUB_NUMPY=f"{numpy} /usr/lib/python3/dist-packages/numpy/__init__.py")
    pip = [line for line in log if line.startswith("pip install")][0].split()
    constraints = [pip[i + 1] for i, arg in enumerate(pip) if arg == "-c"]
    stage = pip[-1].removesuffix("[pi]")
    assert constraints == [f"{stage}/deploy/constraints/{codename}.txt",
                           f"{root}/opt/mask-appliance/numpy-from-apt.txt"]
    # pip is held to apt's numpy, so with --system-site-packages it installs none of its own
    assert (root / "opt/mask-appliance/numpy-from-apt.txt").read_text() == f"numpy=={numpy}\n"
    assert f"numpy {numpy} from apt kept" in out
    assert (root / "opt/mask-appliance/venv/.release").read_text() == f"{codename}\n"


def test_a_release_change_makes_a_new_venv(fake):
    root, run = fake
    os_release(root, "bookworm")
    run()
    os_release(root, "trixie")
    out, log = run()
    assert sum("python3 -m venv --system-site-packages" in line for line in log) == 1
    assert any(line.startswith("pip install") and "constraints/trixie.txt" in line for line in log)


@pytest.mark.parametrize("codename, arch, expected", [
    ("bullseye", "arm64", r"Debian GNU/Linux 11 \(bullseye\) \(debian bullseye\) is not supported"),
    ("noble", "arm64", r"Ubuntu 24\.04\.1 LTS \(ubuntu noble\) is not supported"),
    ("bookworm", "armhf", r"Debian GNU/Linux 12 \(bookworm\) is a 32-bit system \(armhf\), and LiteRT has no 32-bit"),
    ("trixie", "amd64", r"this machine is amd64, not arm64 \(MASK_INSTALL_ANY_ARCH=1 installs anyway\)"),
])
def test_an_unsupported_system_is_refused_in_one_line_before_anything_is_done(fake, codename, arch, expected):
    root, run = fake
    os_release(root, codename)
    err, log = run(fails=True, STUB_ARCH=arch)
    assert len(err.strip().splitlines()) == 1, err
    assert re.fullmatch(rf"install: {expected}.*; supported: Raspberry Pi OS Bookworm or Trixie, 64-bit \(arm64\), "
                        r"on a Raspberry Pi 4 or 5", err.strip()), err
    assert [line for line in log if not line.startswith("dpkg --print-architecture")] == []
    assert not (root / "opt").exists()


def test_any_arch_is_allowed_only_when_asked(fake):
    root, run = fake
    out, _ = run(STUB_ARCH="amd64", MASK_INSTALL_ANY_ARCH="1")
    assert "installed and running" in out


@pytest.mark.parametrize("where, expected", [
    ({"STUB_NUMPY": "2.3.1 /usr/local/lib/python3.13/dist-packages/numpy/__init__.py"},
     r"python3's numpy comes from /usr/local/lib/python3\.13/dist-packages/numpy/__init__\.py, not from apt"),
    ({"STUB_VENV_NUMPY": "2.3.1 /opt/mask-appliance/venv/lib/python3.13/site-packages/numpy/__init__.py"},
     r"pip put a numpy of its own in the venv \(/opt/mask-appliance/venv/lib/python3\.13/site-packages/numpy/"),
])
def test_a_numpy_that_would_shadow_apts_is_refused(fake, where, expected):
    root, run = fake
    err, _ = run(fails=True, **where)
    assert re.search(expected, err), err


def test_installed_code_is_roots_and_writable_by_nobody_else(fake, tmp_path):
    root, run = fake
    src = checkout(tmp_path / "checkout")
    for path in [src, *src.rglob("*")]:  # a checkout as careless as they come: group- and world-writable
        if path.is_symlink():
            continue
        path.chmod(0o777 if path.is_dir() or os.access(path, os.X_OK) else 0o666)
        if os.geteuid() == 0:
            os.chown(path, 4321, 4321)  # and owned by someone else, as a clone by `pi` is
    run(src=src)
    # what pip built the wheel from (as pip found it), and what it installed
    built_from = tmp_path / "state/pip-src"
    site = root / "opt/mask-appliance/venv/lib/site-packages"
    for folder in (built_from, site):
        installed = [p for p in [folder, *folder.rglob("*")] if not p.is_symlink()]
        assert len(installed) > 20
        writable = [str(p) for p in installed if p.stat().st_mode & 0o022]
        assert writable == []
        if os.geteuid() == 0:
            assert {p.stat().st_uid for p in installed} == {0}
    assert (site / "appliance/models/mask_classifier.tflite").is_file()
    config = root / "etc/mask-appliance/config.toml"
    assert oct(config.stat().st_mode)[-4:] == "0640"


def test_a_restored_config_model_and_event_log_are_kept_on_a_new_system(fake):
    """Moving a Pi from Bookworm to Trixie: the state folder and config come back from a backup before the
    installer runs on the freshly flashed system (docs/howto/install.md, "From Bookworm to Trixie")."""
    root, run = fake
    state, etc = root / "var/lib/mask-appliance", root / "etc/mask-appliance"
    (state / "models").mkdir(parents=True)
    etc.mkdir(parents=True)
    (etc / "config.toml").write_text('[policy]\nmode = "unlock-on-masked"\n')
    (state / "models/mask_classifier.tflite").write_bytes(b"a retrained model")
    (state / "models/mask_classifier.json").write_text("{}")
    (state / "events.db").write_bytes(b"SQLite format 3\0 and the shop's history")
    before = {p: p.read_bytes() for p in (etc / "config.toml", state / "events.db", *(state / "models").iterdir())}
    out, log = run()
    assert "installed and running" in out
    assert {p: p.read_bytes() for p in before} == before
    assert f"chown -R mask-appliance:mask-appliance {state} {root}/var/cache/mask-appliance" in log
