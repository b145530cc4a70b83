"""What does a node cost? The lab of 2 and of 3 nodes side by side, in one run.

For each node count N (default 2, then 3), from no lab at all (the box cached, as after a
first `make lab`):

1. `make lab` time: `python -m lab.cluster up` with VIRTDLM_LAB_NODES=N, wall seconds.
2. The suite's time: the cases that run on every lab size (tests/blackbox/cluster/
   test_nodes.py: the ring of migrations through every node with a refusal on every other,
   and its nop control), wall seconds.
3. Memory per node, after the suite: the node's QEMU on the host (resident set, from
   libvirt's memory stats) and what the node itself uses (MemTotal - MemAvailable), the
   largest of the nodes; and the host's memory in use by all of them together.

Printed as a table with the ratio N=3 / N=2 of each figure. Every lab is destroyed before
it is measured (so run it only where no other lab is wanted); the last one is left up.

    python bench/lab_cost.py [--nodes 2,3] [--suite tests/blackbox/cluster/test_nodes.py]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import libvirt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lab.cluster import Lab  # noqa: E402
from lab.host.libvirtd import HOST_URI  # noqa: E402
from lab.nodes import NODE_NAMES  # noqa: E402
from lab.settings import lab_prefix  # noqa: E402

PY = sys.executable
UP_TIMEOUT_S = 1800
SUITE_TIMEOUT_S = 3600
DEFAULT_SUITE = "tests/blackbox/cluster/test_nodes.py"
MIB = 1024
NODE_TIMEOUT_S = 60.0
MEMINFO = "awk '/^MemTotal|^MemAvailable/ {print $2}' /proc/meminfo"


def run(argv: list[str], nodes: int, timeout_s: float) -> float:
    """Wall seconds of a command with VIRTDLM_LAB_NODES=nodes; its output goes through."""
    env = {**os.environ, "VIRTDLM_LAB_NODES": str(nodes)}
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=env, timeout=timeout_s, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} (nodes {nodes}) exited {done.returncode}")
    return seconds


def node_memory(nodes: int) -> tuple[float, float]:
    """(largest QEMU resident set of a node on the host, largest memory in use inside a
    node), MiB."""
    prefix = lab_prefix()
    names = NODE_NAMES[:nodes]
    conn = libvirt.open(HOST_URI)
    try:
        rss = [conn.lookupByName(prefix + n).memoryStats().get("rss", 0) / MIB for n in names]
    finally:
        conn.close()
    used = []
    lab = Lab()  # the lab's own node sessions: every command has a deadline
    try:
        for name in names:
            out = lab.node(name).check(MEMINFO, timeout_s=NODE_TIMEOUT_S).stdout.split()
            used.append((int(out[0]) - int(out[1])) / MIB)
    finally:
        lab.nodes.close()
    return max(rss), max(used)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="2,3", help="node counts, in order (default 2,3)")
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    rows: dict[int, dict[str, float]] = {}
    for n in counts:
        print(f"== {n} nodes: destroy, make lab, {args.suite}", flush=True)
        run([PY, "-m", "lab.cluster", "destroy"], n, UP_TIMEOUT_S)
        up = run([PY, "-m", "lab.cluster", "up"], n, UP_TIMEOUT_S)
        suite = run(
            [PY, "-m", "pytest", args.suite, "-q", "-p", "no:cacheprovider"], n, SUITE_TIMEOUT_S
        )
        rss, used = node_memory(n)
        rows[n] = {
            "make lab (s)": up,
            "suite (s)": suite,
            "QEMU RSS per node (MiB)": rss,
            "used in a node (MiB)": used,
            "all nodes' RSS (MiB)": rss * n,
        }
        print(f"   {n} nodes: " + ", ".join(f"{k} {v:.0f}" for k, v in rows[n].items()), flush=True)
    first, last = counts[0], counts[-1]
    print(f"\n{'figure':<28}" + "".join(f"{f'N={n}':>10}" for n in counts) + f"{'ratio':>10}")
    for key in rows[first]:
        ratio = rows[last][key] / rows[first][key] if rows[first][key] else float("nan")
        print(f"{key:<28}" + "".join(f"{rows[n][key]:>10.0f}" for n in counts) + f"{ratio:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
