"""The appliance's runtime as arm64 code under qemu-user, for every supported Raspberry Pi OS release, compared with
this machine.

For each release (Bookworm: Python 3.11, numpy 1.24; Trixie: Python 3.13, numpy 2.2) it builds a Raspberry Pi
OS-like sysroot from Debian's arm64 packages and the wheels that release's constraints select (deploy/sysroot.py,
the same deploy/constraints/<release>.txt that deploy/install.sh reads), then runs `mask-appliance check` and
`mask-appliance detect --json` with the Pi's own config (deploy/config.pi.toml, source and model paths changed)
under qemu-aarch64-static, once as a Pi 4 (cortex-a72) and once as a Pi 5 (cortex-a76) (deploy/qemu.py). It passes
when every run finds the faces that the same command finds on this machine, with the same labels, boxes within
BOX_TOL_PX and probabilities within P_TOL (deploy/compare.py).

Emulated timings are not Pi timings, so none are printed. It drives apt-get, dpkg-deb, pip and qemu as programs;
the x86 side is the project as installed beside this script (deploy/pi-check makes .venv).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import replace
from pathlib import Path

from deploy.compare import Detections, compare, parse_detect
from deploy.qemu import CPUS, Cpu, run_appliance
from deploy.sysroot import MIRROR, RELEASES, REPO, Release, Sysroot, sh

SHARED = REPO.parent / "shared"
PI_CONFIG = "deploy/config.pi.toml"


def say(msg: str) -> None:
    """A progress line, flushed at once: a run takes minutes."""
    print(f"pi-check: {msg}", flush=True)


def ensure_tools() -> None:
    """qemu-user-static and dpkg-deb, installed with apt where missing; a RuntimeError off Debian and Ubuntu."""
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


def pi_config(path: Path, images: Path, model: Path) -> Path:
    """deploy/config.pi.toml with the camera replaced by the image folder, the model by the shipped one and still
    photos looked at as frames are, checked by the appliance's own config module (a ConfigError names the file and
    key) and written to `path`."""
    from appliance import config
    from appliance.checking import dumps

    table = tomllib.loads((REPO / PI_CONFIG).read_text())
    table.setdefault("source", {})["spec"] = str(images)
    table.setdefault("classifier", {})["model"] = str(model)
    # `detect` looks at a still photo twice ([detector] photo_sides); the door's loop looks at a frame once, at
    # max_side. The check is of what the door does: one look at the Pi's max_side.
    detector = table.setdefault("detector", {})
    side = detector.get("max_side", config.DetectorConfig().max_side)
    detector["photo_sides"] = [side, side]
    config.parse(table, PI_CONFIG)  # what the Pi would refuse is refused here, before anything is built
    path.write_text(dumps(table))
    return path


def pick_images(folder: Path, count: int) -> list[Path]:
    """`count` .jpg images spread evenly over the sorted folder, the first among them."""
    images = sorted(folder.glob("*.jpg"))
    if len(images) < count:
        raise RuntimeError(f"{folder}: {len(images)} images, need {count}")
    step = len(images) / count
    return [images[int(i * step)] for i in range(count)]


def this_machine(work: Path, folder: Path, images: list[Path], env: dict[str, str]) -> Detections:
    """`detect --json` here, with the Pi's config and the shipped model: the answer every board must give."""
    from appliance.checkup import versions  # the x86 side runs the project as installed here

    config = pi_config(work / "config.toml", folder, REPO / "models/mask_classifier.tflite")
    detect = ["detect", "--json", "--config", str(config), *map(str, images)]
    here = subprocess.run([sys.executable, "-m", "appliance.cli", *detect], capture_output=True, text=True,
                          env={k: v for k, v in env.items() if k != "PYTHONPATH"}, cwd=REPO)
    if here.returncode:
        raise RuntimeError(f"detect on this machine failed:\n{here.stderr.strip()}")
    reference = parse_detect(here.stdout)
    faces = [f["label"] for found in reference.values() for f in found]
    say(f"this machine ({versions()}): {len(faces)} faces in {len(images)} images, "
        f"{faces.count('without_mask')} without a mask")
    return reference


def run_board(sysroot: Sysroot, cpu: Cpu, config: Path, detect: list[str], reference: Detections,
              env: dict[str, str]) -> tuple[bool, list[str]]:
    """`check` and `detect` on one board: whether it matches this machine, and the lines that say how (the last
    one a summary)."""
    check = run_appliance(sysroot, cpu, ["check", "--config", str(config)], env)
    if check.returncode:
        return False, [f"check exited {check.returncode}", *check.stdout.splitlines(),
                       *check.stderr.strip()[-2000:].splitlines()]
    guest = run_appliance(sysroot, cpu, detect, env)
    if guest.returncode:
        return False, [f"detect exited {guest.returncode}", *guest.stderr.strip()[-2000:].splitlines()]
    problems, gaps = compare(reference, parse_detect(guest.stdout))
    return not problems, [*problems, gaps.summary()]


def check_release(release: Release, cpus: list[Cpu], work: Path, args: argparse.Namespace, images: list[Path],
                  reference: Detections, env: dict[str, str]) -> list[str]:
    """One release: its sysroot built, then every board run in it; a result line per board ("ok  ..."/"FAIL ...")."""
    say(f"{release.title}: arm64 sysroot from Debian {release.codename} and "
        f"deploy/constraints/{release.codename}.txt")
    sysroot = Sysroot.build(work / release.codename, release, "arm64", args.cache, args.mirror)
    config = pi_config(sysroot.root / "config.toml", args.images, sysroot.src / "models/mask_classifier.tflite")
    detect = ["detect", "--json", "--config", str(config), *map(str, images)]
    results = []
    for cpu in cpus:
        ok, lines = run_board(sysroot, cpu, config, detect, reference, env)
        for line in lines[:-1]:
            say(f"{release.title} / {cpu.board}: {line}")
        results.append(f"{'ok  ' if ok else 'FAIL'} {release.title} ({sysroot.versions()}) as {cpu.board} "
                       f"({cpu.qemu}): {lines[-1]}")
        say(results[-1])
    return results


def report(results: list[str], seconds: float) -> int:
    """The verdict and every result line; exit 0 when every run matched, 1 otherwise."""
    failed = sum(not line.startswith("ok") for line in results)
    say(f"{'FAILED' if failed else 'passed'}: {len(results) - failed} of {len(results)} release and board runs "
        f"match this machine, in {seconds:.0f} s (emulated: no timing here is a Pi's)")
    for line in results:
        print(f"  {line}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (deploy/pi-check --help)."""
    parser = argparse.ArgumentParser(prog="deploy/pi-check", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--release", choices=sorted(RELEASES), action="append",
                        help="Raspberry Pi OS release to check (default: all)")
    parser.add_argument("--cpu", choices=sorted(CPUS), action="append", help="board to emulate (default: both)")
    parser.add_argument("--qemu-cpu", help="run the chosen boards as this qemu CPU model instead (to try others)")
    parser.add_argument("--images", type=Path, default=SHARED / "datasets/scenes-dev/images")
    parser.add_argument("--count", type=int, default=6, help="images to run, evenly spread (default 6)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mask-appliance/pi-check"
    parser.add_argument("--cache", type=Path, default=cache, help="downloaded .debs and wheels, kept between runs")
    parser.add_argument("--mirror", default=os.environ.get("PI_CHECK_MIRROR", MIRROR))
    parser.add_argument("--keep", type=Path, help="build the sysroots here and keep them (default: a temporary "
                        "folder)")
    return parser.parse_args(argv)


def chosen_cpus(args: argparse.Namespace) -> list[Cpu]:
    """The boards asked for (default: every one), as --qemu-cpu's model where that is given."""
    cpus = [CPUS[key] for key in args.cpu or sorted(CPUS)]
    if args.qemu_cpu:
        cpus = [replace(cpu, qemu=args.qemu_cpu, board=f"{cpu.board} as {args.qemu_cpu}") for cpu in cpus]
    return cpus


def appliance_env() -> dict[str, str]:
    """The environment both sides run the appliance in: mock pins, quiet libraries, ../shared's assets."""
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "OPENCV_LOG_LEVEL": "ERROR", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if "MASK_APPLIANCE_ASSETS" not in env and (SHARED / "assets").is_dir():
        env["MASK_APPLIANCE_ASSETS"] = str(SHARED / "assets")
    return env


def main(argv: list[str] | None = None) -> int:
    """Tools, images, this machine's answer, every release and board, the verdict: exit 0, 1 (a mismatch) or 2."""
    args = parse_args(argv)
    started, env = time.monotonic(), appliance_env()
    results: list[str] = []
    try:
        ensure_tools()
        images = pick_images(args.images, args.count)
        with tempfile.TemporaryDirectory(prefix="pi-check-") as tmp:
            work = args.keep or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            reference = this_machine(work, args.images, images, env)
            for name in args.release or sorted(RELEASES):
                results += check_release(RELEASES[name], chosen_cpus(args), work, args, images, reference, env)
    except (RuntimeError, OSError, ValueError) as exc:  # ValueError: a ConfigError or bad TOML in the Pi config
        say(f"error: {exc}")
        return 2
    return report(results, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
