"""What the node-loss cases share besides lab.suite.node_loss: timelines and the timed heal
in the report.
"""

from __future__ import annotations

import time

from lab.cluster import NODES, Lab
from lab.nodes.health import smoke_migration
from lab.suite.node_loss import (  # noqa: F401 (the cases import them from here too)
    AUDIT_CALL_TIMEOUT_S,
    FENCE_WAIT_S,
    HEAL_DEADLINE_S,
    LOCKSPACE,
    NODE_LOSS_LOG,
    REJOIN_LOG,
    WATCH_SETTLE_S,
    audit,
    healthy,
    node_running,
    power_on,
    survivor_view,
    unhealthy,
    wait_fenced,
    wait_healthy,
)
from lab.suite.steps import OK, StepResult, TwoNode
from lab.virt.refusal import NONE

from .conftest import Record


def report_timeline(
    record: Record, table: str, node: str, seen: dict[str, float], names: tuple[str, ...], note: str
) -> None:
    """One report row per moment of a timeline; a moment never seen is a row with "none"."""
    for what in names:
        outcome = OK if what in seen else NONE
        result = StepResult(node, "watch", "", outcome, None, seen.get(what, 0.0))
        record(table, f"timeline: {what}", result, OK, note=note)


def heal_and_record(lab: Lab, tn: TwoNode, record: Record, table: str, node: str) -> None:
    """Power `node` on, wait for the lab's health, then a live migration a -> b: the heal,
    timed, in the report."""
    healing = time.monotonic()
    power_on(lab, tn, node)
    smoke = smoke_migration({n: tn.nodes[n] for n in NODES}, dict(lab.settings))
    healed = StepResult(
        node,
        "power on, rejoin",
        "",
        OK if smoke.ok else "other",
        None,
        time.monotonic() - healing,
        smoke.detail,
    )
    record(
        table,
        f"{node} back: powered on by the lab, rejoins, migration a -> b",
        healed,
        OK,
        note="seconds: power-on to every health check green and a live migration a -> b",
    )
    assert smoke.ok, smoke.detail
