"""Drive the two-node lab as the black-box suite sees it: steps on a node, each recorded.

Every step runs with a deadline (libvirt calls through lab.virt.hypervisor, shell commands
through lab.nodes.node), is recorded with its outcome (``ok`` or the layer that refused), libvirt
error code and time, and is followed by the invariant across both nodes: no exclusive disk
open read/write by two running domains, by libvirt's view and by what the writer guests
left on the disks (lab.suite.data). Shell-level faults (kill -9, restarts, power-off)
are steps too, so a scenario reads as the list of what was done where.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from ..cluster import NODES
from ..guest.disks import Evidence, evidence_from_json
from ..nodes.node import Node, Session
from ..nodes.provisioning import NODE_SH
from ..virt.domain import DomainSpec, domain_xml
from ..virt.hypervisor import Hypervisor, LibvirtFailure
from ..virt.refusal import OK, Refusal
from ..wait import LabError, wait_for
from . import data, on_node
from .audit import AuditFailure, double_writers

NODE_A, NODE_B = NODES[:2]  # the pair the tables and most cases use; others stay idle
RELEASE_DEADLINE_S = 2.0  # a dead QEMU's locks are free on every node within this
MIGRATE_TIMEOUT_S = 240.0
SAVE_TIMEOUT_S = 180.0
KILL_QEMU_TIMEOUT_S = 30.0  # the node's own watch (on_node.RELEASE_WATCH_S) and its start
SHELL_TIMEOUT_S = 60.0  # a shell step, unless it says otherwise
QUERY_TIMEOUT_S = 20.0  # a query on a node over SSH: `virtdlm locks`, a package version
PING_TIMEOUT_S = 10.0  # is a libvirt connection still alive
LOCKS_POLL_S = 0.1


def libvirt_uri(host: str) -> str:
    """libvirtd on a node over TCP (the nodes' libvirtd-tcp): from this host to its management
    address, and from node to node by name for peer-to-peer migration."""
    return f"qemu+tcp://{host}/system"


@dataclass
class StepResult:
    node: str
    action: str
    vm: str
    outcome: str  # OK or the refusing layer (lab.virt.refusal)
    code: int | None
    seconds: float
    message: str = ""
    refusal: Refusal | None = None
    data: str = ""  # what the writer guests left on the exclusive disks after this step

    @property
    def holder(self) -> str:
        """'vm@node' the lock manager named as the holder, if it refused."""
        r = self.refusal
        return f"{r.holder_domain}@{r.holder_node}" if r and r.holder_domain else ""

    def describe(self) -> str:
        code = f" code {self.code}" if self.code is not None else ""
        msg = f": {self.message}" if self.message else ""
        return f"[{self.node}] {self.action} {self.vm} -> {self.outcome}{code}{msg}"


@dataclass(frozen=True)
class Step:
    """One step of a case, as data: an action on a node, and what must come of it."""

    node: str
    action: str  # start | migrate | suspend | resume | destroy
    vm: str
    to: str = ""  # migrate: the destination node
    expect: str = OK  # OK or the layer that must refuse (lab.virt.refusal)
    code: int | None = None  # the libvirt error code a refusal must carry (None: any)
    holder: str = ""  # "vm@node" the lock manager must name as the holder

    def describe(self) -> str:
        where = f"{self.node} -> {self.to}" if self.to else self.node
        return f"{self.action} {self.vm} on {where}"


@dataclass
class TwoNode:
    nodes: dict[str, Node]
    hv: dict[str, Hypervisor]
    steps: list[StepResult] = field(default_factory=list)
    on_step: Callable[[StepResult], None] | None = None
    down: set[str] = field(default_factory=set)  # nodes powered off: skipped by the audits
    writer_boot: str = ""  # thesis VMs boot the writer guest from this image ("" = none)
    data_seen: list[str] = field(default_factory=list)  # the data audit's summary per step
    history: data.History = field(default_factory=data.History)  # writers seen per disk
    disk_readers: dict[str, Session] = field(default_factory=dict)  # per node: serve-disks

    @classmethod
    def connect(cls, nodes: dict[str, Node]) -> TwoNode:
        """libvirt over TCP to each node's management address (the nodes' libvirtd-tcp)."""
        hv = {n: Hypervisor(libvirt_uri(node.ssh.host), n) for n, node in nodes.items()}
        return cls(nodes, hv)

    def close(self) -> None:
        for reader in self.disk_readers.values():
            reader.close()
        for h in self.hv.values():
            with contextlib.suppress(LabError, libvirt.libvirtError):
                h.close()

    # -- the step runner ------------------------------------------------------------------

    def step(self, node: str, action: str, vm: str, fn: Callable[[], Any]) -> StepResult:
        started = time.monotonic()
        try:
            fn()
            result = StepResult(node, action, vm, OK, None, time.monotonic() - started)
        except LibvirtFailure as err:
            result = StepResult(
                node,
                action,
                vm,
                err.layer,
                err.code,
                time.monotonic() - started,
                err.message,
                err.refusal,
            )
        self.steps.append(result)
        try:
            result.data = self.invariant(after=result.describe())
        except data.DataAuditFailure as err:
            result.data = err.summary
            raise
        finally:
            if self.on_step is not None:
                self.on_step(result)
        return result

    def invariant(self, after: str = "", call_timeout_s: float | None = None) -> str:
        """No exclusive disk is open read/write by two running domains, across both nodes,
        by libvirt's view and by the data the writer guests left on the disks
        (lab.suite.data). Returns what the data audit saw, for the report.

        `call_timeout_s`: a shorter deadline for each libvirt call, for a poll while a node
        may be powered off under it (no reply ever comes from it: a call would otherwise
        wait for the connection's whole deadline); the connections are then not reopened."""
        running: dict[str, str] = {}
        for name, h in self.hv.items():
            if name in self.down:  # a node powered off runs nothing
                continue
            if call_timeout_s is None:
                self.reconnect_if_broken(name)  # the step may have restarted libvirtd
            flags = libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING
            for dom in h.call(
                "running domains", h.conn.listAllDomains, flags, timeout_s=call_timeout_s
            ):
                running[f"{name}/{dom.name()}"] = h.call(
                    "xml", dom.XMLDesc, 0, timeout_s=call_timeout_s
                )
        doubles = double_writers(running)
        seen = data.audit(self.read_disks, running, doubles, after, history=self.history)
        self.data_seen.append(seen)
        if doubles:
            raise AuditFailure(f"two running domains write one disk after {after}: {doubles}")
        return seen

    def _disks(self, verb: str, paths: Iterable[str]) -> Any:
        """Ask a node that is up (its long-lived on-node disk reader) to read or wipe."""
        return self.ask(next(n for n in NODES if n not in self.down), verb, paths)

    def ask(self, node: str, verb: str, paths: Iterable[str]) -> Any:
        """One question to the node's long-lived on-node helper (lab.suite.on_node)."""
        if node not in self.disk_readers:
            command = on_node.command("serve-disks")
            self.disk_readers[node] = self.nodes[node].session(command, QUERY_TIMEOUT_S)
        answer = json.loads(self.disk_readers[node].ask(" ".join([verb, *paths])))
        if isinstance(answer, dict) and "error" in answer:
            raise LabError(f"[{node}] {verb} {' '.join(paths)}: {answer['error']}")
        return answer

    def observe(self, node: str, paths: Iterable[str]) -> dict[str, Any]:
        """The node's own truth after a step: locks, quorum, QEMU writers (on_node.observe)."""
        return dict(self.ask(node, "observe", list(paths)))

    def set_lock_manager(self, manager: str) -> None:
        """libvirt's lock manager on every node (node.sh restarts libvirtd when it changes)."""
        for name, node in self.nodes.items():
            current = node.check("grep -h '^lock_manager' /etc/libvirt/qemu.conf || true").stdout
            if f'"{manager}"' in current or (manager == "nop" and not current.strip()):
                continue
            node.check(f"{NODE_SH} lock-manager {name} {manager}", timeout_s=120)
            self.hv[name].reconnect()

    def read_disks(self, paths: list[str]) -> list[Evidence]:
        """What the writer guests left on these disks, read on a node that is up."""
        return [evidence_from_json(e) for e in self._disks("read", paths)]

    def wipe_disks(self, paths: Iterable[str]) -> None:
        """Zero what writers left on these disks; no domain may have them open."""
        self._disks("wipe", paths)
        self.history.clear()

    # -- libvirt steps --------------------------------------------------------------------

    def start(self, node: str, spec: DomainSpec) -> StepResult:
        h = self.hv[node]
        return self.step(node, "start", spec.name, lambda: (h.define(spec), h.start(spec.name)))

    def migrate(
        self, vm: str, src: str, dst: str, dest_spec: DomainSpec | None = None
    ) -> StepResult:
        return self.step(
            src, f"migrate to {dst}", vm, lambda: self.migrate_call(vm, src, dst, dest_spec)
        )

    def migrate_call(
        self,
        vm: str,
        src: str,
        dst: str,
        dest_spec: DomainSpec | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Live, peer to peer: the source libvirtd reaches the destination's over the
        cluster network by name, as an admin's `virsh migrate --live --p2p` does."""
        h = self.hv[src]
        params: dict[str, Any] = {}
        if dest_spec is not None:
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = domain_xml(dest_spec)
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        h.call(
            f"migrate {vm} to {dst}",
            h.lookup(vm).migrateToURI3,
            libvirt_uri(dst),
            params,
            flags,
            timeout_s=timeout_s or MIGRATE_TIMEOUT_S,
        )

    def suspend(self, node: str, vm: str) -> StepResult:
        return self.step(node, "suspend", vm, lambda: self.hv[node].suspend(vm))

    def resume(self, node: str, vm: str) -> StepResult:
        return self.step(node, "resume", vm, lambda: self.hv[node].resume(vm))

    def reset(self, node: str, vm: str) -> StepResult:
        """A hard reset of the guest (virDomainReset): the same QEMU goes on, so libvirt
        makes no lock call and the locks must stay."""
        h = self.hv[node]
        return self.step(node, "reset", vm, lambda: h.call(f"reset {vm}", h.lookup(vm).reset, 0))

    def destroy(self, node: str, vm: str) -> StepResult:
        return self.step(node, "destroy", vm, lambda: self.hv[node].destroy(vm))

    def save(self, node: str, vm: str, path: str) -> StepResult:
        return self.step(node, "save", vm, lambda: self.save_call(node, vm, path))

    def restore(self, node: str, vm: str, path: str) -> StepResult:
        return self.step(node, "restore", vm, lambda: self.restore_call(node, path))

    def save_call(self, node: str, vm: str, path: str, timeout_s: float | None = None) -> None:
        h = self.hv[node]
        h.call(f"save {vm}", h.lookup(vm).save, path, timeout_s=timeout_s or SAVE_TIMEOUT_S)

    def restore_call(self, node: str, path: str, timeout_s: float | None = None) -> None:
        h = self.hv[node]
        h.call(f"restore {path}", h.conn.restore, path, timeout_s=timeout_s or SAVE_TIMEOUT_S)

    def play(self, step: Step, vms: dict[str, DomainSpec]) -> StepResult:
        """Run one data step (no assertion: the caller compares with step.expect)."""
        if step.action == "start":
            return self.start(step.node, vms[step.vm])
        if step.action == "migrate":
            return self.migrate(step.vm, step.node, step.to)
        if step.action in ("suspend", "resume", "destroy"):
            return getattr(self, step.action)(step.node, step.vm)  # type: ignore[no-any-return]
        raise ValueError(f"unknown step action {step.action!r}")

    # -- shell steps (faults) -------------------------------------------------------------

    def shell(
        self, node: str, action: str, command: str, timeout_s: float = SHELL_TIMEOUT_S
    ) -> str:
        """A shell step on a node; it must succeed. Returns its stdout."""
        out: list[str] = []
        self.step(
            node,
            action,
            "",
            lambda: out.append(self.nodes[node].check(command, timeout_s=timeout_s).stdout),
        )
        return out[0]

    def kill_qemu(self, node: str, vm: str) -> float:
        """kill -9 the domain's QEMU; returns the seconds until the node's virtdlmd holds no
        lock of that domain any more, measured on the node itself (lab.suite.on_node)."""
        out = self.shell(
            node, f"kill -9 qemu of {vm}", on_node.command("kill-qemu", vm), KILL_QEMU_TIMEOUT_S
        )
        return float(out.strip().splitlines()[-1])

    # -- what the lock daemons hold -------------------------------------------------------

    def locks(self, node: str) -> list[dict[str, Any]]:
        out = self.nodes[node].check("virtdlm locks --json", QUERY_TIMEOUT_S).stdout
        return list(json.loads(out))

    def held(self, node: str) -> set[tuple[str, str, str]]:
        """{(domain, disk path, mode)} of every lock the node's virtdlmd holds."""
        return {(lk["domain"], lk["path"], lk["mode"]) for lk in self.locks(node)}

    def wait_no_locks(self, names: Iterable[str], deadline_s: float = RELEASE_DEADLINE_S) -> None:
        for name in names:
            wait_for(
                functools.partial(self.holds_nothing, name),
                deadline_s,
                LOCKS_POLL_S,
                f"virtdlmd on {name} to hold no lock",
            )

    def holds_nothing(self, node: str) -> bool:
        return self.locks(node) == []

    # -- cleanup --------------------------------------------------------------------------

    def reconnect_if_broken(self, node: str) -> None:
        """A libvirtd restart or a node reboot breaks the TCP connection: open a new one."""
        h = self.hv[node]
        try:
            h.call("ping", h.conn.getLibVersion, timeout_s=PING_TIMEOUT_S)
        except LabError:
            h.reconnect()

    def rebooted(self, node: str) -> None:
        """The node was powered off or rebooted: drop its SSH connection and its disk
        reader (both would wait on a dead TCP connection), reconnect libvirt to it."""
        self.nodes[node].close()
        reader = self.disk_readers.pop(node, None)
        if reader is not None:
            reader.close()
        self.down.discard(node)
        self.reconnect_if_broken(node)

    def remove_everything(self) -> None:
        """Every domain on both nodes: running, paused, defined, with a managed save."""
        for name in self.hv:
            if name in self.down:
                continue
            self.reconnect_if_broken(name)
            self.hv[name].remove_all()


def versions(node: Node) -> dict[str, str]:
    """What the lab runs, for the report: kernel, libvirt, QEMU, corosync, dlm."""
    queries = {
        "kernel": "uname -r",
        "libvirt": "dpkg-query -W -f '${Version}' libvirt-daemon",
        "qemu": "dpkg-query -W -f '${Version}' qemu-system-x86",
        "corosync": "dpkg-query -W -f '${Version}' corosync",
        "dlm": "dpkg-query -W -f '${Version}' dlm-controld",
        "debian": "cat /etc/debian_version",
    }
    out = {}
    for key, cmd in queries.items():
        try:
            out[key] = node.run(cmd, QUERY_TIMEOUT_S).stdout.strip() or "?"
        except LabError as err:
            out[key] = f"? ({err})"
    return out
