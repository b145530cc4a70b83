"""The N-node ring scenarios are valid files for every lab size the settings allow."""

from __future__ import annotations

from lab.nodes import NODE_NAMES
from lab.scenario.ring import first_hop_without_locks, ring


def test_ring_scenario_is_valid_for_every_lab_size() -> None:
    for count in range(2, len(NODE_NAMES) + 1):
        names = NODE_NAMES[:count]
        scenario = ring(names)
        refused = [s for s in scenario.flat() if s.expect == "lock-manager"]
        assert len(refused) == (count - 1) * (count + 1), scenario.source
        assert scenario.nodes == names
        control = first_hop_without_locks(names)
        assert control.lab.lock_manager == "nop" and control.nodes == names
