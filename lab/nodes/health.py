"""The lab's health checks (make lab-status): parsers are pure, runners use lab.nodes.node.

corosync quorate with two members, the DLM lockspace joined on both nodes, the share
mounted on both, virtdlmd up with the libdlm backend, libvirtd running with dlm.so loaded,
and a smoke live migration from node-a to node-b that carries its lock along.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

from ..virt.domain import Disk, DomainSpec, domain_xml
from ..wait import LabError
from .node import Node

SMOKE = "lab-smoke"
CHECK_TIMEOUT_S = 30.0
MIGRATE_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Check:
    name: str
    node: str
    ok: bool
    detail: str


def parse_quorum(text: str) -> tuple[bool, int]:
    """(quorate, member count) from `corosync-quorumtool -s`."""
    quorate = re.search(r"^Quorate:\s+Yes", text, re.M) is not None
    m = re.search(r"^Nodes:\s+(\d+)", text, re.M)
    return quorate, int(m.group(1)) if m else 0


def parse_lockspaces(text: str) -> list[str]:
    """Lockspace names from `dlm_tool ls`."""
    return re.findall(r"^name\s+(\S+)", text, re.M)


def parse_lockspace(text: str, name: str) -> tuple[list[int], int] | None:
    """(member node ids, flags) of one lockspace in `dlm_tool ls`, or None if absent.
    flags 0 means running; a lockspace in recovery shows other flags."""
    for block in re.split(r"\n\s*\n", text):
        if re.search(rf"^name\s+{re.escape(name)}\s*$", block, re.M) is None:
            continue
        members = re.search(r"^members\s+([\d ]*)$", block, re.M)
        flags = re.search(r"^flags\s+(0x[0-9a-fA-F]+)", block, re.M)
        return (
            [int(m) for m in members.group(1).split()] if members else [],
            int(flags.group(1), 16) if flags else -1,
        )
    return None


def format_table(checks: list[Check]) -> str:
    rows = [("CHECK", "NODE", "OK", "DETAIL")] + [
        (c.name, c.node, "yes" if c.ok else "NO", c.detail) for c in checks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows
    )


def _safe(node: Node, command: str, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[int, str]:
    try:
        r = node.run(command, timeout_s)
        return r.rc, (r.stdout + r.stderr)
    except LabError as err:
        return -1, str(err)


def node_checks(node: Node, settings: dict[str, Any]) -> list[Check]:
    out = []
    rc, text = _safe(node, "corosync-quorumtool -s")
    quorate, members = parse_quorum(text)
    out.append(
        Check(
            "corosync quorate, 2 members",
            node.name,
            quorate and members == 2,
            f"quorate={quorate} members={members}" if rc >= 0 else text[:120],
        )
    )
    _, text = _safe(node, "dlm_tool ls")
    spaces = parse_lockspaces(text)
    out.append(
        Check(
            "dlm lockspace 'libvirt' joined",
            node.name,
            "libvirt" in spaces,
            f"lockspaces: {', '.join(spaces) or 'none'}",
        )
    )
    mnt = settings["mount_point"]
    rc, text = _safe(node, f"findmnt -n -o FSTYPE,SOURCE,OPTIONS {shlex.quote(mnt)}")
    out.append(
        Check(
            "nfs share mounted",
            node.name,
            rc == 0 and text.startswith("nfs"),
            " ".join(text.split()[:2]) if rc == 0 else f"{mnt} not mounted",
        )
    )
    rc, text = _safe(node, "virtdlm status --json")
    try:
        status = json.loads(text) if rc == 0 else {}
    except json.JSONDecodeError:
        status = {}
    out.append(
        Check(
            "virtdlmd up, backend libdlm",
            node.name,
            status.get("backend") == "libdlm",
            f"backend={status.get('backend')} node_id={status.get('node_id')} "
            f"locks={status.get('locks')}"
            if status
            else text.strip()[:120],
        )
    )
    rc, text = _safe(
        node,
        # libvirtd is socket-activated and exits when idle: a call wakes it first.
        "virsh -c qemu:///system version >/dev/null && pid=$(pidof libvirtd) && "
        "grep -c 'lock-driver/dlm.so' /proc/$pid/maps && "
        "grep -h '^lock_manager' /etc/libvirt/qemu.conf",
    )
    out.append(
        Check(
            "libvirtd uses the dlm lock manager",
            node.name,
            rc == 0,
            text.strip().splitlines()[-1] if rc == 0 else "dlm.so not loaded",
        )
    )
    return out


def smoke_migration(nodes: dict[str, Node], settings: dict[str, Any]) -> Check:
    a, b = nodes["node-a"], nodes["node-b"]
    image = f"{settings['mount_point']}/smoke.qcow2"
    xml = domain_xml(DomainSpec(SMOKE, (Disk(image),)))
    cleanup = f"virsh destroy {SMOKE} >/dev/null 2>&1; true"
    try:
        a.check(f"test -e {image} || qemu-img create -q -f qcow2 {image} 16M")
        a.check(
            f"cat > /tmp/{SMOKE}.xml <<'EOF'\n{xml}\nEOF\nvirsh create /tmp/{SMOKE}.xml",
            timeout_s=120,
        )
        a.check(
            f"virsh migrate --live {SMOKE} qemu+tcp://node-b/system", timeout_s=MIGRATE_TIMEOUT_S
        )
        state = b.check(f"virsh domstate {SMOKE}").stdout.strip()
        locks = json.loads(b.check("virtdlm locks --json").stdout)
        moved = any(lk["domain"] == SMOKE and lk["mode"] == "EX" for lk in locks)
        left = json.loads(a.check("virtdlm locks --json").stdout)
        ok = state == "running" and moved and not any(lk["domain"] == SMOKE for lk in left)
        return Check(
            "smoke live migration a -> b",
            "both",
            ok,
            f"state on node-b={state}, lock moved={moved}",
        )
    except LabError as err:
        return Check("smoke live migration a -> b", "both", False, str(err).splitlines()[0])
    finally:
        for n in (a, b):
            _safe(n, cleanup)


def run_checks(nodes: dict[str, Node], settings: dict[str, Any]) -> list[Check]:
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:  # the nodes in parallel
        per_node = list(pool.map(lambda n: node_checks(n, settings), nodes.values()))
    checks = [c for found in per_node for c in found]
    if all(c.ok for c in checks):
        checks.append(smoke_migration(nodes, settings))
    else:
        checks.append(
            Check(
                "smoke live migration a -> b", "both", False, "skipped: fix the checks above first"
            )
        )
    return checks
