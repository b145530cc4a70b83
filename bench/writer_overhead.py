"""What do writer guests cost? Their write rate in the lab, and the suite's time with and
without them, side by side in one run.

1. Write rate: vm-1 (one.qcow2 rw on the NFS share + share.raw shareable) runs as a writer
   guest on node-a; its counter on one.qcow2 is sampled from the node (O_DIRECT, past
   every cache) over WINDOW_S. One loop writes and reads back the exclusive disk and
   writes its slot of the shareable one: 3 I/Os.
2. Suite cost: the two-node table rows (tests/blackbox/cluster/test_tables.py, 14 rows)
   run with writer guests and with --no-writers, alternating, ROUNDS times each; the
   median wall times and their ratio are printed.

    python bench/writer_overhead.py [--rounds 1] [--window-s 10]     (the lab must be up)

Target (issue 13): the suite with writer guests takes at most 15% longer (ratio <= 1.15).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "plugin"), ROOT]

from lab.cluster import NODES, Lab  # noqa: E402
from lab.nodes import WRITER_BOOT_IMAGE  # noqa: E402
from lab.suite.matrix import FIRST, nfs_storage, thesis_vms  # noqa: E402
from lab.suite.steps import TwoNode  # noqa: E402
from lab.wait import wait_for  # noqa: E402

RATIO_TARGET = 1.15
BOOT_WAIT_S = 60.0
LOOP_IOS = 3  # per loop of vm-1: write + read back one.qcow2, write its share.raw slot
SUITE_TIMEOUT_S = 3600
SUITE = ["tests/blackbox/cluster/test_tables.py", "-q", "-p", "no:cacheprovider"]


def write_rate(tn: TwoNode, mount_point: str, window_s: float) -> float:
    """vm-1's loops per second on node-a, as its counter on one.qcow2 shows."""
    vm1 = thesis_vms(nfs_storage(mount_point), writer_boot=WRITER_BOOT_IMAGE)[FIRST]
    one = vm1.disks[0].path
    tn.remove_everything()
    tn.wipe_disks([one])
    tn.start(NODES[0], vm1)
    try:

        def counter() -> int:
            record = tn.read_disks([one])[0].record
            return record.counter if record else 0

        wait_for(lambda: counter() > 0, BOOT_WAIT_S, 0.5, "vm-1 to write one.qcow2")
        c0, t0 = counter(), time.monotonic()
        time.sleep(window_s)
        c1, t1 = counter(), time.monotonic()
        return (c1 - c0) / (t1 - t0)
    finally:
        tn.remove_everything()
        tn.wipe_disks([one])


def suite_seconds(writers: bool) -> float:
    argv = [sys.executable, "-m", "pytest", *SUITE, *([] if writers else ["--no-writers"])]
    started = time.monotonic()
    out = subprocess.run(argv, cwd=ROOT, timeout=SUITE_TIMEOUT_S, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the table rows failed (rc {out.returncode}) with writers={writers}")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--window-s", type=float, default=10.0)
    args = parser.parse_args()
    lab = Lab()
    tn = TwoNode.connect({n: lab.node(n) for n in NODES})
    try:
        loops = write_rate(tn, str(lab.settings["mount_point"]), args.window_s)
    finally:
        tn.close()
    print(
        f"writer guest vm-1 on node-a (nested TCG): {loops:.0f} loops/s, "
        f"{loops * LOOP_IOS:.0f} I/Os/s",
        flush=True,
    )
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for writers in (True, False):
            times[writers].append(suite_seconds(writers))
            print(f"table rows, writers={writers}: {times[writers][-1]:.0f} s", flush=True)
    with_w, without = statistics.median(times[True]), statistics.median(times[False])
    ratio = with_w / without
    verdict = "met" if ratio <= RATIO_TARGET else "MISSED"
    print(
        f"table rows: {with_w:.0f} s with writer guests, {without:.0f} s without; "
        f"ratio {ratio:.3f} (target <= {RATIO_TARGET}: {verdict})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
