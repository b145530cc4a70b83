"""python -m lab.scenario: replay, check, convert, record and search with scenario files.

    replay FILE [--out DIR]        run a scenario on the lab (brought up if it is not)
    validate FILE...               check files without a lab
    check HISTORY                  run the audits again on a stored history
    from-history HISTORY           print the scenario a history ran, expecting what it saw
    record --out FILE              write what people do with virsh on the nodes as a scenario
    campaign --seed N --steps M    a seeded random fault campaign; shrinks what it finds

Exit status: 0 every expectation and audit held; 1 one did not (the first failing step and
audit are printed last); 2 an invalid file, or a lab that cannot be made ready.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..settings import LAB_DIR
from ..wait import LabError
from . import history
from .schema import Scenario, ScenarioError, dump, load

if TYPE_CHECKING:
    from ..cluster import Lab
    from ..suite.steps import TwoNode
    from .run import Result

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
REPLAY_DIR = os.path.join(LAB_DIR, "reports", "replay")
CAMPAIGN_DIR = os.path.join(LAB_DIR, "reports", "campaign")


def say(line: str) -> None:
    print(line, flush=True)  # noqa: T201 (this program's output is its progress)


def artifact_dir(base: str, name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "scenario"
    path = os.path.join(base, f"{safe}-{stamp}")
    os.makedirs(path, exist_ok=True)
    return path


class Session:
    """The lab and its connections, for the replays of one command."""

    def __init__(
        self, writers: bool = True, lab: Lab | None = None, tn: TwoNode | None = None
    ) -> None:
        """The lab (brought up if it is not) and connections to its nodes; a caller that
        has them (the suite) passes its own."""
        from ..cluster import NODES, Lab
        from ..nodes import WRITER_BOOT_IMAGE
        from ..suite.steps import TwoNode

        self.lab = lab or Lab()
        if not self.lab.is_up():
            say("the lab is not up: bringing it up (make lab)")
            self.lab.up()
        self.own = tn is None
        self.tn = tn or TwoNode.connect({n: self.lab.nodes.node(n) for n in NODES})
        if self.own:
            self.tn.writer_boot = WRITER_BOOT_IMAGE if writers else ""

    def replay(
        self,
        scenario: Scenario,
        out_dir: str,
        quiet: bool = False,
        restore: bool = True,
        on_item: Callable[[list[Any], dict[str, Any]], None] | None = None,
    ) -> tuple[Result, str]:
        """Prepare the lab, run the scenario; its result and history's path."""
        from .run import Runner

        log: Callable[[str], None] = (lambda _line: None) if quiet else say
        path = os.path.join(out_dir, "history.jsonl")
        with open(os.path.join(out_dir, "scenario.yaml"), "w", encoding="utf-8") as f:
            f.write(dump(scenario, f"replayed from {scenario.source}"))
        with open(path, "w", encoding="utf-8") as hist:
            runner = Runner(self.tn, self.lab, scenario, hist, log, on_item=on_item)
            nodes, manager = ", ".join(scenario.nodes), scenario.lab.lock_manager
            log(f"reset: {nodes} clean, lock manager {manager}")
            runner.prepare()
            try:
                result = runner.run()
            finally:
                if restore:
                    self.restore()
        return result, path

    def restore(self) -> None:
        """Leave the lab as `make lab` set it: nothing running, its own lock manager."""
        self.tn.remove_everything()
        self.tn.set_lock_manager(str(self.lab.settings["lock_manager"]))

    def close(self) -> None:
        if self.own:
            self.tn.close()


def cmd_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        try:
            s = load(path)
            say(f"{path}: ok ({len(s.vms)} VMs, {len(list(s.flat()))} steps)")
        except ScenarioError as err:
            say(f"invalid scenario: {err}")
            status = EXIT_INVALID
    return status


def cmd_replay(args: argparse.Namespace) -> int:
    scenario = load(args.file)
    out = args.out or artifact_dir(REPLAY_DIR, os.path.splitext(os.path.basename(args.file))[0])
    say(f"replay {args.file}: {len(list(scenario.flat()))} steps; history in {out}")
    session = Session(writers=not args.no_writers)
    try:
        result, path = session.replay(scenario, out)
    finally:
        session.close()
    say(f"history: {path}")
    if result.ok:
        say(f"passed: every expectation and audit held ({args.file})")
        return EXIT_OK
    say(f"FAILED: {result.failure}")
    return EXIT_FAILED


def cmd_campaign(args: argparse.Namespace) -> int:
    from .campaign import Campaign

    say(f"seed: {args.seed} (steps {args.steps}, lock manager {args.lock_manager})")
    out = artifact_dir(CAMPAIGN_DIR, f"{args.lock_manager}-seed-{args.seed}")
    session = Session(writers=not args.no_writers)
    campaign = Campaign(
        session,
        args.seed,
        args.steps,
        args.lock_manager,
        out,
        say,
        heavy=args.heavy,
        budget_s=args.budget,
        found_dir=args.found_dir,
    )
    try:
        finding = campaign.run()
        if finding is None:
            say(f"all audits held: {args.steps} steps, seed {args.seed}; run in {out}")
            return EXIT_OK
        say(f"FAILED: {finding.failure}")
        say(f"shrinking {len(finding.scenario.steps)} items (budget {args.budget:.0f} s)")
        smallest, history_path = campaign.shrink(finding)
        path = campaign.write_found(smallest, history_path, finding.failure)
    finally:
        with contextlib.suppress(LabError):
            campaign.finish()
        session.close()
    say(f"found: {path}")
    return EXIT_FAILED


def cmd_record(args: argparse.Namespace) -> int:
    from ..cluster import NODES, Lab
    from ..suite.steps import libvirt_uri
    from .record import record

    lab = Lab()
    if not lab.is_up():
        say("the lab is not up: run make lab first")
        return EXIT_INVALID
    uris = {n: libvirt_uri(lab.nodes.node(n).ssh.host) for n in NODES}
    try:
        record(args.out, uris, str(lab.settings["mount_point"]), wait_after_s=args.waits)
    except LabError as err:
        say(f"cannot record: {err}")
        return EXIT_INVALID
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    bad = history.check(args.history)
    for index, verdicts in bad:
        for v in verdicts:
            say(f"step {index}: {v.describe()}")
    if bad:
        return EXIT_FAILED
    say(f"{args.history}: every audit holds")
    return EXIT_OK


def cmd_from_history(args: argparse.Namespace) -> int:
    scenario = history.to_scenario(args.history)
    sys.stdout.write(
        dump(scenario, f"from the history {args.history}: each step expects what it saw")
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.scenario", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("replay", help="run a scenario file on the lab")
    p.add_argument("file")
    p.add_argument(
        "--out", help="where the history and report go (default .lab/reports/replay/...)"
    )
    p.add_argument("--no-writers", action="store_true", help="firmware-only domains")
    p.set_defaults(fn=cmd_replay)
    p = sub.add_parser("campaign", help="a seeded random fault campaign on the lab")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lock-manager", choices=("dlm", "nop"), default="dlm")
    p.add_argument(
        "--heavy", action="store_true", help="also power-off/on, cut/heal, stop virtdlmd"
    )
    p.add_argument("--budget", type=float, default=1200.0, help="seconds for shrinking")
    p.add_argument("--found-dir", default="scenarios/found")
    p.add_argument("--no-writers", action="store_true", help="firmware-only domains")
    p.set_defaults(fn=cmd_campaign)
    p = sub.add_parser("record", help="record what people do with virsh as a scenario")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--waits",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="write a pause longer than this between two steps as a wait step (default 0: none)",
    )
    p.set_defaults(fn=cmd_record)
    p = sub.add_parser("validate", help="check scenario files, no lab needed")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("check", help="run the audits again on a stored history")
    p.add_argument("history")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("from-history", help="print the scenario a history ran")
    p.add_argument("history")
    p.set_defaults(fn=cmd_from_history)
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except ScenarioError as err:
        say(f"invalid scenario: {err}")
        return EXIT_INVALID
    except LabError as err:  # outside any step: the lab itself failed us
        say(f"the lab cannot be made ready or failed under the run: {err}")
        return EXIT_INVALID
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
