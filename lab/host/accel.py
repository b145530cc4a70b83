"""Is KVM usable here? Decide by trying, not by looking for /dev/kvm.

On some hosts /dev/kvm exists and even firmware runs, but a Linux guest hangs with no
output. So boot a real kernel (the box's, else the host's newest /boot/vmlinuz-*) under
-accel kvm with its console on a serial file, and wait for its "Linux version" banner:
seen within the deadline means KVM really runs guests; anything else means TCG.
"""

from __future__ import annotations

import glob
import os
import subprocess
import tempfile

from ..wait import WaitTimeout, wait_for

PROBE_TIMEOUT_S = 15.0
POLL_S = 0.2
QEMU = "qemu-system-x86_64"
BANNER = b"Linux version"


def probe_kernel(preferred: str | None = None) -> str | None:
    if preferred and os.path.exists(preferred):
        return preferred
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    return kernels[-1] if kernels else None


def _banner_seen(serial: str) -> bool:
    try:
        with open(serial, "rb") as f:
            return BANNER in f.read()
    except FileNotFoundError:
        return False


def kvm_works(kernel: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    kernel = probe_kernel(kernel)
    if kernel is None or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="vdl-kvm-") as tmp:
        serial = os.path.join(tmp, "serial")
        argv = [
            QEMU,
            "-accel",
            "kvm",
            "-m",
            "256",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-kernel",
            kernel,
            "-append",
            "console=ttyS0 panic=-1",
            "-serial",
            f"file:{serial}",
        ]
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError:
            return False

        def settled() -> bool:
            """True once the banner is out or QEMU has exited (KVM refused)."""
            return _banner_seen(serial) or proc.poll() is not None

        try:
            wait_for(settled, timeout_s, POLL_S, f"a kernel banner under KVM ({kernel})")
            return _banner_seen(serial)
        except WaitTimeout:
            return False  # the guest hangs: the symptom this probe exists to catch
        finally:
            proc.kill()
            proc.wait(timeout_s)


if __name__ == "__main__":
    print("kvm" if kvm_works() else "tcg")  # noqa: T201
