"""The lab's nodes as vagrant machines (make lab, make lab-status): up, states, a Node each.

``Machines.up`` retries once on a boot or network timeout; ``node(name)`` saves the node's
`vagrant ssh-config` under .lab/ssh/ and opens a Node (testinfra over paramiko) with it;
``collect_journals`` keeps the nodes' journals for a failed run. Which libvirt domains are
orphans of an earlier lab is decided by a pure function.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from ..settings import lab_node_names
from ..wait import LabError
from .node import Node
from .vagrant import Vagrant, VagrantError, boot_or_network_timeout

NODES = lab_node_names()  # node-a, node-b, ...: lab/settings.yaml `nodes`
JOURNAL_UNITS = ("corosync", "dlm", "libvirtd", "virtdlmd", "nfs-server")
JOURNAL_LINES = 2000
JOURNAL_TIMEOUT_S = 60.0
RETRY_LOG_LINES = 60
ABSENT = (None, "not_created")  # vagrant has no such machine


def orphans(
    domains: Iterable[str], prefix: str, names: Iterable[str], states: Mapping[str, str]
) -> list[str]:
    """This checkout's node domains that vagrant has no record of (its .vagrant state went
    with an earlier clone at this path): they would block `vagrant up`. None while vagrant
    knows any of its machines."""
    if any(states.get(n) not in ABSENT for n in names):
        return []
    ours = {prefix + n for n in names}
    return sorted(d for d in domains if d in ours)


class Machines:
    def __init__(self, vagrant: Vagrant, ssh_dir: str, names: tuple[str, ...] = NODES) -> None:
        self.vagrant = vagrant
        self.ssh_dir = ssh_dir
        self.names = names
        self._nodes: dict[str, Node] = {}

    def node(self, name: str) -> Node:
        if name not in self._nodes:
            os.makedirs(self.ssh_dir, mode=0o700, exist_ok=True)
            path = os.path.join(self.ssh_dir, f"{name}.config")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(self.vagrant.ssh_config(name))
            self._nodes[name] = Node.from_ssh_config(name, path)
        return self._nodes[name]

    def all(self) -> dict[str, Node]:
        return {n: self.node(n) for n in self.names}

    def up(self, on_retry: Callable[[str], object] | None = None) -> None:
        """Bring the machines up, once more after a boot or network timeout (`on_retry`
        hears why, before the second try)."""
        try:
            self.vagrant.up()
            return
        except VagrantError as err:  # VagrantTimeout included
            if not boot_or_network_timeout(str(err) + self.vagrant.log_tail(RETRY_LOG_LINES)):
                raise
            if on_retry is not None:
                on_retry(str(err).splitlines()[0])
        self.vagrant.up()

    def states(self) -> dict[str, str]:
        """vagrant's state of each machine ("running", "not_created", ...)."""
        return {m.name: m.state for m in self.vagrant.status()}

    def all_running(self) -> bool:
        states = self.states()
        return all(states.get(n) == "running" for n in self.names)

    def collect_journals(self, log_dir: str) -> dict[str, str]:
        """Save each node's journal under `log_dir`; the nodes it could not reach, and why."""
        os.makedirs(log_dir, exist_ok=True)
        units = " ".join(f"-u {u}" for u in JOURNAL_UNITS)
        failed = {}
        for name in self.names:
            try:
                out = self.node(name).run(
                    f"journalctl --no-pager -b {units} | tail -n {JOURNAL_LINES}",
                    timeout_s=JOURNAL_TIMEOUT_S,
                )
            except LabError as err:
                failed[name] = str(err).splitlines()[0]
                continue
            with open(os.path.join(log_dir, f"{name}-journal.log"), "w", encoding="utf-8") as f:
                f.write(out.stdout)
        return failed

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()
        self._nodes.clear()
