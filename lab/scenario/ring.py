"""Scenarios made for the lab's node count (tests/blackbox/cluster/test_nodes.py): the ring
of live migrations through every node with a refusal on every other node, and its control.
"""

from __future__ import annotations

from .schema import Scenario, loads

BUSY = 87  # libvirt's VIR_ERR_RESOURCE_BUSY: the lock manager's refusal


def ring(nodes: tuple[str, ...], manager: str = "dlm") -> Scenario:
    """vm-1 (one.qcow2 rw, share.raw shareable) starts on the first node and migrates around
    the ring back to it; vm-2 wants one.qcow2 on every node vm-1 is not on (refused), and
    vm-4 shares share.raw on the last node (granted beside vm-1's shared lock)."""
    lines = [
        "version: 1",
        f"lab: {{storage: nfs, lock_manager: {manager}, nodes: {len(nodes)}}}",
        "vms:",
        "  vm-1: {disks: [{disk: one, mode: rw}, {disk: share, mode: shareable}]}",
        "  vm-2: {disks: [{disk: one, mode: rw}]}",
        "  vm-4: {disks: [{disk: share, mode: shareable}]}",
        "steps:",
        f"  - {{on: {nodes[0]}, do: start, vm: vm-1}}",
    ]

    def refusals(at: str) -> None:
        for other in nodes:
            if other != at:
                lines.append(
                    f"  - {{on: {other}, do: start, vm: vm-2, expect: lock-manager, "
                    f"code: {BUSY}, holder: vm-1@{at}}}"
                )

    refusals(nodes[0])
    lines.append(f"  - {{on: {nodes[-1]}, do: start, vm: vm-4}}")
    lines.append(f"  - {{on: {nodes[-1]}, do: destroy, vm: vm-4}}")
    hops = list(zip(nodes, (*nodes[1:], nodes[0]), strict=True))
    for here, there in hops:
        lines.append(f"  - {{on: {here}, do: migrate, vm: vm-1, to: {there}}}")
        refusals(there)
    return loads("\n".join(lines) + "\n", f"<ring of {len(nodes)} nodes>")


def first_hop_without_locks(nodes: tuple[str, ...]) -> Scenario:
    """The control: vm-1 on the first node, moved to the second; vm-2 then starts on a node
    vm-1 is not on (the third, or with two nodes the first) and writes one.qcow2 beside it:
    nothing guards it across nodes under nop (on vm-1's own node QEMU's image lock would)."""
    other = nodes[2] if len(nodes) > 2 else nodes[0]
    text = f"""\
version: 1
lab: {{storage: nfs, lock_manager: nop, nodes: {len(nodes)}}}
vms:
  vm-1: {{disks: [{{disk: one, mode: rw}}, {{disk: share, mode: shareable}}]}}
  vm-2: {{disks: [{{disk: one, mode: rw}}]}}
steps:
  - {{on: {nodes[0]}, do: start, vm: vm-1}}
  - {{on: {nodes[0]}, do: migrate, vm: vm-1, to: {nodes[1]}}}
  - {{on: {other}, do: start, vm: vm-2}}
"""
    return loads(text, f"<control on {len(nodes)} nodes>")
