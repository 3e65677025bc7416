"""A Raspberry Pi OS-like root folder built from Debian's packages and the wheels the Pi installer selects.

Raspberry Pi OS 64-bit is Debian's arm64 userland with Raspberry Pi's own archive on top (the camera stack, the
kernel). The runtime needs only Debian's python3, python3-numpy and libstdc++6 from apt, and pip wheels chosen by
deploy/constraints/<release>.txt: the same files deploy/install.sh reads on a Pi. A private apt downloads the .debs
(nothing of the host's apt changes), dpkg-deb unpacks them, and pip installs the wheels for the release's Python
into a folder of their own. deploy/pi_check.py runs the result under qemu; deploy/release_tests.py runs the tests in
an amd64 one.

A `Sysroot` is the result: the root folder, what went into it, and where its Python, wheels and project code are.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBS = ("python3", "python3-numpy", "libstdc++6")
MACHINES = {"arm64": "aarch64", "amd64": "x86_64"}


@dataclass(frozen=True)
class Release:
    """A Raspberry Pi OS release, as the Debian release it is built on."""

    codename: str
    title: str
    python: str  # the python3 that Debian ships, "3.11"
    glibc: int  # glibc 2.N: pip on the Pi accepts every manylinux tag up to it

    @property
    def constraints(self) -> Path:
        """deploy/constraints/<codename>.txt, the pins deploy/install.sh gives pip on this release."""
        return REPO / "deploy" / "constraints" / f"{self.codename}.txt"

    def pip_target(self, arch: str) -> list[str]:
        """pip's arguments for binary wheels that this release's python3 runs on `arch`."""
        machine = MACHINES[arch]
        platforms = [f"manylinux2014_{machine}", f"linux_{machine}",
                     *(f"manylinux_2_{v}_{machine}" for v in range(17, self.glibc + 1))]
        abi = "cp" + self.python.replace(".", "")
        return ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp", "--abi", abi,
                *(arg for p in platforms for arg in ("--platform", p))]


RELEASES = {
    "bookworm": Release("bookworm", "Bookworm", "3.11", 36),
    "trixie": Release("trixie", "Trixie", "3.13", 41),
}


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its last lines of output, which say what went wrong."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{Path(cmd[0]).name} exited {proc.returncode}: {' '.join(map(str, cmd[:4]))} ...\n{tail}")
    return proc


class DebianApt:
    """A private apt for one Debian release and architecture in `root`: its own lists and package cache."""

    def __init__(self, root: Path, release: Release, arch: str, mirror: str = MIRROR,
                 security: str = SECURITY) -> None:
        self.root, self.arch = root, arch
        for d in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "var/lib/dpkg",
                  "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "var/lib/dpkg/status").touch()  # nothing installed: apt resolves the whole closure
        opts = f"[arch={arch} signed-by={KEYRING}]"
        name = release.codename
        (root / "etc/apt/sources.list").write_text(f"deb {opts} {mirror} {name} main\n"
                                                   f"deb {opts} {mirror} {name}-updates main\n"
                                                   f"deb {opts} {security} {name}-security main\n")

    def apt(self, *args: str) -> str:
        """apt-get ARGS against this private root; its stdout."""
        status = self.root / "var/lib/dpkg/status"
        return sh(["apt-get", "-q", "-o", f"Dir={self.root}", "-o", f"Dir::State::status={status}",
                   "-o", f"APT::Architecture={self.arch}", "-o", f"APT::Architectures::={self.arch}",
                   "-o", "Debug::NoLocking=1", *args]).stdout

    def download(self, packages: tuple[str, ...]) -> list[Path]:
        """The .debs of `packages` and everything they depend on, from the cache where apt already has them."""
        self.apt("update")
        self.apt("install", "--download-only", "-y", "--no-install-recommends", *packages)
        # The simulated install names the exact versions; older ones may still lie in the cache.
        archives = self.root / "var/cache/apt/archives"
        debs = planned_debs(self.apt("install", "-s", "--no-install-recommends", *packages), archives)
        missing = [d.name for d in debs if not d.is_file()]
        if not debs or missing:
            raise RuntimeError(f"apt did not download {', '.join(missing) or 'anything'} into {archives}")
        return debs


def planned_debs(simulation: str, archives: Path) -> list[Path]:
    """The .deb file names that `apt-get install -s` plans ("Inst NAME (VERSION ... [ARCH])"), as apt saves them."""
    plan = re.findall(r"^Inst (\S+) \((\S+) .*\[(\w+)\]\)", simulation, re.M)
    return [archives / f"{name}_{version.replace(':', '%3a')}_{arch}.deb" for name, version, arch in plan]


def deb_version(debs: list[Path], package: str) -> str:
    """The upstream version of `package` among the .debs: python3-numpy_1%3a2.2.4+ds-1_arm64.deb -> 2.2.4."""
    deb = next(d for d in debs if d.name.startswith(f"{package}_"))
    return re.split(r"[-+~]", re.sub(r"^\d+%3a", "", deb.name.split("_")[1]))[0]


def runtime_requirements() -> list[str]:
    """What deploy/install.sh asks pip for: the project's runtime dependencies. The [pi] extra's lgpio comes from
    apt on a Pi (python3-lgpio), and mock pins need none."""
    import tomllib

    return list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])


def download_wheels(dest: Path, release: Release, arch: str, numpy_version: str, pip_cache: Path,
                    extra: tuple[str, ...] = ()) -> list[Path]:
    """Wheels for the runtime (and `extra` requirements), resolved as deploy/install.sh resolves them on a Pi:
    against the release's constraints and with numpy held at the version apt installed. A constraints file that
    would make pip replace the system's numpy cannot resolve, so this raises instead."""
    dest.mkdir(parents=True)
    pin = dest / "numpy-from-apt.txt"
    pin.write_text(f"numpy=={numpy_version}\n")
    sh([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--cache-dir", str(pip_cache),
        "-d", str(dest), *release.pip_target(arch), "-c", str(release.constraints), "-c", str(pin),
        *runtime_requirements(), *extra])
    return sorted(dest.glob("*.whl"))


@dataclass
class Sysroot:
    """An unpacked Debian root with the runtime's wheels in `site` and the project's code in `src`."""

    root: Path
    release: Release
    arch: str
    debs: list[Path]
    wheels: list[Path]

    @property
    def python(self) -> Path:
        """The release's python3 binary inside the root."""
        return self.root / f"usr/bin/python{self.release.python}"

    @property
    def site(self) -> Path:
        """The runtime's wheels, installed (numpy excepted: apt's)."""
        return self.root / "opt/mask-appliance/site"

    @property
    def src(self) -> Path:
        """The project's appliance/ and models/, as on a Pi."""
        return self.root / "opt/mask-appliance/src"

    def versions(self) -> str:
        """The versions that matter, as the Pi would have them: "Python 3.13.5, numpy 2.2.4, OpenCV 4.14.0.94"."""
        def wheel(name: str) -> str:
            found = [w.name.split("-")[1] for w in self.wheels if w.name.lower().startswith(name + "-")]
            return found[0] if found else "?"

        return (f"Python {deb_version(self.debs, f'python{self.release.python}')}, "
                f"numpy {deb_version(self.debs, 'python3-numpy')}, OpenCV {wheel('opencv_python_headless')}, "
                f"LiteRT {wheel('ai_edge_litert')}")

    @classmethod
    def build(cls, root: Path, release: Release, arch: str, cache: Path, mirror: str = MIRROR,
              extra: tuple[str, ...] = ()) -> Sysroot:
        """Download and unpack the .debs, do what their setup scripts would have, add the wheels and the project."""
        debs = DebianApt(cache / f"apt-{release.codename}-{arch}", release, arch, mirror).download(DEBS)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in debs:
            sh(["dpkg-deb", "-x", str(deb), str(root)])
        # Trixie's packages install into /usr alone and leave /lib -> usr/lib to base-files, which we do not unpack:
        # without it the program loader (/lib/ld-linux-aarch64.so.1, /lib64/ld-linux-x86-64.so.2) is missing.
        for merged in ("bin", "lib", "lib64", "sbin"):
            if (root / "usr" / merged).is_dir() and not (root / merged).exists():
                (root / merged).symlink_to(f"usr/{merged}")
        # Without update-alternatives (a postinst), numpy's libblas.so.3 and liblapack.so.3 are missing.
        lib = root / f"usr/lib/{MACHINES[arch]}-linux-gnu"
        for name, alt in (("libblas.so.3", "blas"), ("liblapack.so.3", "lapack")):
            (lib / name).unlink(missing_ok=True)
            (lib / name).symlink_to(f"{alt}/{name}")
        wheels_dir = root.parent / f"wheels-{root.name}"
        shutil.rmtree(wheels_dir, ignore_errors=True)
        wheels = download_wheels(wheels_dir, release, arch, deb_version(debs, "python3-numpy"), cache / "pip", extra)
        sysroot = cls(root, release, arch, debs, wheels)
        # numpy stays apt's, as on the Pi, where the venv sees the system's site-packages.
        sh([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-compile",
            "--target", str(sysroot.site), *release.pip_target(arch),
            *(str(w) for w in wheels if not w.name.startswith("numpy-"))])
        for part in ("appliance", "models"):
            shutil.copytree(REPO / part, sysroot.src / part, ignore=shutil.ignore_patterns("__pycache__"))
        return sysroot
