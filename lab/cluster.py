"""The two-node lab: bring it up, check its health, tear it down.

    python -m lab.cluster up       make lab: who runs it, host packages, host libvirtd, box,
                                   nodes (vagrant), provisioning, then the health table
    python -m lab.cluster status   make lab-status: the health table; exit 1 if unhealthy
    python -m lab.cluster destroy  make lab-destroy: this checkout's nodes, networks, volumes
    python -m lab.cluster clean    destroy, and drop the lab's vagrant boxes
    python -m lab.cluster logs     the nodes' journals into .lab/logs/

``Lab`` only orders the steps: the host side is lab.host (access, libvirtd, objects, box),
the nodes lab.nodes (machines, node, provisioning, health). Every step prints its elapsed
time; on failure the nodes' logs are collected under .lab/logs/ and the message says where.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from . import settings as lab_settings
from .command import check
from .host import access, fencing, libvirtd
from .host import box as boxes
from .host.accel import kvm_works
from .host.libvirtd import HOST_URI
from .host.objects import HostObjects
from .nodes import provisioning
from .nodes.health import Check, format_table, node_checks, run_checks
from .nodes.machines import NODES, Machines, orphans
from .nodes.node import Node
from .nodes.vagrant import Vagrant, VagrantError
from .wait import LabError, wait_for

__all__ = ["HOST_URI", "NODES", "Lab", "main"]

REPO = lab_settings.REPO
LAB_DIR = lab_settings.LAB_DIR
LOG_DIR = os.path.join(LAB_DIR, "logs")
SSH_DIR = os.path.join(LAB_DIR, "ssh")
HOST_PACKAGES_TIMEOUT_S = 1800.0
BOOT_TIMEOUT_S = float(lab_settings.BOOT_TIMEOUT_S)
HEAL_TIMEOUT_S = 300.0
SYNC_TIMEOUT_S = 60.0


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def step(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Print a step's start and its elapsed time."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kw: Any) -> Any:
            started = time.monotonic()
            say(f"==> {name}")
            value = fn(*args, **kw)
            say(f"    {name}: done in {time.monotonic() - started:.0f} s")
            return value

        return inner

    return wrap


class Lab:
    def __init__(self) -> None:
        self.settings = lab_settings.load()
        self.vagrant = Vagrant(REPO, os.path.join(LOG_DIR, "vagrant.log"))
        self.nodes = Machines(self.vagrant, SSH_DIR)
        self._who: access.Runner | None = None
        self._kvm: bool | None = None

    def node(self, name: str) -> Node:
        return self.nodes.node(name)

    @property
    def who(self) -> access.Runner:
        if self._who is None:
            self._who = access.runner(str(self.settings["box_dir"]))
        return self._who

    # -- host -----------------------------------------------------------------------------

    @step("host packages")
    def host_packages(self) -> None:
        check([os.path.join(REPO, "scripts", "install-deps"), "lab"], HOST_PACKAGES_TIMEOUT_S)

    @step("host libvirtd")
    def host_libvirtd(self) -> None:
        if self.settings["fix_kvm_device"]:
            done = libvirtd.kvm_device_fix(self.who)
            if done:
                say(f"    {done}")
        libvirtd.ensure_running(self.who)

    @step("box")
    def box(self) -> str:
        return boxes.build(str(self.settings["box_dir"]), self.who)

    def prune_boxes(self, keep: str | None) -> None:
        for name in boxes.prune(self.vagrant, keep):
            say(f"    removed the old box {name}")

    def kvm(self, box_dir: str) -> bool:
        """Whether the nodes run under KVM: the setting, or (auto) whether a kernel boots
        under KVM on this host (probed once per run)."""
        if self._kvm is None:
            accel = self.settings["accel"]
            self._kvm = (
                kvm_works(os.path.join(box_dir, "vmlinuz")) if accel == "auto" else (accel == "kvm")
            )
        return self._kvm

    @step("accelerator")
    def domain_type(self, box_dir: str) -> str:
        kvm = self.kvm(box_dir)
        say(f"    nodes run under {'KVM' if kvm else 'TCG'}")
        return "kvm" if kvm else "qemu"

    def clear_foreign_leftovers(self, prefix: str) -> None:
        """Another checkout's stopped lab may hold our subnets: remove what is not running."""
        with HostObjects() as host:
            for net in host.clear_foreign_leftovers(prefix):
                say(f"    removed the leftover network {net} of a stopped lab")

    def clear_own_orphans(self, prefix: str) -> None:
        """Nodes of this checkout's path that vagrant no longer knows would block
        `vagrant up`: remove them."""
        with HostObjects() as host:
            domains = host.domains()
        if not any(d.startswith(prefix) for d in domains):
            return
        try:
            states = self.nodes.states()
        except VagrantError as err:  # vagrant cannot say: it knows no machine here
            say(f"    vagrant status failed, so its machines count as unknown: {err}")
            states = {}
        found = orphans(domains, prefix, NODES, states)
        if found:
            say(
                f"    removing nodes {', '.join(found)} left by an earlier lab at this path "
                "(vagrant has no record of them)"
            )
            self.destroy()

    # -- nodes ----------------------------------------------------------------------------

    @step("nodes up (vagrant)")
    def nodes_up(self) -> None:
        self.nodes.up(on_retry=lambda why: say(f"    {why}: boot or network timeout, retrying"))

    def provision(self, phase: str, suffix: str = "", names: tuple[str, ...] = NODES) -> list[str]:
        shown = provisioning.provision([self.node(n) for n in names], phase, suffix)
        for line in shown:
            say(f"    {line}")
        return shown

    def provision_base(self) -> None:
        """The cluster phase; nodes whose running DLM cannot take a new dlm.conf (a
        lockspace exists, so dlm_controld cannot restart) are power-cycled, then done again."""
        if provisioning.restart_needed(self.provision("base")):
            self.power_cycle()
            self.provision("base")

    def set_fencing(self, on: bool) -> bool:
        """dlm.conf with or without fencing on both nodes, now (the partition control run;
        make lab puts back the setting). Whether the nodes were power-cycled for it."""
        if provisioning.restart_needed(self.provision("fencing", suffix=str(on))):
            self.power_cycle()
            return True
        return False

    def power_cycle(self, names: tuple[str, ...] = NODES) -> None:
        """Power nodes off and on through the host's libvirt, and wait until each answers
        over SSH again. All of them off first: a node that stayed up with fencing on would
        fence (power off) the other one while it boots."""
        prefix = lab_settings.lab_prefix()
        say(f"    power-cycling {', '.join(names)}")
        for name in names:  # what provisioning just wrote must survive the power-off
            with contextlib.suppress(LabError):
                self.node(name).run("sync", timeout_s=SYNC_TIMEOUT_S)
        with HostObjects() as host:
            for name in names:
                if host.is_running(prefix + name):
                    host.power_off(prefix + name)
            for name in names:
                host.power_on(prefix + name)
        for name in names:
            self.node(name).close()  # its SSH session died with it
            wait_for(
                lambda n=name: self.node(n).run("true", timeout_s=10).ok,  # type: ignore[misc]
                BOOT_TIMEOUT_S,
                5.0,
                f"{name} to answer over SSH after its power cycle",
            )
        # Booted together, node-b may try the share before node-a serves it, and a failed
        # boot-time mount is not retried: the storage phase mounts what is not mounted.
        self.provision("storage", names=tuple(n for n in NODES if n in names))

    @step("fencing (fence_virtd on the host)")
    def fencing(self) -> None:
        """fence_virtd for this checkout's nodes, on the management bridge only; or, with
        fencing: false, none (one left from before is stopped)."""
        if not self.settings["fencing"]:
            if fencing.stop(self.who) is not None:
                say("    stopped fence_virtd: fencing: false")
            say("    fencing: false: the lab is UNSAFE under a network partition")
            return
        prefix = lab_settings.lab_prefix()
        with HostObjects() as host:
            members = [
                fencing.Member(prefix + n, host.uuid(prefix + n), self.node(n).ssh.host)
                for n in NODES
            ]
        address = fencing.bridge_address(str(self.settings["management_subnet"]))
        text = fencing.conf_text(
            address, fencing.FENCE_PORT, fencing.key_file(), prefix.rstrip("-"), members
        )
        say(f"    {fencing.ensure(self.who, address, fencing.FENCE_PORT, text)}")

    @step("copy the tree into the nodes")
    def upload(self) -> None:
        provisioning.upload(self.nodes.all().values())

    def provision_nodes(self) -> None:
        """Provision the nodes, unless they were provisioned from this very tree."""
        digest = provisioning.tree_digest()
        if all(provisioning.provisioned_from(n) == digest for n in self.nodes.all().values()):
            say("==> nodes already provisioned from this tree and these settings")
            # An interrupted control run may have left libvirtd on "nop", or the DLM
            # without fencing: put back the settings (no-ops when they are in place).
            self.provision("lock-manager", suffix=str(self.settings["lock_manager"]))
            self.set_fencing(bool(self.settings["fencing"]))
            return
        self.upload()
        step("provision: cluster")(self.provision_base)()
        step("provision: storage")(self.provision)("storage")
        step("provision: plugin")(self.provision)("plugin")
        for node in self.nodes.all().values():
            provisioning.mark(node, digest)

    # -- the commands ---------------------------------------------------------------------

    def up(self) -> None:
        started = time.monotonic()
        step("who runs the lab")(access.check)(self.who)
        self.host_packages()
        self.host_libvirtd()
        box_dir = self.box()
        previous = lab_settings.read_vagrant_settings()
        if previous and previous.get("node_list") != lab_settings.node_list(self.settings):
            # Another node count (or cluster subnet): corosync's quorum, the nodes' hosts
            # and dlm.conf all change. A lab of the new shape from scratch is the certain way.
            was = len(previous.get("node_list") or [{}, {}])
            say(f"==> the lab has {was} nodes, the settings say {self.settings['nodes']}")
            step("remove the lab of the other shape")(self.destroy_all)(previous)
            previous = None
        if previous and previous.get("box_dir") != box_dir:
            # Nodes of an older recipe: their disks are backed by the box pruned below, and
            # they would not be what this tree builds. Rebuild them from the new box.
            step("remove the nodes of the previous box")(self.destroy)()
            previous = None
        if previous and previous.get("box_dir") == box_dir and self.is_up():
            domain_type = str(previous["domain_type"])  # a running lab keeps its accelerator
        else:
            domain_type = self.domain_type(box_dir)
        values = lab_settings.vagrant_settings(self.settings, box_dir, domain_type)
        lab_settings.write_vagrant_settings(values)
        self.prune_boxes(keep=values["box_name"])
        self.clear_foreign_leftovers(values["prefix"])
        self.clear_own_orphans(values["prefix"])
        try:
            self.nodes_up()
            self.fencing()
            self.provision_nodes()
        except LabError:
            self.collect_logs()
            raise
        say(f"==> lab up in {time.monotonic() - started:.0f} s")
        if self.status():
            return
        self.heal()
        if not self.status():
            raise LabError(f"the lab came up but is not healthy (table above); logs in {LOG_DIR}")

    @step("heal: power-cycle the nodes")
    def heal(self) -> None:
        """An unhealthy cluster stack (a lost member, an abandoned or stopped lockspace, a
        virtdlmd stuck in the kernel) does not recover in place: dlm_controld cannot restart
        over a lockspace it does not control. Power-cycle every node, as fencing would, and
        wait for the cluster's own checks (the table above says what was wrong)."""
        say("    the lab is not healthy: power-cycling every node to restart the cluster stack")
        self.power_cycle()
        nodes = self.nodes.all()

        def cluster_ok() -> bool:
            checks = [c for n in nodes.values() for c in node_checks(n, self.settings)]
            return all(c.ok for c in checks)

        try:
            wait_for(
                cluster_ok, HEAL_TIMEOUT_S, 10.0, "the nodes' health checks after a power cycle"
            )
        except LabError as err:
            say(f"    not healthy after the power cycle: {str(err).splitlines()[0]}")

    def is_up(self) -> bool:
        """Both nodes exist and run (whether they are healthy is status()'s question)."""
        if not os.path.exists(lab_settings.VAGRANT_SETTINGS):
            return False
        try:
            return self.nodes.all_running()
        except VagrantError:
            return False

    def status(self) -> bool:
        checks: list[Check] = [self.fence_daemon_check()]
        checks += run_checks(self.nodes.all(), self.settings)
        print(format_table(checks))
        return all(c.ok for c in checks)

    def fence_daemon_check(self) -> Check:
        name = "fence_virtd on the management bridge"
        if not self.settings["fencing"]:
            return Check(name, "host", True, "not running: fencing: false (UNSAFE under a split)")
        pid = fencing.running_pid()
        address = fencing.bridge_address(str(self.settings["management_subnet"]))
        ok = pid is not None and fencing.listening(address, fencing.FENCE_PORT)
        detail = f"pid {pid}, {address}:{fencing.FENCE_PORT}" if ok else "not running: make lab"
        return Check(name, "host", ok, detail)

    def collect_logs(self) -> None:
        for name, why in self.nodes.collect_journals(LOG_DIR).items():
            say(f"{name}: no journal: {why}")
        say(f"node logs collected under {LOG_DIR} (journal, serial console, vagrant.log)")

    def destroy_all(self, previous: dict[str, Any]) -> None:
        """Destroy a lab brought up with other settings: vagrant reads its nodes from the
        settings file, so the old one is put back first; the rest goes by name prefix."""
        lab_settings.write_vagrant_settings(previous)
        self.destroy()

    def destroy(self) -> None:
        if os.path.exists(lab_settings.VAGRANT_SETTINGS):
            try:
                self.vagrant.destroy()
            except VagrantError as err:  # what it left is removed through libvirt below
                say(f"vagrant destroy failed; removing the nodes through libvirt: {err}")
        self.nodes.close()
        stopped = fencing.stop(self.who)
        if stopped is not None:
            say(f"stopped fence_virtd (pid {stopped})")
        with HostObjects() as host:
            for what in host.remove_lab(lab_settings.lab_prefix()):
                say(f"removed {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.cluster")
    parser.add_argument("action", choices=["up", "status", "destroy", "clean", "logs"])
    args = parser.parse_args(argv)
    try:
        lab = Lab()
        if args.action == "up":
            lab.up()
        elif args.action == "status":
            return 0 if lab.status() else 1
        elif args.action == "logs":
            lab.collect_logs()
        else:  # destroy; clean also drops the cached boxes
            access.check(lab.who, building_box=False)
            lab.destroy()
            if args.action == "clean":
                lab.prune_boxes(keep=None)
    except LabError as err:
        print(f"lab: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
