"""The runtime's unit tests on a newer Raspberry Pi OS release's Python and numpy (Trixie: 3.13 and 2.2), here.

deploy/pi-check runs the appliance under qemu as arm64 code but only through `check` and `detect`. This runs the
runtime's own tests (policy, config, sources, actuators, classifier, service, CLI) with the interpreter and numpy of
the release, as amd64 code at native speed: an amd64 root built like the Pi's (deploy/sysroot.py: Debian's python3,
python3-numpy and libstdc++6, the wheels of deploy/constraints/<release>.txt, plus pytest), the repository and
../shared bound read-only at their own paths inside it, and pytest started in it through chroot, in a mount
namespace of its own (so it needs root, as CI has). Tests that need the training kit (TensorFlow) skip.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy.sysroot import MIRROR, RELEASES, REPO, Sysroot

SHARED = REPO.parent / "shared"
RUNTIME_TESTS = ("test_policy.py", "test_config.py", "test_sources.py", "test_actuators.py", "test_classifier.py",
                 "test_service.py", "test_cli.py", "test_assets.py", "test_imaging.py")
# Bind the repository and ../shared read-only at their own paths, give the root a /dev/null, /proc and /tmp,
# then run the release's python in it. Everything mounted here goes with the namespace when it ends.
MOUNT_AND_RUN = r"""
set -eu
root=$1; shift
for dir in "$REPO" "$SHARED"; do
    mkdir -p "$root$dir"; mount --bind "$dir" "$root$dir"; mount -o remount,bind,ro "$root$dir"
done
mkdir -p "$root/dev" "$root/proc" "$root/tmp"; chmod 1777 "$root/tmp"
touch "$root/dev/null"; mount --bind /dev/null "$root/dev/null"
mount -t proc proc "$root/proc"
exec chroot "$root" "$@"
"""


def say(msg: str) -> None:
    print(f"release-tests: {msg}", flush=True)


def run_tests(sysroot: Sysroot, pytest_args: list[str]) -> int:
    tests = [str(REPO / "tests" / name) for name in RUNTIME_TESTS]
    start = (f"import os, sys, pytest; os.chdir({str(REPO)!r}); "
             f"sys.exit(pytest.main({['-p', 'no:cacheprovider', *pytest_args, *tests]!r}))")
    site = "/" + sysroot.site.relative_to(sysroot.root).as_posix()  # as the chrooted python sees it
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "REPO": str(REPO),
           "SHARED": str(SHARED), "PYTHONPATH": f"{REPO}:{site}",
           "PYTHONDONTWRITEBYTECODE": "1", "MASK_RUNTIME_ONLY": "1", "GPIOZERO_PIN_FACTORY": "mock",
           "MASK_APPLIANCE_ASSETS": str(SHARED / "assets"), "OPENCV_LOG_LEVEL": "ERROR"}
    python = "/" + sysroot.python.relative_to(sysroot.root).as_posix()
    return subprocess.run(["unshare", "--mount", "bash", "-c", MOUNT_AND_RUN, "release-tests", str(sysroot.root),
                           python, "-c", start], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/release-tests", description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", choices=sorted(RELEASES), default="trixie")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mask-appliance/pi-check"
    parser.add_argument("--cache", type=Path, default=cache, help="downloaded .debs and wheels (shared with pi-check)")
    parser.add_argument("--mirror", default=os.environ.get("PI_CHECK_MIRROR", MIRROR))
    parser.add_argument("--keep", type=Path, help="build the root here and keep it (default: a temporary folder)")
    args, pytest_args = parser.parse_known_args(argv)
    if os.geteuid() != 0:
        say("needs root: the tests run in a chroot (sudo deploy/release-tests)")
        return 2
    release = RELEASES[args.release]
    with tempfile.TemporaryDirectory(prefix="release-tests-") as tmp:
        work = args.keep or Path(tmp)
        try:
            sysroot = Sysroot.build(work / f"{release.codename}-amd64", release, "amd64", args.cache, args.mirror,
                                    extra=("pytest",))
        except (RuntimeError, OSError) as exc:
            say(f"error: {exc}")
            return 2
        say(f"{release.title} amd64 root: {sysroot.versions()}; running the runtime's tests in it")
        code = run_tests(sysroot, pytest_args or ["-q"])
    say(f"{release.title}: the runtime's tests {'passed' if code == 0 else f'FAILED (pytest exit {code})'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
