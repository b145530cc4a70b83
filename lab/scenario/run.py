"""The one runner of scenarios: the suite's rows, `make replay`, and campaigns run through it.

``Runner.prepare`` makes the lab what the scenario needs and clean (every node powered on
and whole, virtdlmd up, no domain, no lock, the writers' sectors wiped, the lock manager it
asks for); ``Runner.run`` runs its steps in order, a ``together`` group's at once on threads,
each under a deadline, prints each step and its outcome as it happens, and after every step
or group observes every node and runs the audits (lab.scenario.audits), writing one history
line (lab.scenario.history). It stops at the first step whose audits fail.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import libvirt

from ..cluster import Lab
from ..host.objects import HostObjects
from ..settings import cluster_addresses, lab_prefix
from ..suite import node_loss, on_node, partition
from ..suite.audit import AuditFailure
from ..suite.data import DataAuditFailure
from ..suite.journal import JournalWatch
from ..suite.matrix import SHARED_DISK, thesis_disks
from ..suite.steps import KILL_QEMU_TIMEOUT_S, RELEASE_DEADLINE_S, SHELL_TIMEOUT_S, TwoNode
from ..virt.domain import Disk, DomainSpec, Lease
from ..virt.hypervisor import LibvirtFailure
from ..virt.refusal import (
    LOCK_DAEMON_DOWN,
    LOCK_MANAGER,
    OK,
    OTHER,
    QEMU_IMAGE_LOCK,
    Refusal,
    log_signs,
)
from ..wait import LabError
from . import audits, history
from .schema import ANY, DiskUse, Item, Scenario, Step, Together, resolve_path

ADOPT_S = 10.0  # a virtdlmd started again adopts the running VMs' locks within this
OBSERVE_CALL_TIMEOUT_S = 5.0  # one libvirt call while observing (a fenced node never answers)
SETTLE_POLL_S = 0.25
LEASE_DIR = "/var/lib/libvirt/dlm-leases"  # a lease's <target path>: the DLM uses its key only
VIRTDLMD_UP = "systemctl start virtdlmd.socket virtdlmd.service && virtdlm status >/dev/null"
VIRTDLMD_KILL = (
    'pid=$(systemctl show -p MainPID --value virtdlmd.service) && [ "$pid" -gt 0 ] && '
    'kill -9 "$pid"'
)
# ... and until that process is gone (systemd has seen it die), at most 10 s.
VIRTDLMD_GONE = 'timeout 10 sh -c "while kill -0 $pid 2>/dev/null; do sleep 0.1; done"'
# What an action leaves in the nodes' journals on purpose (the journal audit allows it, and
# the refusal signs of whatever layer refused a step of the group).
ALLOW_BY_ACTION: dict[str, tuple[str, ...]] = {
    "kill-qemu": ("End of file from qemu monitor",),
    "destroy": ("End of file from qemu monitor",),
    "stop-virtdlmd": log_signs(LOCK_DAEMON_DOWN),
    "kill-virtdlmd": log_signs(LOCK_DAEMON_DOWN),
    "restart-libvirtd": (),
    "power-off": node_loss.NODE_LOSS_LOG,
}
for _fault in ("power-on", "cut", "heal"):
    ALLOW_BY_ACTION[_fault] = ALLOW_BY_ACTION["power-off"]
# While a node is off or cut, every step may meet the same.
ALLOW_WHILE_DEGRADED = ALLOW_BY_ACTION["power-off"]


def allowed_log(scenario: Scenario) -> tuple[str, ...]:
    """Every journal line this scenario's actions and expected refusals may leave."""
    out: set[str] = set()
    for step in scenario.flat():
        out.update(ALLOW_BY_ACTION.get(step.do, ()))
        layers = (
            (LOCK_MANAGER, QEMU_IMAGE_LOCK, LOCK_DAEMON_DOWN)
            if step.expect == ANY
            else (step.expect,)
        )
        out.update(log_signs(*layers))
    return tuple(sorted(out))


def scenario_uuid(vm: str) -> str:
    """One uuid per VM name: the same VM wherever and whenever it runs."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"virtdlm-scenario:{vm}"))


@dataclass
class Outcome:
    """What one step came to."""

    step: Step
    outcome: str = OK
    code: int | None = None
    holder: str = ""
    message: str = ""
    seconds: float = 0.0
    started: float = 0.0  # monotonic
    refusal: Refusal | None = None
    note: str = ""  # what the step measured (kill-qemu: the seconds until the release)

    def to_json(self) -> dict[str, Any]:
        args = {
            k: v
            for k, v in self.step.to_yaml().items()
            if k not in ("on", "do", "expect", "code", "holder", "timeout")
        }
        return {
            "node": self.step.node,
            "do": self.step.do,
            "args": args,
            "describe": self.step.describe(),
            "expect": self.step.expect,
            "code": self.step.code,
            "holder": self.step.holder,
            "outcome": self.outcome,
            "layer": self.outcome if self.outcome != OK else "",
            "libvirt_code": self.code,
            "holder_seen": self.holder,
            "message": self.message,
            "seconds": round(self.seconds, 3),
            "note": self.note,
        }

    def describe(self) -> str:
        code = f" code {self.code}" if self.code is not None else ""
        holder = f" holder {self.holder}" if self.holder else ""
        msg = f": {self.message}" if self.message and self.outcome != OK else ""
        return f"{self.step.describe()} -> {self.outcome}{code}{holder} ({self.seconds:.1f} s){msg}"


@dataclass
class Result:
    records: list[dict[str, Any]] = field(default_factory=list)
    failure: str = ""  # the first failing step and audit, "" when all held
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failure


class Runner:
    def __init__(
        self,
        tn: TwoNode,
        lab: Lab,
        scenario: Scenario,
        history_file: TextIO | None = None,
        say: Callable[[str], None] = lambda line: None,
        read_journals: bool = True,
        on_item: Callable[[list[Outcome], dict[str, Any]], None] | None = None,
    ) -> None:
        self.tn, self.lab, self.scenario = tn, lab, scenario
        # The lab's nodes, all of them reset and observed; the scenario may use fewer.
        self.nodes = tuple(tn.nodes)
        missing = [n for n in scenario.nodes if n not in self.nodes]
        if missing:
            raise LabError(
                f"the scenario has {len(scenario.nodes)} nodes (lab: nodes: "
                f"{scenario.lab.nodes}), this lab {len(self.nodes)}: bring it up with "
                f"VIRTDLM_LAB_NODES={scenario.lab.nodes} make lab"
            )
        self.history_file = history_file
        self.say = say
        self.read_journals = read_journals
        self.on_item = on_item  # after each step or group, its audits run (the suite's report)
        self.mount_point = str(lab.settings["mount_point"])
        self.cut: set[str] = set()
        self.virtdlmd_down: set[str] = set()
        self.lost_at: dict[str, float] = {}  # node -> epoch seconds of its power-off or cut
        self.index = 0
        self._last_outcomes: list[Outcome] = []
        self.watch: JournalWatch | None = None
        self.rebooted: set[str] = set()  # nodes powered on again since their journal was armed

    # -- the VMs --------------------------------------------------------------------------

    def path(self, disk: DiskUse) -> str:
        return resolve_path(disk, self.scenario.lab.storage, self.mount_point, SHARED_DISK)

    def disk(self, use: DiskUse) -> Disk:
        return Disk(self.path(use), readonly=use.mode == "ro", shareable=use.mode == "shareable")

    def spec(self, vm: str, disks: Iterable[DiskUse] | None = None) -> DomainSpec:
        decl = self.scenario.vms[vm]
        slot = list(self.scenario.vms).index(vm)
        return DomainSpec(
            vm,
            tuple(self.disk(d) for d in (decl.disks if disks is None else disks)),
            tuple(Lease(x.lockspace, x.key, f"{LEASE_DIR}/{x.key}") for x in decl.leases),
            uuid=scenario_uuid(vm),
            writer_boot=self.tn.writer_boot,
            writer_slot=slot,
            on_lockfailure=decl.on_lockfailure,
        )

    def disk_paths(self) -> list[str]:
        """Every disk the scenario can touch, and the thesis disks (wiped on reset)."""
        paths = set(thesis_disks(self.mount_point))
        for vm in self.scenario.vms.values():
            paths.update(self.path(d) for d in vm.disks)
        for step in self.scenario.flat():
            paths.update(
                self.path(d) for d in ([step.disk] if step.disk else []) + list(step.disks or ())
            )
        return sorted(paths)

    # -- making the lab ready -------------------------------------------------------------

    def whole(self) -> bool:
        """The cheap look before the full health checks: virtdlmd started on every node, and
        every node answering, quorate, with every node a member; anything else (or an
        unhealthy lab) goes through the lab's own health checks."""
        try:
            for name in self.nodes:
                self.tn.nodes[name].check(VIRTDLMD_UP, timeout_s=SHELL_TIMEOUT_S)
            seen = {n: self.tn.observe(n, []) for n in self.nodes}
        except LabError:
            return node_loss.healthy(self.tn.nodes, self.lab.settings)
        whole = all(
            s["quorum"]["quorate"] is True
            and set(s["quorum"]["members"]) == set(self.nodes)
            and isinstance(s["locks"], list)
            for s in seen.values()
        )
        return whole or node_loss.healthy(self.tn.nodes, self.lab.settings)

    def prepare(self) -> None:
        """Every node on and whole, virtdlmd up, nothing running, no lock, disks wiped, the
        lock manager the scenario asks for."""
        tn, nodes = self.tn, self.nodes
        with HostObjects() as host:
            off = [n for n in nodes if not host.is_running(lab_prefix() + n)]
        for name in nodes:
            if name not in off:
                with contextlib.suppress(LabError):
                    partition.heal(tn.nodes[name])
        for name in off:
            self.say(f"reset: {name} is off: powering it on")
            node_loss.power_on(self.lab, tn, name)
        if not self.whole():
            self.say("reset: the lab is not healthy: power-cycling the nodes (make lab's heal)")
            self.lab.power_cycle()
            for name in nodes:
                tn.rebooted(name)
            node_loss.wait_healthy(tn, self.lab.settings, "the lab to be healthy")
        tn.down.clear()
        tn.remove_everything()
        tn.wait_no_locks(nodes, RELEASE_DEADLINE_S)
        saves = sorted(
            {self.save_path(s) for s in self.scenario.flat() if s.do in ("save", "restore")}
        )
        if saves:
            tn.nodes[nodes[0]].check("rm -f " + " ".join(saves), timeout_s=SHELL_TIMEOUT_S)
        if tn.writer_boot:
            tn.wipe_disks(self.disk_paths())
        tn.set_lock_manager(self.scenario.lab.lock_manager)

    # -- running --------------------------------------------------------------------------

    def run(self) -> Result:
        result = Result()
        if self.history_file is not None:
            lab = {k: v for k, v in self.lab.settings.items() if isinstance(v, str | int | bool)}
            self._write(history.header(self.scenario, {**lab, "writer_boot": self.tn.writer_boot}))
        for item in self.scenario.steps:
            self.index += 1
            record = self.run_item(item)
            result.records.append(record)
            result.outcomes += self._last_outcomes
            bad = audits.failed(audits.Verdict(**v) for v in record["audits"])
            if bad:
                what = " | ".join(s["describe"] for s in record["steps"])
                result.failure = f"step {self.index} ({what}): " + "; ".join(
                    v.describe() for v in bad
                )
                self.say(f"FAILED at {result.failure}")
                break
        return result

    def run_item(self, item: Item) -> dict[str, Any]:
        steps = item.steps if isinstance(item, Together) else (item,)
        allow = set(ALLOW_WHILE_DEGRADED) if (self.tn.down or self.cut) else set()
        for s in steps:
            allow.update(ALLOW_BY_ACTION.get(s.do, ()))
        if self.watch is None and self.read_journals:
            self.journal_lines(set())  # arm before the first step
        wall = datetime.datetime.now().isoformat(timespec="milliseconds")
        mono = time.monotonic()
        if len(steps) == 1:
            outcomes = [self.attempt(steps[0])]
        else:
            with concurrent.futures.ThreadPoolExecutor(len(steps)) as pool:
                outcomes = list(pool.map(self.attempt, steps))
        for o in outcomes:
            self.say(f"  {o.describe()}")
            allow.update(log_signs(o.outcome))
        self._last_outcomes = outcomes
        record: dict[str, Any] = {
            "kind": history.STEP,
            "index": self.index,
            "wall": wall,
            "monotonic": round(mono, 3),
            "steps": [o.to_json() for o in outcomes],
            "lock_manager": self.scenario.lab.lock_manager,
        }
        record["invariant"] = self.invariant(" | ".join(s.describe() for s in steps))
        self.observe_settled(record)
        lines = self.journal_lines(allow)
        if lines is not None:
            record["journal"] = lines
        verdicts = audits.run_all(record)
        record["audits"] = [v.to_json() for v in verdicts]
        for v in audits.failed(verdicts):
            self.say(f"  audit {v.describe()}")
        self._write(record)
        if self.on_item is not None:
            self.on_item(outcomes, record)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        if self.history_file is not None:
            self.history_file.write(json.dumps(record, sort_keys=False) + "\n")
            self.history_file.flush()

    def journal_lines(self, allow: set[str]) -> list[str] | None:
        """The bad journal lines since the last step on every node that is up and whole
        (None: not read). One watch serves the whole run, its cursors advancing; a node
        that came back from a power-off is armed again (its journal began anew)."""
        if not self.read_journals:
            return None
        whole = [n for n in self.nodes if n not in self.tn.down | self.cut]
        if self.watch is None:
            self.watch = JournalWatch({})
        try:
            for name in whole:
                if name not in self.watch.cursors or name in self.rebooted:
                    self.watch.nodes[name] = self.tn.nodes[name]
                    fresh = JournalWatch({name: self.tn.nodes[name]}).arm()
                    self.watch.cursors[name] = fresh.cursors[name]
                    self.rebooted.discard(name)
            self.watch.allow = tuple(sorted(allow))
            skip = set(self.nodes) - set(whole)
            return self.watch.bad_lines(skip=skip, advance=True)
        except LabError:  # a node that vanished meanwhile
            return None

    def attempt(self, step: Step) -> Outcome:
        out = Outcome(step, started=time.monotonic())
        try:
            out.note = self.act(step)
        except LibvirtFailure as err:
            out.outcome, out.code, out.message = err.layer, err.code, err.message
            r = out.refusal = err.refusal
            out.holder = f"{r.holder_domain}@{r.holder_node}" if r.holder_domain else ""
        except LabError as err:
            out.outcome, out.message = OTHER, str(err)
        out.seconds = time.monotonic() - out.started
        return out

    # -- what every node says -------------------------------------------------------------

    def invariant(self, after: str) -> dict[str, Any]:
        """TwoNode's invariant (libvirt's view and the writers' data), as a stored verdict."""
        try:
            seen = self.tn.invariant(after=after, call_timeout_s=OBSERVE_CALL_TIMEOUT_S)
        except DataAuditFailure as err:
            return {"ok": False, "saw": err.summary, "evidence": "data", "error": str(err)}
        except AuditFailure as err:
            return {"ok": False, "saw": str(err), "evidence": "libvirt", "error": str(err)}
        except LabError as err:  # a node that vanished under the audit
            return {"ok": True, "saw": f"incomplete: {err}"}
        return {"ok": True, "saw": seen or "no writer guests"}

    def observe_settled(self, record: dict[str, Any]) -> None:
        """Observe every node; while locks and domains disagree, again for up to SETTLE_S
        (a lock may outlive its QEMU by that much)."""
        restarted = any(s["do"] in ("start-virtdlmd", "kill-virtdlmd") for s in record["steps"])
        deadline = time.monotonic() + (ADOPT_S if restarted else audits.SETTLE_S)
        while True:
            record["state"] = {n: self.observe(n) for n in self.nodes}
            record["expected"] = {
                "down": sorted(self.tn.down),
                "cut": sorted(self.cut),
                "virtdlmd_down": sorted(self.virtdlmd_down),
            }
            if not audits.lock_disagreements(record) or time.monotonic() > deadline:
                return
            time.sleep(SETTLE_POLL_S)

    def observe(self, node: str) -> dict[str, Any]:
        if node in self.tn.down:
            return {"up": False}
        state: dict[str, Any] = {"up": True}
        h = self.tn.hv[node]
        domains: dict[str, Any] = {}
        try:
            flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
            for dom in h.call(
                "domains", h.conn.listAllDomains, flags, timeout_s=OBSERVE_CALL_TIMEOUT_S
            ):
                st, _ = h.call("state", dom.state, timeout_s=OBSERVE_CALL_TIMEOUT_S)
                xml = h.call("xml", dom.XMLDesc, 0, timeout_s=OBSERVE_CALL_TIMEOUT_S)
                state_name = {
                    libvirt.VIR_DOMAIN_RUNNING: "running",
                    libvirt.VIR_DOMAIN_PAUSED: "paused",
                }
                domains[dom.name()] = {
                    "state": state_name.get(st, str(st)),
                    "disks": disk_modes(xml),
                }
        except LabError as err:
            if node in self.cut:
                return {"up": False, "why": f"cut, not answering: {err}"}
            state["libvirt_error"] = str(err)
        state["domains"] = domains
        paths = sorted({p for d in domains.values() for p in d["disks"]})
        try:
            state.update(self.tn.observe(node, paths))
        except LabError as err:
            if node in self.cut:
                return {"up": False, "why": f"cut, not answering: {err}"}
            state["observe_error"] = str(err)
        return state

    # -- the actions ----------------------------------------------------------------------

    def act(self, step: Step) -> str:
        """Do the step; what it measured, if anything (the outcome's note)."""
        return str(getattr(self, "do_" + step.do.replace("-", "_"))(step) or "")

    def do_define(self, s: Step) -> None:
        self.tn.hv[s.node].define(self.spec(s.vm))

    def do_start(self, s: Step) -> None:
        h = self.tn.hv[s.node]
        h.define(self.spec(s.vm))
        h.start(s.vm)

    def do_destroy(self, s: Step) -> None:
        self.tn.hv[s.node].destroy(s.vm)

    def do_undefine(self, s: Step) -> None:
        h = self.tn.hv[s.node]
        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        h.call(f"undefine {s.vm}", h.lookup(s.vm).undefineFlags, flags)

    def do_suspend(self, s: Step) -> None:
        self.tn.hv[s.node].suspend(s.vm)

    def do_resume(self, s: Step) -> None:
        self.tn.hv[s.node].resume(s.vm)

    def do_reset(self, s: Step) -> None:
        h = self.tn.hv[s.node]
        h.call(f"reset {s.vm}", h.lookup(s.vm).reset, 0)

    def do_migrate(self, s: Step) -> None:
        dest = self.spec(s.vm, s.disks) if s.disks is not None else None
        self.tn.migrate_call(s.vm, s.node, s.to, dest, s.timeout)

    def save_path(self, s: Step) -> str:
        return f"{self.mount_point.rstrip('/')}/{s.file or s.vm + '.save'}"

    def do_save(self, s: Step) -> None:
        self.tn.save_call(s.node, s.vm, self.save_path(s), s.timeout)

    def do_restore(self, s: Step) -> None:
        self.tn.restore_call(s.node, self.save_path(s), s.timeout)

    def do_managedsave(self, s: Step) -> None:
        h = self.tn.hv[s.node]
        h.call(f"managedsave {s.vm}", h.lookup(s.vm).managedSave, 0, timeout_s=s.timeout or 180)

    def do_attach_disk(self, s: Step) -> None:
        assert s.disk is not None
        h = self.tn.hv[s.node]
        index = len(self.scenario.vms[s.vm].disks) + (1 if self.tn.writer_boot else 0) + 1
        h.attach_disk(s.vm, self.disk(s.disk), index)

    def do_detach_disk(self, s: Step) -> None:
        assert s.disk is not None
        self.tn.hv[s.node].detach_disk(s.vm, self.path(s.disk))

    def do_kill_qemu(self, s: Step) -> str:
        """kill -9; where virtdlmd holds the VM's locks, the node times their release (a
        step that takes more than RELEASE_DEADLINE_S fails)."""
        node = self.tn.nodes[s.node]
        timeout = s.timeout or KILL_QEMU_TIMEOUT_S
        if self.scenario.lab.lock_manager != "dlm" or s.node in self.virtdlmd_down:
            node.check(f"kill -9 $(cat /run/libvirt/qemu/{s.vm}.pid)", timeout_s=timeout)
            return ""
        out = node.check(on_node.command("kill-qemu", s.vm), timeout_s=timeout).stdout
        released = float(out.strip().splitlines()[-1])
        if released > RELEASE_DEADLINE_S:
            raise LabError(
                f"[{s.node}] the locks of {s.vm} were released {released:.2f} s after kill -9 "
                f"of its QEMU: more than {RELEASE_DEADLINE_S:.0f} s"
            )
        return f"locks released {released:.3f} s after the kill"

    def do_kill_virtdlmd(self, s: Step) -> None:
        self.tn.nodes[s.node].check(f"{VIRTDLMD_KILL} && {VIRTDLMD_GONE} && {VIRTDLMD_UP}")

    def do_stop_virtdlmd(self, s: Step) -> None:
        self.tn.nodes[s.node].check(
            f"{VIRTDLMD_KILL} && systemctl stop virtdlmd.socket virtdlmd.service"
        )
        self.virtdlmd_down.add(s.node)

    def do_start_virtdlmd(self, s: Step) -> None:
        self.tn.nodes[s.node].check(VIRTDLMD_UP)
        self.virtdlmd_down.discard(s.node)

    def do_restart_libvirtd(self, s: Step) -> None:
        self.tn.nodes[s.node].check("systemctl restart libvirtd", timeout_s=s.timeout or 120)
        self.tn.reconnect_if_broken(s.node)

    def do_power_off(self, s: Step) -> None:
        with HostObjects() as host:
            host.power_off(lab_prefix() + s.node)
        self.lost_at[s.node] = time.time()
        self.tn.down.add(s.node)
        self.tn.nodes[s.node].close()

    def do_power_on(self, s: Step) -> None:
        self.bring_back(s.node)

    def do_cut(self, s: Step) -> None:
        addresses = cluster_addresses(self.lab.settings)
        peers = [addresses[n] for n in self.nodes if n != s.node]
        partition.cut(self.tn.nodes[s.node], peers, s.direction)
        self.lost_at[s.node] = time.time()
        self.cut.add(s.node)

    def do_heal(self, s: Step) -> None:
        if s.node in self.cut and s.node not in self.tn.down:
            with contextlib.suppress(LabError):  # fenced meanwhile: it has no rules left
                partition.heal(self.tn.nodes[s.node])
        self.cut.discard(s.node)
        if not node_loss.healthy(self.tn.nodes, self.lab.settings):
            self.bring_back(s.node)

    def bring_back(self, name: str) -> None:
        """Power a lost node on once its fence is done (or, without fencing, once the lab
        powered it off: split halves are never merged), and wait for the lab's health."""
        survivor = next(
            (n for n in self.nodes if n != name and n not in self.tn.down | self.cut),
            next(n for n in self.nodes if n != name),
        )
        since = self.lost_at.pop(name, time.time())
        if self.lab.settings["fencing"]:
            node_loss.wait_fenced(self.tn, name, survivor, since)
        else:
            with HostObjects() as host:
                if host.is_running(lab_prefix() + name):
                    host.power_off(lab_prefix() + name)
        self.tn.down.add(name)
        node_loss.power_on(self.lab, self.tn, name)
        self.tn.down.discard(name)
        self.rebooted.add(name)

    def do_wait(self, s: Step) -> None:
        time.sleep(s.seconds)


def disk_modes(xml: str) -> dict[str, str]:
    """{path: rw | ro | shareable} of a domain's disks, from its XML."""
    out = {}
    for disk in ET.fromstring(xml).findall("./devices/disk"):
        source = disk.find("source")
        path = (source.get("file") or source.get("dev")) if source is not None else None
        if not path:
            continue
        ro, sh = disk.find("readonly") is not None, disk.find("shareable") is not None
        out[path] = "ro" if ro else "shareable" if sh else "rw"
    return out
