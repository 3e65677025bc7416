"""The appliance's runtime as arm64 code under qemu-user, with the Pi installer's pins, compared with this machine.

Builds a Raspberry Pi OS-like sysroot from Debian Bookworm arm64 packages (python3 3.11, python3-numpy 1.24,
libstdc++6 and what they need), adds the aarch64/cp311 wheels that deploy/pi-constraints.txt selects and the
project's runtime code, then runs `mask-appliance check` and `mask-appliance detect --json` with the Pi's own
config (deploy/config.pi.toml, source and model paths changed) under qemu-aarch64-static, once as a Pi 4
(cortex-a72) and once as a Pi 5 (cortex-a76). It passes when every run finds the faces that the same command
finds on this machine, with the same labels, boxes within BOX_TOL_PX and probabilities within P_TOL.

Emulated timings are not Pi timings, so none are printed. It drives apt-get, dpkg-deb, pip and qemu as programs;
the x86 side is the project as installed beside this script (deploy/pi-check makes .venv).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBS = ("python3", "python3-numpy", "libstdc++6")
# The int8 model's output moves in steps of 1/256; a few steps either way is arithmetic, not a different answer.
P_TOL = 0.02
BOX_TOL_PX = 2.0
# Bookworm's glibc is 2.36: pip on the Pi accepts every manylinux tag up to that.
PLATFORMS = ["manylinux2014_aarch64", "linux_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in range(17, 37)]
# pip's arguments for wheels that Bookworm's python3.11 on arm64 can run.
PI_WHEELS = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
             *(arg for p in PLATFORMS for arg in ("--platform", p))]


@dataclass(frozen=True)
class Cpu:
    board: str
    qemu: str  # qemu's -cpu: never qemu's default "max", which has SME and gives the int8 model wrong classes
    part: str
    variant: str
    revision: str
    features: str
    model: str

    def cpuinfo(self, cores: int = 4) -> str:
        """An arm64 /proc/cpuinfo as the Pi's kernel writes it; qemu 7.2 would show the host's, and LiteRT's
        CPU probe crashes on that."""
        block = ("processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
                 "CPU architecture: 8\nCPU variant\t: {v}\nCPU part\t: {p}\nCPU revision\t: {r}\n")
        cpus = "\n".join(block.format(n=n, f=self.features, v=self.variant, p=self.part, r=self.revision)
                         for n in range(cores))
        return f"{cpus}\nModel\t\t: {self.model}\n"


CPUS = {
    "pi4": Cpu("Raspberry Pi 4", "cortex-a72", "0xd08", "0x0", "3", "fp asimd evtstrm crc32 cpuid",
               "Raspberry Pi 4 Model B Rev 1.4"),
    "pi5": Cpu("Raspberry Pi 5", "cortex-a76", "0xd0b", "0x4", "1",
               "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
               "Raspberry Pi 5 Model B Rev 1.0"),
}


def say(msg: str) -> None:
    print(f"pi-check: {msg}", flush=True)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its last lines of output, which say what went wrong."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{Path(cmd[0]).name} exited {proc.returncode}: {' '.join(map(str, cmd[:4]))} ...\n{tail}")
    return proc


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("qemu-aarch64-static", "qemu-user-static"), ("dpkg-deb", "dpkg"),
                                     ("apt-get", "apt")) if shutil.which(tool) is None]
    if not missing:
        return
    if "apt" in missing:
        raise RuntimeError("pi-check needs a Debian or Ubuntu machine (apt-get and dpkg-deb)")
    say(f"installing {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    sh([*sudo, "apt-get", "update", "-q"])
    sh([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


class ArmApt:
    """A private apt for arm64 Bookworm in `root`: its own lists and package cache, nothing of the host's touched."""

    def __init__(self, root: Path, mirror: str, security: str):
        self.root = root
        for d in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "var/lib/dpkg",
                  "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "var/lib/dpkg/status").touch()  # nothing installed: apt resolves the whole closure
        opts = f"[arch=arm64 signed-by={KEYRING}]"
        (root / "etc/apt/sources.list").write_text(f"deb {opts} {mirror} bookworm main\n"
                                                   f"deb {opts} {security} bookworm-security main\n")

    def apt(self, *args: str) -> str:
        status = self.root / "var/lib/dpkg/status"
        return sh(["apt-get", "-q", "-o", f"Dir={self.root}", "-o", f"Dir::State::status={status}",
                   "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64", "-o", "Debug::NoLocking=1",
                   *args]).stdout

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


def pi_requirements() -> list[str]:
    """What deploy/install.sh asks pip for: the project's runtime dependencies. The [pi] extra's lgpio comes from
    apt on a Pi (python3-lgpio), and mock pins need none."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def download_wheels(dest: Path, numpy_version: str, pip_cache: Path) -> list[Path]:
    """aarch64/cp311 wheels for the runtime, resolved against the installer's constraints with numpy held at
    Bookworm's version, as pip on the Pi keeps the apt numpy that Picamera2 is built against."""
    pin = dest / "numpy-from-apt.txt"
    dest.mkdir(parents=True)
    pin.write_text(f"numpy=={numpy_version}\n")
    sh([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--cache-dir", str(pip_cache),
        "-d", str(dest), *PI_WHEELS, "-c", str(REPO / "deploy/pi-constraints.txt"), "-c", str(pin),
        *pi_requirements()])
    return sorted(dest.glob("*.whl"))


def build_sysroot(root: Path, debs: list[Path], cache: Path) -> dict[str, Path]:
    """Unpack the .debs, do what their setup scripts would have, add the wheels and the project."""
    root.mkdir(parents=True)
    for deb in debs:
        sh(["dpkg-deb", "-x", str(deb), str(root)])
    # Without update-alternatives (a postinst), numpy's libblas.so.3 and liblapack.so.3 are missing.
    lib = root / "usr/lib/aarch64-linux-gnu"
    for name, alt in (("libblas.so.3", "blas"), ("liblapack.so.3", "lapack")):
        (lib / name).unlink(missing_ok=True)
        (lib / name).symlink_to(f"{alt}/{name}")
    numpy_deb = next(d for d in debs if d.name.startswith("python3-numpy_"))
    numpy_version = re.sub(r"^\d+%3a", "", numpy_deb.name.split("_")[1]).split("-")[0]
    wheels = download_wheels(root.parent / "wheels", numpy_version, cache / "pip")
    site, src = root / "opt/mask-appliance/site", root / "opt/mask-appliance/src"
    sh([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-compile",
        "--target", str(site), *PI_WHEELS, *(str(w) for w in wheels if not w.name.startswith("numpy-"))])
    for part in ("appliance", "models"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "proc").mkdir(exist_ok=True)  # for the board's cpuinfo (run_guest)
    return {"python": root / "usr/bin/python3.11", "site": site, "src": src}


def pi_config(path: Path, images: Path, model: Path) -> Path:
    """deploy/config.pi.toml with the camera replaced by the image folder and the model by the shipped one."""
    text = (REPO / "deploy/config.pi.toml").read_text()
    for key, value in (("spec", str(images)), ("model", str(model))):
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {json.dumps(value)}", text, flags=re.M)
        if n != 1:
            raise RuntimeError(f"deploy/config.pi.toml: expected one '{key} = ...' line, found {n}")
    path.write_text(text)
    return path


def pick_images(folder: Path, count: int) -> list[Path]:
    images = sorted(folder.glob("*.jpg"))
    if len(images) < count:
        raise RuntimeError(f"{folder}: {len(images)} images, need {count}")
    step = len(images) / count
    return [images[int(i * step)] for i in range(count)]


def parse_detect(stdout: str) -> dict[str, list[dict]]:
    return {row["image"]: row["faces"] for row in map(json.loads, stdout.splitlines())}


def compare(reference: dict[str, list[dict]], arm: dict[str, list[dict]],
            p_tol: float = P_TOL, box_tol: float = BOX_TOL_PX) -> tuple[list[str], dict[str, float]]:
    """Differences between two `detect --json` runs, one line each; and the faces matched, the labels that differ
    and the largest box and probability gaps."""
    from appliance.policy import iou

    problems: list[str] = []
    worst = {"faces": 0, "labels_differ": 0, "box_px": 0.0, "p": 0.0}
    for image, ref_faces in reference.items():
        name = Path(image).name
        if image not in arm:
            problems.append(f"{name}: no result from arm64")
            continue
        left = list(arm[image])
        for face in ref_faces:
            match = max(left, key=lambda f: iou(f["box"], face["box"]), default=None)
            if match is None or iou(match["box"], face["box"]) < 0.5:
                problems.append(f"{name}: face at {face['box']} not found on arm64")
                continue
            left.remove(match)
            worst["faces"] += 1
            box_gap = max(abs(u - v) for u, v in zip(match["box"], face["box"], strict=True))
            p_gap = abs(match["p_without_mask"] - face["p_without_mask"])
            worst["box_px"], worst["p"] = max(worst["box_px"], box_gap), max(worst["p"], p_gap)
            if match["label"] != face["label"]:
                worst["labels_differ"] += 1
                problems.append(f"{name}: face at {face['box']} is {match['label']} on arm64, {face['label']} here")
            if box_gap > box_tol:
                problems.append(f"{name}: face at {face['box']} boxed {match['box']} on arm64 ({box_gap:.1f} px)")
            if p_gap > p_tol:
                problems.append(f"{name}: face at {face['box']} p_without_mask {match['p_without_mask']} on arm64, "
                                f"{face['p_without_mask']} here")
        problems += [f"{name}: arm64 found a face at {f['box']} that this machine did not" for f in left]
    return problems, worst


def run_guest(paths: dict[str, Path], cpu: Cpu, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    root = paths["python"].parents[2]
    # With -L, qemu reads the sysroot's /proc/cpuinfo. It must be this CPU's: a Pi 5's features under cortex-a72
    # make LiteRT pick instructions that CPU lacks (SIGILL).
    (root / "proc/cpuinfo").write_text(cpu.cpuinfo())
    guest_env = {**env, "PYTHONPATH": f"{paths['src']}:{paths['site']}", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["qemu-aarch64-static", "-cpu", cpu.qemu, "-L", str(root), str(paths["python"]),
                           "-m", "appliance.cli", *args], capture_output=True, text=True, env=guest_env)


def main(argv: list[str] | None = None) -> int:
    from appliance.cli import versions  # the x86 side runs the project as installed here

    parser = argparse.ArgumentParser(prog="deploy/pi-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", choices=sorted(CPUS), action="append", help="board to emulate (default: both)")
    parser.add_argument("--qemu-cpu", help="run the chosen boards as this qemu CPU model instead (to try others)")
    parser.add_argument("--images", type=Path, default=SHARED / "datasets/scenes-dev/images")
    parser.add_argument("--count", type=int, default=6, help="images to run, evenly spread (default 6)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mask-appliance/pi-check"
    parser.add_argument("--cache", type=Path, default=cache,
                        help="downloaded .debs and wheels, kept between runs")
    parser.add_argument("--mirror", default=os.environ.get("PI_CHECK_MIRROR", MIRROR))
    parser.add_argument("--keep", type=Path, help="build the sysroot here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "OPENCV_LOG_LEVEL": "ERROR", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if "MASK_APPLIANCE_ASSETS" not in env and (SHARED / "assets").is_dir():
        env["MASK_APPLIANCE_ASSETS"] = str(SHARED / "assets")
    try:
        ensure_tools()
        images = pick_images(args.images, args.count)
        say("arm64 Bookworm packages: " + " ".join(DEBS))
        debs = ArmApt(args.cache / "apt", args.mirror, SECURITY).download(DEBS)
        with tempfile.TemporaryDirectory(prefix="pi-check-") as tmp:
            work = args.keep or Path(tmp)
            shutil.rmtree(work / "sysroot", ignore_errors=True)
            shutil.rmtree(work / "wheels", ignore_errors=True)
            paths = build_sysroot(work / "sysroot", debs, args.cache)
            say(f"sysroot {work / 'sysroot'}: {len(debs)} .debs, wheels from deploy/pi-constraints.txt")
            config = pi_config(work / "config.toml", args.images, paths["src"] / "models/mask_classifier.tflite")
            detect = ["detect", "--json", "--config", str(config), *map(str, images)]
            here = subprocess.run([sys.executable, "-m", "appliance.cli", *detect], capture_output=True, text=True,
                                  env={k: v for k, v in env.items() if k != "PYTHONPATH"}, cwd=REPO)
            if here.returncode:
                raise RuntimeError(f"detect on this machine failed:\n{here.stderr.strip()}")
            reference = parse_detect(here.stdout)
            faces = [f["label"] for found in reference.values() for f in found]
            say(f"this machine ({versions()}): {len(faces)} faces in {len(images)} images, "
                f"{faces.count('without_mask')} without a mask")
            failed = 0
            for key in args.cpu or sorted(CPUS):
                cpu = CPUS[key] if not args.qemu_cpu else replace(CPUS[key], qemu=args.qemu_cpu,
                                                                          board=f"{CPUS[key].board} as {args.qemu_cpu}")
                say(f"{cpu.board} ({cpu.qemu}): mask-appliance check")
                check = run_guest(paths, cpu, ["check", "--config", str(config)], env)
                print(check.stdout, end="")
                if check.returncode:
                    failed += 1
                    say(f"{cpu.board}: check exited {check.returncode}\n{check.stderr.strip()[-2000:]}")
                    continue
                guest = run_guest(paths, cpu, detect, env)
                if guest.returncode:
                    failed += 1
                    say(f"{cpu.board}: detect exited {guest.returncode}\n{guest.stderr.strip()[-2000:]}")
                    continue
                problems, worst = compare(reference, parse_detect(guest.stdout))
                for line in problems:
                    say(f"{cpu.board}: {line}")
                failed += bool(problems)
                say(f"{cpu.board}: {'FAIL' if problems else 'ok'}: {len(images)} images, {worst['faces']} faces, "
                    f"{worst['labels_differ']} labels differ; largest gaps: box {worst['box_px']:.1f} px "
                    f"(allowed {BOX_TOL_PX}), p_without_mask {worst['p']:.4f} (allowed {P_TOL})")
    except (RuntimeError, OSError) as exc:
        say(f"error: {exc}")
        return 2
    say(f"{'FAILED' if failed else 'passed'} in {time.monotonic() - started:.0f} s (emulated: no timing here is a "
        "Pi's)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
