"""What do scenarios cost? Replay against the pytest suite on the same steps, and campaign
throughput, side by side in one run (the lab must be up).

1. Replay overhead: the lifecycle scenario FILE runs ROUNDS times inside the pytest suite
   (tests/blackbox/cluster/test_lifecycle.py, the one test that loads that file) and ROUNDS
   times as `python -m lab.scenario replay FILE`, alternating. Both run the same steps
   through the same runner; replay adds its reset (every node whole, no domain, no lock,
   disks wiped) and the journal audit after every step, the suite its fixtures (cleanup,
   journals once per test). Printed: the median wall time of each and their ratio.
2. Campaign throughput: `python -m lab.scenario campaign --seed SEED --steps STEPS` under
   dlm: steps per minute and faults per minute, from its own progress lines.
3. A found scenario's replay: the time `make replay` of a file from scenarios/found/ takes
   on a running lab (add the cold `make lab` time for "from a fresh lab").

    python bench/scenario_bench.py [--rounds 1] [--seed 3] [--steps 20] [--found FILE]

Target (issue 14): replay adds at most 10% to the suite's time for the same steps
(ratio <= 1.10).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
RATIO_TARGET = 1.10
TIMEOUT_S = 3600
DEFAULT_FILE = "scenarios/lifecycle/migrate-back-and-forth.yaml"


def timed(argv: list[str]) -> tuple[float, str]:
    """Wall seconds of a command run from the tree's root, and its output; it must pass."""
    started = time.monotonic()
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}")
    return seconds, done.stdout


def suite_argv(file: str) -> list[str]:
    test_id = os.path.splitext(os.path.basename(file))[0]
    return [
        PY,
        "-m",
        "pytest",
        f"tests/blackbox/cluster/test_lifecycle.py::test_lifecycle[{test_id}]",
        "-q",
        "-p",
        "no:cacheprovider",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", default=DEFAULT_FILE)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--found", help="a found scenario to time its replay")
    args = parser.parse_args()

    suite, replay = [], []
    for i in range(args.rounds):
        s, _ = timed(suite_argv(args.file))
        r, _ = timed([PY, "-m", "lab.scenario", "replay", args.file])
        suite.append(s)
        replay.append(r)
        print(f"round {i + 1}: suite {s:.1f} s, replay {r:.1f} s")
    ms, mr = statistics.median(suite), statistics.median(replay)
    ratio = mr / ms
    verdict = "meets" if ratio <= RATIO_TARGET else "MISSES"
    print(
        f"replay vs suite on {args.file}: {mr:.1f} s vs {ms:.1f} s, ratio {ratio:.2f} "
        f"({verdict} the target <= {RATIO_TARGET:.2f})"
    )

    seconds, out = timed(
        [PY, "-m", "lab.scenario", "campaign", "--seed", str(args.seed), "--steps", str(args.steps)]
    )
    last = [line for line in out.splitlines() if "steps/min" in line]
    rate = re.search(r"([\d.]+) steps/min, ([\d.]+) faults/min", last[-1]) if last else None
    if rate:
        print(
            f"campaign seed {args.seed}, {args.steps} items under dlm: {seconds:.0f} s, "
            f"{rate.group(1)} steps/min, {rate.group(2)} faults/min"
        )
    if args.found:
        seconds, _ = timed([PY, "-m", "lab.scenario", "replay", args.found])
        print(f"replay of {args.found} on a running lab: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
