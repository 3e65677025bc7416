"""The appliance's runtime as arm64 code under qemu-user, for every supported Raspberry Pi OS release, compared with
this machine.

For each release (Bookworm: Python 3.11, numpy 1.24; Trixie: Python 3.13, numpy 2.2) it builds a Raspberry Pi
OS-like sysroot from Debian's arm64 packages and the wheels that release's constraints select (deploy/sysroot.py,
the same deploy/constraints/<release>.txt that deploy/install.sh reads), then runs `mask-appliance check` and
`mask-appliance detect --json` with the Pi's own config (deploy/config.pi.toml, source and model paths changed)
under qemu-aarch64-static, once as a Pi 4 (cortex-a72) and once as a Pi 5 (cortex-a76). It passes when every run
finds the faces that the same command finds on this machine, with the same labels, boxes within BOX_TOL_PX and
probabilities within P_TOL.

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
from dataclasses import dataclass, replace
from pathlib import Path

from deploy.sysroot import MIRROR, RELEASES, REPO, Sysroot, sh

SHARED = REPO.parent / "shared"
# The int8 model's output moves in steps of 1/256; a few steps either way is arithmetic, not a different answer.
P_TOL = 0.02
BOX_TOL_PX = 2.0
# A box that moved (by at most BOX_TOL_PX: another OpenCV resizes a little differently) is another crop, and the
# three-class model answers another crop with another p: on Trixie (OpenCV 4.14 against 5.0 here) a 1 px shift moved
# one confidently masked face from 0.070 to 0.047. The labels must still agree.
P_TOL_MOVED = 0.05


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
            if p_gap > (p_tol if box_gap == 0 else max(p_tol, P_TOL_MOVED)):
                problems.append(f"{name}: face at {face['box']} p_without_mask {match['p_without_mask']} on arm64, "
                                f"{face['p_without_mask']} here")
        problems += [f"{name}: arm64 found a face at {f['box']} that this machine did not" for f in left]
    return problems, worst


def run_guest(sysroot: Sysroot, cpu: Cpu, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    (sysroot.root / "proc").mkdir(exist_ok=True)
    # With -L, qemu reads the sysroot's /proc/cpuinfo. It must be this CPU's: a Pi 5's features under cortex-a72
    # make LiteRT pick instructions that CPU lacks (SIGILL).
    (sysroot.root / "proc/cpuinfo").write_text(cpu.cpuinfo())
    guest_env = {**env, "PYTHONPATH": f"{sysroot.src}:{sysroot.site}", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["qemu-aarch64-static", "-cpu", cpu.qemu, "-L", str(sysroot.root), str(sysroot.python),
                           "-m", "appliance.cli", *args], capture_output=True, text=True, env=guest_env)


def run_board(sysroot: Sysroot, cpu: Cpu, config: Path, detect: list[str], reference: dict[str, list[dict]],
              env: dict[str, str]) -> tuple[bool, list[str]]:
    """`check` and `detect` on one board: whether it matches this machine, and the lines that say how."""
    check = run_guest(sysroot, cpu, ["check", "--config", str(config)], env)
    if check.returncode:
        return False, [f"check exited {check.returncode}", *check.stdout.splitlines(),
                       *check.stderr.strip()[-2000:].splitlines()]
    guest = run_guest(sysroot, cpu, detect, env)
    if guest.returncode:
        return False, [f"detect exited {guest.returncode}", *guest.stderr.strip()[-2000:].splitlines()]
    problems, worst = compare(reference, parse_detect(guest.stdout))
    summary = (f"{worst['faces']} faces, {worst['labels_differ']} labels differ; largest gaps: box "
               f"{worst['box_px']:.1f} px (allowed {BOX_TOL_PX}), p_without_mask {worst['p']:.4f} (allowed {P_TOL}, "
               f"{P_TOL_MOVED} where the box moved)")
    return not problems, [*problems, summary]


def main(argv: list[str] | None = None) -> int:
    from appliance.cli import versions  # the x86 side runs the project as installed here

    parser = argparse.ArgumentParser(prog="deploy/pi-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", choices=sorted(RELEASES), action="append",
                        help="Raspberry Pi OS release to check (default: all)")
    parser.add_argument("--cpu", choices=sorted(CPUS), action="append", help="board to emulate (default: both)")
    parser.add_argument("--qemu-cpu", help="run the chosen boards as this qemu CPU model instead (to try others)")
    parser.add_argument("--images", type=Path, default=SHARED / "datasets/scenes-dev/images")
    parser.add_argument("--count", type=int, default=6, help="images to run, evenly spread (default 6)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mask-appliance/pi-check"
    parser.add_argument("--cache", type=Path, default=cache,
                        help="downloaded .debs and wheels, kept between runs")
    parser.add_argument("--mirror", default=os.environ.get("PI_CHECK_MIRROR", MIRROR))
    parser.add_argument("--keep", type=Path, help="build the sysroots here and keep them (default: a temporary "
                        "folder)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "OPENCV_LOG_LEVEL": "ERROR", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if "MASK_APPLIANCE_ASSETS" not in env and (SHARED / "assets").is_dir():
        env["MASK_APPLIANCE_ASSETS"] = str(SHARED / "assets")
    results: list[str] = []
    try:
        ensure_tools()
        images = pick_images(args.images, args.count)
        with tempfile.TemporaryDirectory(prefix="pi-check-") as tmp:
            work = args.keep or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            config = pi_config(work / "config.toml", args.images, REPO / "models/mask_classifier.tflite")
            reference = this_machine(config, images, env, versions())
            for name in args.release or sorted(RELEASES):
                release = RELEASES[name]
                say(f"{release.title}: arm64 sysroot from Debian {name} and deploy/constraints/{name}.txt")
                sysroot = Sysroot.build(work / name, release, "arm64", args.cache, args.mirror)
                guest_config = pi_config(sysroot.root / "config.toml", args.images,
                                         sysroot.src / "models/mask_classifier.tflite")
                detect = ["detect", "--json", "--config", str(guest_config), *map(str, images)]
                for key in args.cpu or sorted(CPUS):
                    cpu = CPUS[key] if not args.qemu_cpu else replace(
                        CPUS[key], qemu=args.qemu_cpu, board=f"{CPUS[key].board} as {args.qemu_cpu}")
                    ok, lines = run_board(sysroot, cpu, guest_config, detect, reference, env)
                    for line in lines[:-1]:
                        say(f"{release.title} / {cpu.board}: {line}")
                    results.append(f"{'ok  ' if ok else 'FAIL'} {release.title} ({sysroot.versions()}) as "
                                   f"{cpu.board} ({cpu.qemu}): {lines[-1]}")
                    say(results[-1])
    except (RuntimeError, OSError) as exc:
        say(f"error: {exc}")
        return 2
    failed = sum(not line.startswith("ok") for line in results)
    say(f"{'FAILED' if failed else 'passed'}: {len(results) - failed} of {len(results)} release and board runs "
        f"match this machine, in {time.monotonic() - started:.0f} s (emulated: no timing here is a Pi's)")
    for line in results:
        print(f"  {line}")
    return 1 if failed else 0


def this_machine(config: Path, images: list[Path], env: dict[str, str], versions: str) -> dict[str, list[dict]]:
    """`detect --json` here, with the shipped model: the answer every board must give."""
    detect = ["detect", "--json", "--config", str(config), *map(str, images)]
    here = subprocess.run([sys.executable, "-m", "appliance.cli", *detect], capture_output=True, text=True,
                          env={k: v for k, v in env.items() if k != "PYTHONPATH"}, cwd=REPO)
    if here.returncode:
        raise RuntimeError(f"detect on this machine failed:\n{here.stderr.strip()}")
    reference = parse_detect(here.stdout)
    faces = [f["label"] for found in reference.values() for f in found]
    say(f"this machine ({versions}): {len(faces)} faces in {len(images)} images, "
        f"{faces.count('without_mask')} without a mask")
    return reference


if __name__ == "__main__":
    sys.exit(main())
