"""The lab's health checks (make lab-status): testinfra assertions on each node, one table.

corosync quorate with every node a member, the DLM lockspace joined on every node, the
share mounted on each, virtdlmd up with the libdlm backend, libvirtd running with dlm.so loaded,
and a smoke live migration from node-a to node-b that carries its lock along.

Each node check is a function of the node's testinfra Host that asserts what must hold and
returns the row's detail; a failed assertion's message (or the lab error, a timeout
included) becomes the row's detail. Parsers of the tools' text are pure functions.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..host import fencing
from ..settings import lab_prefix
from ..virt.domain import Disk, DomainSpec, domain_xml
from ..wait import LabError
from .machines import NODES
from .node import Node

SMOKE = "lab-smoke"
CHECK_TIMEOUT_S = 30.0
MIGRATE_TIMEOUT_S = 180.0
DETAIL_CHARS = 120
CLUSTER_SIZE = len(NODES)
LOCKSPACE = "libvirt"
DLM_DRIVER = "lock-driver/dlm.so"
# A testinfra Host: its modules (host.service, host.file, ...) are attributes made at run
# time, which mypy cannot see.
Host = Any


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


def parse_lock_manager(qemu_conf: str) -> str | None:
    """The `lock_manager = ...` line of qemu.conf, None when it is not set."""
    m = re.search(r"^lock_manager\s*=.*$", qemu_conf, re.M)
    return m.group(0).strip() if m else None


def format_table(checks: list[Check]) -> str:
    rows = [("CHECK", "NODE", "OK", "DETAIL")] + [
        (c.name, c.node, "yes" if c.ok else "NO", c.detail) for c in checks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows
    )


def _brief(text: str) -> str:
    return text.strip()[:DETAIL_CHARS]


# -- the node checks: assert on the node, return the row's detail ------------------------


def corosync_quorate(host: Host, settings: dict[str, Any]) -> str:
    assert host.service("corosync").is_running, "corosync is not running"
    out = host.run("corosync-quorumtool -s")
    quorate, members = parse_quorum(out.stdout)
    detail = f"quorate={quorate} members={members}"
    assert quorate and members == CLUSTER_SIZE, (
        detail if members else _brief(out.stdout + out.stderr)
    )
    return detail


def lockspace_joined(host: Host, settings: dict[str, Any]) -> str:
    out = host.run("dlm_tool ls")
    spaces = parse_lockspaces(out.stdout)
    detail = f"lockspaces: {', '.join(spaces) or 'none'}"
    assert LOCKSPACE in spaces, detail if out.rc == 0 else _brief(out.stderr or detail)
    return detail


def share_mounted(host: Host, settings: dict[str, Any]) -> str:
    mnt = str(settings["mount_point"])
    share = host.mount_point(mnt)
    assert share.exists, f"{mnt} not mounted"
    assert share.filesystem.startswith("nfs"), f"{mnt} is {share.filesystem}, not nfs"
    return f"{share.filesystem} {share.device}"


def virtdlmd_libdlm(host: Host, settings: dict[str, Any]) -> str:
    out = host.run("virtdlm status --json")
    assert out.rc == 0, _brief(out.stderr or out.stdout)
    try:
        status = json.loads(out.stdout)
    except json.JSONDecodeError:
        status = {}
    detail = (
        f"backend={status.get('backend')} node_id={status.get('node_id')} "
        f"locks={status.get('locks')}"
    )
    assert status, _brief(out.stdout)
    assert status.get("backend") == "libdlm", detail
    assert host.service("virtdlmd").is_running, "virtdlmd.service is not running"
    return detail


def libvirtd_dlm(host: Host, settings: dict[str, Any]) -> str:
    # libvirtd is socket-activated and exits when idle: a call wakes it first.
    woken = host.run("virsh -c qemu:///system version")
    assert woken.rc == 0, _brief(woken.stderr or woken.stdout)
    assert host.service("libvirtd").is_running, "libvirtd is not running"
    pid = host.run("pidof libvirtd").stdout.split()
    assert pid, "libvirtd has no process"
    assert host.file(f"/proc/{pid[0]}/maps").contains(DLM_DRIVER), "dlm.so not loaded"
    line = parse_lock_manager(host.file("/etc/libvirt/qemu.conf").content_string)
    assert line is not None, "qemu.conf sets no lock_manager"
    return line


def parse_fence_list(text: str) -> list[str]:
    """Domain names from `fence_virt -o list` ("name uuid state" lines)."""
    return [line.split()[0] for line in text.splitlines() if len(line.split()) >= 2]


def fencing_ready(host: Host, settings: dict[str, Any]) -> str:
    """Fencing on: dlm.conf enables it, and fence_virt reaches fence_virtd on the host and
    sees every node (`-o list`: a dry check, nothing is fenced). Off: say it is unsafe."""
    conf = host.file("/etc/dlm/dlm.conf").content_string
    enabled = re.search(r"^enable_fencing=1\s*$", conf, re.M) is not None
    if not settings["fencing"]:
        assert not enabled, "fencing: false, but dlm.conf enables fencing: run make lab"
        return "OFF (fencing: false): UNSAFE under a network partition"
    assert enabled, "dlm.conf does not enable fencing: run make lab"
    address = fencing.bridge_address(str(settings["management_subnet"]))
    out = host.run(f"fence_virt -T {address} -p {fencing.FENCE_PORT} -t 15 -o list")
    assert out.rc == 0, f"fence_virt -o list via {address}: " + _brief(out.stderr or out.stdout)
    listed = parse_fence_list(out.stdout)
    want = [lab_prefix() + n for n in NODES]
    assert all(w in listed for w in want), f"fence_virtd lists {listed}, not {want}"
    return f"on: fence_virt reaches {address}:{fencing.FENCE_PORT}, lists all {len(want)} nodes"


NODE_CHECKS: tuple[tuple[str, Callable[[Host, dict[str, Any]], str]], ...] = (
    (f"corosync quorate, {CLUSTER_SIZE} members", corosync_quorate),
    ("dlm lockspace 'libvirt' joined", lockspace_joined),
    ("nfs share mounted", share_mounted),
    ("virtdlmd up, backend libdlm", virtdlmd_libdlm),
    ("libvirtd uses the dlm lock manager", libvirtd_dlm),
    ("fencing (fence_virt -o list)", fencing_ready),
)


def node_checks(node: Node, settings: dict[str, Any]) -> list[Check]:
    if not __debug__:
        raise LabError("the health checks are assertions: run Python without -O")
    out = []
    for name, check in NODE_CHECKS:
        try:
            out.append(Check(name, node.name, True, check(node.host, settings)))
        except AssertionError as err:
            out.append(Check(name, node.name, False, str(err).splitlines()[0] if str(err) else ""))
        except LabError as err:  # a timeout or a lost connection: this row fails
            out.append(Check(name, node.name, False, _brief(str(err).splitlines()[0])))
    return out


def _safe(node: Node, command: str, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[int, str]:
    try:
        r = node.run(command, timeout_s)
        return r.rc, (r.stdout + r.stderr)
    except LabError as err:
        return -1, str(err)


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
