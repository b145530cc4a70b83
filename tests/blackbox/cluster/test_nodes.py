"""Every node of the lab, whatever its size (lab/settings.yaml `nodes`): the lock follows vm-1
around the ring of nodes, a -> b (-> c ...) -> a, and after each move a conflicting start
on every other node is refused by the lock manager naming vm-1 where it now runs.

The scenario is made for the lab's node count and run through the one runner, so each
step's audits hold on every node (no double writer by /proc, libvirt or the writer data;
locks agree with the domains); its file and history are under the test's report directory,
replayable with `make replay`. The control runs the ring's first hop under "nop" on every
node: vm-2's start on a node vm-1 is not on must then make a second writer, seen by the
audits.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.cluster import NODES, Lab
from lab.scenario.ring import BUSY, first_hop_without_locks, ring
from lab.suite.audit import AuditFailure
from lab.suite.steps import TwoNode
from lab.virt.refusal import LOCK_MANAGER, log_signs

from .conftest import CASE_TIMEOUT_S, Play
from .test_control_nop import expect_double_writer, lock_manager_meanwhile

pytestmark = pytest.mark.timeout(CASE_TIMEOUT_S * len(NODES))


# The refusals leave dlm.so's "resource busy:" in libvirtd's journal on each refusing node.
@pytest.mark.allow_log(*log_signs(LOCK_MANAGER))
def test_the_lock_follows_vm1_around_every_node_and_every_other_node_is_refused(
    play: Play,
) -> None:
    scenario = ring(NODES)
    result, _runner = play(scenario)
    assert result.ok, result.failure
    refusals = [o for o in result.outcomes if o.step.expect == "lock-manager"]
    assert len(refusals) == (len(NODES) - 1) * (len(NODES) + 1)
    for o in refusals:
        assert o.outcome == "lock-manager" and o.code == BUSY, o.describe()


@pytest.fixture
def nop_everywhere(lab: Lab, tn: TwoNode) -> Iterator[None]:
    with lock_manager_meanwhile(lab, tn, "nop"):
        yield


@pytest.mark.xfail(
    strict=True,
    raises=AuditFailure,
    reason="control: with lock_manager = nop on every node a second writer starts",
)
def test_control_without_a_lock_manager_a_second_writer_starts_on_another_node(
    tn: TwoNode, play: Play, nop_everywhere: None
) -> None:
    scenario = first_hop_without_locks(NODES)
    result, _runner = play(scenario)
    expect_double_writer(tn, scenario, result)
