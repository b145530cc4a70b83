"""Seeded fault campaigns: generate, run with every audit, and shrink what fails.

A campaign draws a random scenario from the weighted grammar of lab.scenario.generate,
deterministically from its seed (printed first), and runs it on the lab through the one
runner, every step audited, showing steps done, faults injected and the rate. The first
failed audit stops it (an audit that fails is the campaign's finding; a step's outcome is
never one: every generated step expects ``any``). The failing prefix is written out, then
shrunk by delta debugging (lab.scenario.shrink), each candidate replayed on the lab under a
time budget, until the smallest scenario that still fails the same audit is left; it goes
to scenarios/found/ with its history, and the last line printed is ``found: PATH``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import audits, generate, shrink
from .run import Outcome, Result
from .schema import ACTIONS, Scenario, Step, Together, dump

FOUND_DIR = "scenarios/found"
SHRINK_BUDGET_S = 1200.0


@dataclass
class Finding:
    scenario: Scenario  # the failing prefix
    audits: set[str]  # the audits that failed at its last step
    failure: str
    history: str


def faults(scenario: Scenario) -> int:
    return sum(1 for s in scenario.flat() if ACTIONS[s.do].fault)


class Replayer(Protocol):
    """What a campaign needs of the lab: lab.scenario.__main__.Session."""

    def replay(
        self,
        scenario: Scenario,
        out_dir: str,
        quiet: bool = False,
        restore: bool = True,
        on_item: Callable[[list[Outcome], dict[str, Any]], None] | None = None,
    ) -> tuple[Result, str]: ...

    def restore(self) -> None: ...


def failed_audits(record: dict[str, Any]) -> set[str]:
    verdicts = [audits.Verdict(**v) for v in record["audits"]]
    return {v.audit for v in audits.failed(verdicts)}


class Campaign:
    def __init__(
        self,
        session: Replayer,
        seed: int,
        steps: int,
        lock_manager: str,
        out_dir: str,
        say: Callable[[str], None],
        heavy: bool = False,
        budget_s: float = SHRINK_BUDGET_S,
        found_dir: str = FOUND_DIR,
    ) -> None:
        self.session = session
        self.seed, self.steps, self.lock_manager = seed, steps, lock_manager
        self.out_dir, self.say, self.heavy = out_dir, say, heavy
        self.budget_s, self.found_dir = budget_s, found_dir
        self.tries = 0
        self.histories: dict[str, str] = {}  # a failing candidate's file -> its history

    def scenario(self) -> Scenario:
        s = generate.generate(self.seed, self.steps, self.lock_manager, heavy=self.heavy)
        return Scenario(s.lab, s.vms, s.steps, f"campaign seed {self.seed}")

    def run(self) -> Finding | None:
        """Run the campaign; its finding (the failing prefix), or None when all held."""
        scenario = self.scenario()
        started = time.monotonic()
        done = {"steps": 0, "faults": 0}
        total = len(scenario.steps)

        def progress(outcomes: list[Outcome], record: dict[str, Any]) -> None:
            for o in outcomes:
                step = o.step
                done["steps"] += 1
                done["faults"] += ACTIONS[step.do].fault
            minutes = max(time.monotonic() - started, 1e-9) / 60
            steps, injected = done["steps"], done["faults"]
            self.say(
                f"[campaign {self.seed}] {record['index']}/{total} items, {steps} steps, "
                f"{injected} faults, {steps / minutes:.1f} steps/min, "
                f"{injected / minutes:.1f} faults/min"
            )

        result, history = self.session.replay(
            scenario, self.out_dir, restore=False, on_item=progress
        )
        minutes = (time.monotonic() - started) / 60
        self.say(
            f"[campaign {self.seed}] ran {done['steps']} steps ({done['faults']} faults) in "
            f"{minutes:.1f} min"
        )
        if result.ok:
            return None
        prefix = scenario.with_steps(scenario.steps[: len(result.records)])
        return Finding(prefix, failed_audits(result.records[-1]), result.failure, history)

    def fails(self, candidate: Scenario, wanted: set[str]) -> bool:
        """Replay a shrinking candidate; it fails when any audit it failed is one the
        finding failed (another failure is another bug, not this one)."""
        self.tries += 1
        where = os.path.join(self.out_dir, f"shrink-{self.tries:03d}")
        os.makedirs(where, exist_ok=True)
        result, history = self.session.replay(candidate, where, quiet=True, restore=False)
        got = failed_audits(result.records[-1]) if result.records and not result.ok else set()
        verdict = bool(got & wanted)
        if verdict:
            self.histories[dump(candidate)] = history
        self.say(
            f"[shrink] try {self.tries}: {len(candidate.steps)} items, "
            f"{len(candidate.vms)} VMs -> {'fails' if verdict else 'passes'}"
        )
        return verdict

    def shrink(self, finding: Finding) -> tuple[Scenario, str]:
        """The smallest scenario that still fails the finding's audits, and the history of
        the replay that saw it fail."""
        smallest = shrink.shrink(
            finding.scenario, lambda c: self.fails(c, finding.audits), self.budget_s
        )
        return smallest, self.histories.get(dump(smallest), finding.history)

    def finish(self) -> None:
        """Leave the lab as `make lab` set it (the replays above did not, to save a libvirtd
        restart per candidate)."""
        self.session.restore()

    def write_found(self, scenario: Scenario, history: str, failure: str) -> str:
        os.makedirs(self.found_dir, exist_ok=True)
        stem = f"{self.lock_manager}-seed-{self.seed}"
        path = os.path.join(self.found_dir, f"{stem}.yaml")
        header = (
            f"found by: make campaign SEED={self.seed} STEPS={self.steps} "
            f"LOCK_MANAGER={self.lock_manager}\n"
            f"shrunk to {len(list(scenario.flat()))} steps; its history: {stem}.history.jsonl\n"
            f"failed: {failure}"
        )
        with open(path, "w", encoding="utf-8") as f:
            f.write(dump(scenario, header))
        shutil.copyfile(history, os.path.join(self.found_dir, f"{stem}.history.jsonl"))
        return path


def flat_count(items: tuple[Step | Together, ...]) -> int:
    return sum(len(i.steps) if isinstance(i, Together) else 1 for i in items)
