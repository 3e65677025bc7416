"""A Raspberry Pi's CPU under qemu-user: the appliance's command line run in an arm64 sysroot as a Pi 4 or a Pi 5."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from deploy.sysroot import Sysroot


@dataclass(frozen=True)
class Cpu:
    """One board's CPU: the model qemu emulates and the /proc/cpuinfo the Pi's kernel shows for it."""

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


def run_appliance(sysroot: Sysroot, cpu: Cpu, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m appliance.cli ARGS` with the sysroot's Python and wheels, emulated as `cpu`; output captured."""
    (sysroot.root / "proc").mkdir(exist_ok=True)
    # With -L, qemu reads the sysroot's /proc/cpuinfo. It must be this CPU's: a Pi 5's features under cortex-a72
    # make LiteRT pick instructions that CPU lacks (SIGILL).
    (sysroot.root / "proc/cpuinfo").write_text(cpu.cpuinfo())
    guest_env = {**env, "PYTHONPATH": f"{sysroot.src}:{sysroot.site}", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["qemu-aarch64-static", "-cpu", cpu.qemu, "-L", str(sysroot.root), str(sysroot.python),
                           "-m", "appliance.cli", *args], capture_output=True, text=True, env=guest_env)
