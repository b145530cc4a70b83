"""What the node-loss cases and the scenario faults share (node failure, lock failure,
partitions, a scenario's power-off/cut): the lab's health, powering a node on after its
fence, the survivor's view of the DLM, and the audits while a node may vanish.
"""

from __future__ import annotations

from typing import Any

from ..cluster import Lab
from ..host.objects import HostObjects, PowerWatch
from ..nodes import node_id
from ..nodes.health import node_checks, parse_lockspace, parse_quorum
from ..nodes.node import Node
from ..settings import lab_prefix
from ..wait import LabError, wait_for
from .audit import AuditFailure
from .steps import TwoNode

LOCKSPACE = "libvirt"  # lockspace_name in the nodes' qemu-dlm.conf
HEAL_DEADLINE_S = 600.0
FENCE_WAIT_S = 180.0
# What dlm_controld logs at err priority while a node powered on again rejoins, as corosync
# settles: it retries its cpg messages ("29 cpg_mcast_joined retry 100 protocol").
REJOIN_LOG = ("cpg_mcast_joined retry",)
# What the nodes log when a node is lost and fenced (not an error of the lock manager):
# corosync and dlm_controld at err priority, the kernel's dlm recovery, fence lines.
NODE_LOSS_LOG = (
    "corosync",
    "dlm_controld",
    "fence",
    "dlm:",
    "libvirt:",
    "knet",
    "TOTEM",
    "QUORUM",
    "virtdlmd",
    # libvirtd, when dlm.so refuses a start in QEMU's pre-exec child while the DLM waits
    # for the fence (virtdlmd's LOCKSPACE_UNAVAILABLE): the child exits during the handshake
    "Child quit during startup handshake",
    *REJOIN_LOG,
)
AUDIT_CALL_TIMEOUT_S = 5.0  # one libvirt call of an audit (it answers in milliseconds)
WATCH_SETTLE_S = 2.0  # for the power watch to see a node that stopped answering go off


def survivor_view(node: Node, since: float) -> dict[str, Any]:
    """corosync members, the lockspace's members and flags, and dlm_controld's fence lines
    since `since` (epoch seconds), as the survivor sees them. A lockspace recovered without
    the other node has members [own id] and flags 0."""
    text = node.run(
        "corosync-quorumtool -s; dlm_tool ls; echo '--- fence'; "
        f"journalctl -q --no-pager -o cat -u dlm --since @{since:.0f} | grep -i fence",
        timeout_s=15,
    ).stdout
    head, _, fence = text.partition("--- fence")
    _quorate, members = parse_quorum(head)
    ls_members, flags = parse_lockspace(head, LOCKSPACE) or ([], -1)
    return {"members": members, "ls_members": ls_members, "flags": flags, "fence": fence}


def node_running(host: HostObjects, name: str) -> bool:
    return host.is_running(lab_prefix() + name)


def audit(tn: TwoNode, watch: PowerWatch, fenced: str, after: str) -> None:
    """The suite's invariant while node `fenced` may be powered off by a fence. A node the
    watch saw go off is skipped; one that goes off while the audit asks it would never
    answer, so each libvirt call gets AUDIT_CALL_TIMEOUT_S, and the audit is asked again
    without that node once the watch sees it off."""
    if watch.off:
        tn.down.add(fenced)
    try:
        tn.invariant(after=after, call_timeout_s=AUDIT_CALL_TIMEOUT_S)
    except AuditFailure:
        raise
    except LabError as err:
        if fenced in tn.down:
            raise
        try:  # a call that timed out on a node being fenced: the watch sees it off
            wait_for(lambda: watch.off, WATCH_SETTLE_S, watch.interval_s, f"{fenced} off")
        except LabError:
            raise err from None
        tn.down.add(fenced)
        tn.invariant(after=after, call_timeout_s=AUDIT_CALL_TIMEOUT_S)


def unhealthy(nodes: dict[str, Node], settings: dict[str, object]) -> list[str]:
    """The health checks that fail, as "node: check: detail"."""
    try:
        checks = [c for n in nodes.values() for c in node_checks(n, dict(settings))]
    except LabError as err:
        return [str(err).splitlines()[0]]
    return [f"{c.node}: {c.name}: {c.detail}" for c in checks if not c.ok]


def wait_healthy(tn: TwoNode, settings: dict[str, object], what: str) -> None:
    """Until every health check passes; the failing checks are in the error at the deadline."""
    bad: list[str] = []

    def ok() -> bool:
        bad[:] = unhealthy(tn.nodes, settings)
        return not bad

    try:
        wait_for(ok, HEAL_DEADLINE_S, 5, what)
    except LabError as err:
        raise LabError(f"{err}; failing: {'; '.join(bad)}") from err


def healthy(nodes: dict[str, Node], settings: dict[str, object]) -> bool:
    return not unhealthy(nodes, settings)


def wait_fenced(tn: TwoNode, victim: str, survivor: str, since: float) -> None:
    """Until `victim` is off and `survivor`'s DLM has recovered without it (its fence done).
    Powering a node on before its fence completes would let the fence power off the new
    boot. A fence that never comes (fencing broken) is done here, by the lab, after a while."""
    # The survivor's lockspace, recovered: every node that is neither lost nor the victim.
    own = sorted(node_id(n) for n in tn.nodes if n != victim and n not in tn.down)

    def done() -> bool:
        with HostObjects() as host:
            off = not node_running(host, victim)
        view = survivor_view(tn.nodes[survivor], since)
        return off and view["ls_members"] == own and view["flags"] == 0

    try:
        wait_for(done, FENCE_WAIT_S, 2.0, f"{survivor} to fence {victim} and recover")
    except LabError:
        with HostObjects() as host:
            if node_running(host, victim):
                host.power_off(lab_prefix() + victim)
    tn.down.add(victim)


def power_on(lab: Lab, tn: TwoNode, name: str) -> None:
    """Power a fenced node on (as a cluster's operator would) and wait for the lab's health."""
    with HostObjects() as host:
        if not node_running(host, name):
            try:
                host.power_on(lab_prefix() + name)
            except LabError:  # e.g. a fence's late power-off: once it is off, once more
                wait_for(lambda: not node_running(host, name), FENCE_WAIT_S, 1.0, f"{name} off")
                host.power_on(lab_prefix() + name)
    tn.nodes[name].close()
    wait_healthy(tn, lab.settings, "the lab to heal")
    tn.rebooted(name)
