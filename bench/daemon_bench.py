"""virtdlmd round-trip benchmark: does a lock decision stay flat as the host holds more locks?

Three daemons (model backend, in-process) are filled with 10, 1,000 and 10,000 locks held by
other owners; then one owner with 8 disks does acquire+release round trips against each, in
interleaved rounds so that all three are measured side by side under the same conditions.
Prints p50/p99 per case and the ratio of the 10,000 case to the 10 case.

    python bench/daemon_bench.py [--rounds 20] [--per-round 50]

Targets (issue: virtdlmd): p99 < 2 ms per round trip; p99(10,000) / p99(10) < 1.5.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "plugin"), ROOT]

from lab.wait import wait_for  # noqa: E402
from virtdlm.client import Client  # noqa: E402
from virtdlm.protocol import DiskSpec, OwnerSpec  # noqa: E402

CASES = (10, 1_000, 10_000)
DISKS_PER_OWNER = 8
FILL_BATCH = 8
START_TIMEOUT_S = 30.0
P99_TARGET_MS = 2.0
RATIO_TARGET = 1.5


def start_daemon(directory: str, name: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = os.path.join(directory, f"{name}.sock")
    conf = os.path.join(directory, f"{name}.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(
            f'backend = "model"\nsocket_path = "{sock}"\n'
            f'state_dir = "{os.path.join(directory, name)}"\n'
        )
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "plugin"))
    with open(os.path.join(directory, f"{name}.log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "virtdlm.daemon", "--config", conf, "--log-level", "WARNING"],
            env=env,
            stderr=log,
        )
    wait_for(lambda: os.path.exists(sock), START_TIMEOUT_S, what=f"{sock}")
    return proc, sock


def owner(pid: int, name: str) -> OwnerSpec:
    return OwnerSpec(uuid=str(uuid.uuid4()), name=name, id=1, pid=pid)


def disks(paths: list[str]) -> list[DiskSpec]:
    return [DiskSpec(path=p, readonly=False, shared=False) for p in paths]


def fill(client: Client, count: int, pid: int, tag: str) -> None:
    """Make `count` locks held by other owners (8 disks each), all alive (pid = a sleeper)."""
    for first in range(0, count, FILL_BATCH):
        n = min(FILL_BATCH, count - first)
        paths = [f"/bench/{tag}/other-{first + i}.img" for i in range(n)]
        client.acquire(owner(pid, f"filler-{first}"), disks(paths))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=50)
    args = parser.parse_args()
    # tmpfs, like the default state_dir under /run on a real host.
    directory = tempfile.mkdtemp(prefix="vdl-bench-", dir="/dev/shm")
    sleeper = subprocess.Popen(["sleep", "3600"])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        images = []
        for i in range(DISKS_PER_OWNER):
            path = os.path.join(directory, f"disk{i}.qcow2")
            open(path, "wb").close()
            images.append(path)
        clients: dict[int, Client] = {}
        for count in CASES:
            proc, sock = start_daemon(directory, f"d{count}")
            procs.append(proc)
            clients[count] = Client(sock)
            started = time.monotonic()
            fill(clients[count], count, sleeper.pid, f"c{count}")
            held = clients[count].status()["locks"]
            print(f"filled daemon with {held} locks in {time.monotonic() - started:.1f} s")
        me, mine = owner(sleeper.pid, "bench-vm"), disks(images)
        samples: dict[int, list[float]] = {c: [] for c in CASES}
        for _ in range(args.rounds):
            for count in CASES:
                client = clients[count]
                for _ in range(args.per_round):
                    t0 = time.perf_counter()
                    client.acquire(me, mine)
                    client.release(me, mine)
                    samples[count].append((time.perf_counter() - t0) * 1000)
        print(
            f"\nacquire+release of {DISKS_PER_OWNER} disks, "
            f"{args.rounds} interleaved rounds x {args.per_round} round trips per case"
        )
        print(f"{'locks held':>10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        for count in CASES:
            s = samples[count]
            print(
                f"{count:>10} {percentile(s, 0.5):8.3f} {percentile(s, 0.99):8.3f} "
                f"{statistics.fmean(s):8.3f}"
            )
        p99 = {c: percentile(samples[c], 0.99) for c in CASES}
        p50 = {c: percentile(samples[c], 0.5) for c in CASES}
        ratio99, ratio50 = p99[10_000] / p99[10], p50[10_000] / p50[10]
        worst = max(p99.values())
        print(
            f"\nratio 10,000 / 10: p50 {ratio50:.2f}, p99 {ratio99:.2f} (target < {RATIO_TARGET})"
        )
        print(f"worst p99 {worst:.3f} ms (target < {P99_TARGET_MS} ms)")
        ok = worst < P99_TARGET_MS and ratio99 < RATIO_TARGET
        print("RESULT:", "targets met" if ok else "targets MISSED")
        for client in clients.values():
            client.close()
        return 0 if ok else 1
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(START_TIMEOUT_S)
        sleeper.kill()
        sleeper.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
