"""The two-node lab: bring it up, check its health, tear it down.

    python -m lab.cluster up       make lab: host packages, host libvirtd, box, nodes, provision
    python -m lab.cluster status   make lab-status: the health table; exit 1 if unhealthy
    python -m lab.cluster destroy  make lab-destroy: this checkout's nodes, networks, volumes

Every step prints its elapsed time; on failure the nodes' logs are collected under
.lab/logs/ and the message says where.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import sys
import tarfile
import time
from collections.abc import Callable
from typing import Any

from . import settings as lab_settings
from .command import alive, check, read_pid, run
from .host.accel import kvm_works
from .nodes.health import Check, format_table, run_checks
from .nodes.node import Node, parse_ssh_config
from .nodes.vagrant import Vagrant, VagrantError, VagrantTimeout, boot_or_network_timeout
from .wait import LabError, WaitTimeout, wait_for

REPO = lab_settings.REPO
LAB_DIR = lab_settings.LAB_DIR
LOG_DIR = os.path.join(LAB_DIR, "logs")
SECRETS_DIR = os.path.join(LAB_DIR, "secrets")
NODES = ("node-a", "node-b")
HOST_URI = "qemu:///system"
PROVISION_TIMEOUT_S = 600.0
AUTHKEY_BYTES = 256
PROVISIONED_MARK = "/opt/virtdlm-provisioned"  # on each node: the digest it was built from
JOURNAL_UNITS = ("corosync", "dlm", "libvirtd", "virtdlmd", "nfs-server")


def host_daemon_pid(name: str, run_dir: str = "/run") -> int | None:
    """The host's own libvirtd/virtlogd, by the pid file it writes as root, if it runs.

    Not by process name: the local tier's private daemons carry the same names, and under an
    init that reaps late the ones it just stopped linger as zombies for a minute.
    """
    pid = read_pid(os.path.join(run_dir, f"{name}.pid"))
    if pid is None or not alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii") as f:
            return pid if f.read().strip() == name else None  # not a reused pid
    except OSError:
        return None


def step(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Print a step's start and its elapsed time."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kw: Any) -> Any:
            started = time.monotonic()
            print(f"==> {name}", file=sys.stderr, flush=True)
            value = fn(*args, **kw)
            print(
                f"    {name}: done in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            return value

        return inner

    return wrap


class Lab:
    def __init__(self) -> None:
        self.settings = lab_settings.load()
        self.vagrant = Vagrant(REPO, os.path.join(LOG_DIR, "vagrant.log"))
        self._nodes: dict[str, Node] = {}

    # -- host -----------------------------------------------------------------------------

    @step("host packages")
    def host_packages(self) -> None:
        check([os.path.join(REPO, "scripts", "install-deps"), "lab"], timeout_s=1800)

    @step("host libvirtd")
    def host_libvirtd(self) -> None:
        """Start the host's libvirtd (and virtlogd) when no init system runs them."""
        if run(["virsh", "-c", HOST_URI, "version"], timeout_s=20).ok:
            return
        for daemon in ("virtlogd", "libvirtd"):
            if host_daemon_pid(daemon) is not None:
                continue
            check([daemon, "-d"], timeout_s=30)
        try:
            wait_for(
                lambda: run(["virsh", "-c", HOST_URI, "version"], timeout_s=20).ok,
                60,
                1,
                "the host's libvirtd to answer",
            )
        except WaitTimeout as err:
            pid = host_daemon_pid("libvirtd")
            state = f"runs as pid {pid} but does not answer: stop it," if pid else "is not running:"
            raise LabError(
                f"{err}: `virsh -c {HOST_URI} version` fails and the host's libvirtd {state} "
                "run `libvirtd --verbose` in a terminal to see why, or start it with your init "
                "system, then `make lab` again"
            ) from err

    @step("box")
    def box(self) -> str:
        if self.settings["box_dir"]:
            return str(self.settings["box_dir"])
        build = [os.path.join(REPO, "lab", "box", "build-box")]
        out = check(build, timeout_s=1800, show_progress=True)  # its steps, as they happen
        return out.stdout.strip().splitlines()[-1]

    def prune_boxes(self, keep: str | None) -> None:
        """Remove vagrant boxes (and their libvirt base volumes) of older box recipes."""
        boxes = run(["vagrant", "box", "list", "--machine-readable"], timeout_s=60).stdout
        names = {
            line.split(",")[3]
            for line in boxes.splitlines()
            if line.count(",") >= 3 and line.split(",")[2] == "box-name"
        }
        for name in sorted(names):
            if not name.startswith("virtdlm-debian12-") or name == keep:
                continue
            run(["vagrant", "box", "remove", "--force", "--all", name], timeout_s=120)
            vols = run(["virsh", "-c", HOST_URI, "vol-list", "default"], timeout_s=30).stdout
            for vol in (ln.split()[0] for ln in vols.splitlines() if ln.strip()):
                if vol.startswith(f"{name}_vagrant_box_image"):
                    run(
                        ["virsh", "-c", HOST_URI, "vol-delete", "--pool", "default", vol],
                        timeout_s=60,
                    )
            print(f"    removed the old box {name}", file=sys.stderr)

    @step("accelerator")
    def domain_type(self, box_dir: str) -> str:
        accel = self.settings["accel"]
        if accel == "auto":
            accel = "kvm" if kvm_works(os.path.join(box_dir, "vmlinuz")) else "tcg"
        print(f"    nodes run under {accel.upper()}", file=sys.stderr)
        return "kvm" if accel == "kvm" else "qemu"

    def authkey(self) -> str:
        path = os.path.join(SECRETS_DIR, "authkey")
        if not os.path.exists(path):
            os.makedirs(SECRETS_DIR, mode=0o700, exist_ok=True)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o400), "wb") as f:
                f.write(secrets.token_bytes(AUTHKEY_BYTES))
        return path

    def clear_foreign_leftovers(self, prefix: str) -> None:
        """Another checkout's stopped lab may hold our subnets: remove what is not running."""
        nets = run(["virsh", "-c", HOST_URI, "net-list", "--all", "--name"], timeout_s=30)
        for net in nets.stdout.split():
            if not net.startswith("virtdlm-") or net.startswith(prefix):
                continue
            doms = run(["virsh", "-c", HOST_URI, "list", "--name"], timeout_s=30).stdout.split()
            other = net.rsplit("-", 1)[0] + "-"
            if any(d.startswith(other) for d in doms):
                raise LabError(
                    f"another virtdlm lab ({other}*) is running on this host and "
                    "uses the same subnets: run 'make lab-destroy' in its checkout"
                )
            print(f"    removing leftover network {net} of a stopped lab", file=sys.stderr)
            run(["virsh", "-c", HOST_URI, "net-destroy", net], timeout_s=30)
            run(["virsh", "-c", HOST_URI, "net-undefine", net], timeout_s=30)

    def clear_own_orphans(self, prefix: str) -> None:
        """Nodes of this checkout's path that vagrant no longer knows (its .vagrant state
        went with an earlier clone at this path) would block `vagrant up`: remove them."""
        names = run(["virsh", "-c", HOST_URI, "list", "--all", "--name"], timeout_s=30).stdout
        ours = {n for n in names.split() if n in {prefix + node for node in NODES}}
        if not ours:
            return
        try:
            states = {m.name: m.state for m in self.vagrant.status()}
        except VagrantError:
            states = {}
        if any(states.get(n) not in (None, "not_created") for n in NODES):
            return  # vagrant knows its machines: nothing is orphaned
        print(
            f"    removing nodes {', '.join(sorted(ours))} left by an earlier lab at this "
            "path (vagrant has no record of them)",
            file=sys.stderr,
        )
        self.destroy()

    # -- nodes ----------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        if name not in self._nodes:
            self._nodes[name] = Node(name, parse_ssh_config(self.vagrant.ssh_config(name)))
        return self._nodes[name]

    @step("nodes up (vagrant)")
    def nodes_up(self) -> None:
        try:
            self.vagrant.up()
        except (VagrantTimeout, VagrantError) as err:
            if not boot_or_network_timeout(str(err) + self.vagrant.log_tail(60)):
                raise
            print("    boot or network timeout: retrying once", file=sys.stderr)
            self.vagrant.up()

    def tree_files(self) -> list[str]:
        """The tree as it is now: tracked and new files, not ignored ones."""
        out = check(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard"], timeout_s=30)
        return sorted(
            f for f in out.stdout.split("\n") if f and os.path.isfile(os.path.join(REPO, f))
        )

    def tree_digest(self) -> str:
        """What the nodes were provisioned from: every file's path and content, and the
        resolved settings. Equal digests mean provisioning again would change nothing."""
        h = hashlib.sha256()
        for rel in [*self.tree_files(), os.path.relpath(lab_settings.VAGRANT_SETTINGS, REPO)]:
            h.update(rel.encode() + b"\0")
            with open(os.path.join(REPO, rel), "rb") as f:
                h.update(f.read())
        return h.hexdigest()

    def provisioned_from(self, name: str) -> str:
        cmd = f"cat {PROVISIONED_MARK} 2>/dev/null"
        return self.node(name).run(cmd, timeout_s=30).stdout.strip()

    def tarball(self) -> str:
        path = os.path.join(LAB_DIR, "tree.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            for rel in self.tree_files():
                tar.add(os.path.join(REPO, rel), arcname=rel)
            tar.add(lab_settings.VAGRANT_SETTINGS, arcname=".lab/vagrant-settings.json")
        return path

    @step("copy the tree into the nodes")
    def upload(self) -> None:
        tree, key = self.tarball(), self.authkey()
        for name in NODES:
            n = self.node(name)
            n.put(tree, "/tmp/virtdlm-tree.tar.gz")
            n.put(key, "/tmp/virtdlm-authkey")
            n.check(
                "rm -rf /opt/virtdlm.new && mkdir -p /opt/virtdlm.new /opt/virtdlm-secrets "
                "&& tar -xzf /tmp/virtdlm-tree.tar.gz -C /opt/virtdlm.new "
                "&& install -m 0400 /tmp/virtdlm-authkey /opt/virtdlm-secrets/authkey "
                "&& rm -rf /opt/virtdlm && mv /opt/virtdlm.new /opt/virtdlm "
                "&& rm -f /tmp/virtdlm-tree.tar.gz /tmp/virtdlm-authkey"
            )

    def provision(self, phase: str, names: tuple[str, ...] = NODES, suffix: str = "") -> None:
        for name in names:
            out = self.node(name).check(
                f"/opt/virtdlm/lab/provision/node.sh {phase} {name} {suffix}".rstrip(),
                timeout_s=PROVISION_TIMEOUT_S,
            )
            for line in out.stdout.strip().splitlines()[-3:]:
                print(f"    {line}", file=sys.stderr)

    # -- the commands ---------------------------------------------------------------------

    def up(self) -> None:
        started = time.monotonic()
        self.host_packages()
        self.host_libvirtd()
        box_dir = self.box()
        previous = lab_settings.read_vagrant_settings()
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
            digest = self.tree_digest()
            if all(self.provisioned_from(n) == digest for n in NODES):
                print(
                    "==> nodes already provisioned from this tree and these settings",
                    file=sys.stderr,
                )
                # An interrupted control run may have left libvirtd on "nop": put back
                # the setting (a no-op that restarts nothing when it is in place).
                self.provision("lock-manager", suffix=str(self.settings["lock_manager"]))
            else:
                self.upload()
                step("provision: cluster")(self.provision)("base")
                step("provision: storage")(self.provision)("storage")
                step("provision: plugin")(self.provision)("plugin")
                for n in NODES:
                    self.node(n).check(f"echo {digest} > {PROVISIONED_MARK}")
        except LabError:
            self.collect_logs()
            raise
        print(f"==> lab up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        if not self.status():
            raise LabError(f"the lab came up but is not healthy (table above); logs in {LOG_DIR}")

    def is_up(self) -> bool:
        """Both nodes exist and run (whether they are healthy is status()'s question)."""
        if not os.path.exists(lab_settings.VAGRANT_SETTINGS):
            return False
        try:
            states = {m.name: m.state for m in self.vagrant.status()}
        except VagrantError:
            return False
        return all(states.get(n) == "running" for n in NODES)

    def status(self) -> bool:
        checks: list[Check] = run_checks({n: self.node(n) for n in NODES}, self.settings)
        print(format_table(checks))
        return all(c.ok for c in checks)

    def collect_logs(self) -> None:
        os.makedirs(LOG_DIR, exist_ok=True)
        for name in NODES:
            with contextlib.suppress(LabError):
                units = " ".join(f"-u {u}" for u in JOURNAL_UNITS)
                out = self.node(name).run(
                    f"journalctl --no-pager -b {units} | tail -n 2000", timeout_s=60
                )
                with open(os.path.join(LOG_DIR, f"{name}-journal.log"), "w") as f:
                    f.write(out.stdout)
        print(
            f"node logs collected under {LOG_DIR} (journal, serial console, vagrant.log)",
            file=sys.stderr,
        )

    def destroy(self) -> None:
        if os.path.exists(lab_settings.VAGRANT_SETTINGS):
            with contextlib.suppress(VagrantError):
                self.vagrant.destroy()
        prefix = lab_settings.lab_prefix()
        for kind, listing, remove in (
            ("domain", ["list", "--all", "--name"], [["destroy"], ["undefine", "--nvram"]]),
            ("network", ["net-list", "--all", "--name"], [["net-destroy"], ["net-undefine"]]),
        ):
            names = run(["virsh", "-c", HOST_URI, *listing], timeout_s=30).stdout.split()
            for name in names:
                if name.startswith(prefix):
                    for cmd in remove:
                        run(["virsh", "-c", HOST_URI, *cmd, name], timeout_s=60)
                    print(f"removed {kind} {name}", file=sys.stderr)
        vols = run(["virsh", "-c", HOST_URI, "vol-list", "default"], timeout_s=30).stdout
        for line in vols.splitlines():
            vol = line.split()[0] if line.split() else ""
            if vol.startswith(prefix):
                run(["virsh", "-c", HOST_URI, "vol-delete", "--pool", "default", vol], timeout_s=60)
                print(f"removed volume {vol}", file=sys.stderr)


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
        elif args.action == "clean":  # destroy, then drop the cached boxes too
            lab.destroy()
            lab.prune_boxes(keep=None)
        else:
            lab.destroy()
    except LabError as err:
        print(f"lab: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
