"""The two-node matrix, loaded from its scenario files: table 5-1 of the thesis on node-a,
table 5-2 across the nodes, and 5-2 again on a block device (scenarios/tables/*.yaml, one
file a row, each replayable alone with `make replay`), with what the report says beside each
row (scenarios/tables.yaml: its table, case, the thesis's 2018 expectation, why today's
differs, and whether only the lock manager protects it).

A row's scenario ends with its probe: the step whose outcome is the row; the steps before it
are its setup, which must succeed. The control run (test_control_nop.py) runs the protection
rows' files under scenarios/control/, the same steps with lock_manager nop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from lab.scenario.schema import Scenario, Step, load
from lab.virt.refusal import log_signs

SCENARIOS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "scenarios")
ROWS_FILE = os.path.join(SCENARIOS, "tables.yaml")


@dataclass(frozen=True)
class Case:
    table: str
    case: str
    file: str  # the row's scenario, under scenarios/tables/
    thesis: str = ""  # the thesis's expectation, where it has one
    why: str = ""  # why today's expectation differs from the thesis's, or what it shows
    protection: bool = False  # a row the lock manager alone protects: the control run's rows

    @property
    def id(self) -> str:
        return os.path.splitext(self.file)[0]

    def scenario(self, kind: str = "tables") -> Scenario:
        return load(os.path.normpath(os.path.join(SCENARIOS, kind, self.file)))

    @property
    def storage(self) -> str:
        return self.scenario().lab.storage

    @property
    def setup(self) -> tuple[Step, ...]:
        return tuple(self.scenario().flat())[:-1]

    @property
    def probe(self) -> Step:
        last = self.scenario().steps[-1]
        assert isinstance(last, Step), f"{self.file}: a row's probe is a single step"
        return last

    @property
    def allow_log(self) -> tuple[str, ...]:
        """What the probe's expected refusal leaves in the nodes' journals."""
        return log_signs(self.probe.expect)


def load_rows(path: str = ROWS_FILE) -> list[Case]:
    with open(path, encoding="utf-8") as f:
        return [Case(**row) for row in yaml.safe_load(f)]


ROWS = load_rows()
TABLE_5_1 = [c for c in ROWS if c.table.startswith("5-1")]
TABLE_5_2 = [c for c in ROWS if c.table.startswith("5-2")]
PROTECTION_ROWS = [c for c in ROWS if c.protection]
