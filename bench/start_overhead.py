"""What does the dlm lock manager add to a domain start? nop vs lockd vs dlm, side by side.

Three local labs run at once, each a private libvirtd with its own lock manager (nop, lockd,
dlm with the model backend) and its own copy of the disks. The same domain (2 disks) is
started and destroyed in each, interleaved cycle by cycle, so that all three see the same
machine conditions. Prints the median start and start+destroy times and the dlm/nop and
dlm/lockd ratios.

    python bench/start_overhead.py [--cycles 20]

Target (issue: dlm.so): median start dlm/nop <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "plugin"), ROOT]

from lab.command import check  # noqa: E402
from lab.local import LocalLab  # noqa: E402
from lab.virt.domain import Disk, DomainSpec  # noqa: E402
from lab.virt.hypervisor import Hypervisor  # noqa: E402

MANAGERS = ("nop", "lockd", "dlm")
RATIO_TARGET = 1.05
WARMUP_CYCLES = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    labs = {m: LocalLab(os.path.join(ROOT, ".lab", f"bench-{m}"), m) for m in MANAGERS}
    hvs: dict[str, Hypervisor] = {}
    try:
        for manager, lab in labs.items():
            started = time.monotonic()
            lab.start()
            print(f"lab {manager}: up in {time.monotonic() - started:.1f} s", flush=True)
            hvs[manager] = Hypervisor(lab.uri)
            disks = []
            for name, fmt in (("one.qcow2", "qcow2"), ("share.raw", "raw")):
                path = os.path.join(lab.images, name)
                if not os.path.exists(path):
                    check(["qemu-img", "create", "-q", "-f", fmt, path, "16M"], timeout_s=30)
                disks.append(Disk(path, shareable=name == "share.raw"))
            hvs[manager].remove_all()
            hvs[manager].define(DomainSpec("bench-vm", tuple(disks)))
        starts: dict[str, list[float]] = {m: [] for m in MANAGERS}
        cycles: dict[str, list[float]] = {m: [] for m in MANAGERS}
        for cycle in range(WARMUP_CYCLES + args.cycles):
            for manager in MANAGERS:
                hv = hvs[manager]
                t0 = time.monotonic()
                seconds = hv.start("bench-vm")
                hv.destroy("bench-vm")
                if cycle >= WARMUP_CYCLES:
                    starts[manager].append(seconds)
                    cycles[manager].append(time.monotonic() - t0)
            if (cycle + 1) % 5 == 0:
                print(f"  cycle {cycle + 1}/{WARMUP_CYCLES + args.cycles}", flush=True)
        med = {m: statistics.median(starts[m]) for m in MANAGERS}
        medc = {m: statistics.median(cycles[m]) for m in MANAGERS}
        print(
            f"\n{args.cycles} interleaved start->destroy cycles per lock manager "
            f"(after {WARMUP_CYCLES} warm-up)"
        )
        print(f"{'manager':<8} {'start ms':>9} {'start+destroy ms':>17}")
        for m in MANAGERS:
            print(f"{m:<8} {med[m] * 1000:9.1f} {medc[m] * 1000:17.1f}")
        ratio_nop, ratio_lockd = med["dlm"] / med["nop"], med["dlm"] / med["lockd"]
        print(
            f"\nmedian start dlm/nop {ratio_nop:.3f} (target <= {RATIO_TARGET}), "
            f"dlm/lockd {ratio_lockd:.3f}"
        )
        ok = ratio_nop <= RATIO_TARGET
        print("RESULT:", "target met" if ok else "target MISSED")
        return 0 if ok else 1
    finally:
        for hv in hvs.values():
            hv.remove_all()
            hv.close()
        for lab in labs.values():
            lab.stop()


if __name__ == "__main__":
    raise SystemExit(main())
