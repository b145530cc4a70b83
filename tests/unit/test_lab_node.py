"""A lab node through testinfra: the deadline on every command, and the health rows
(testinfra's own modules over a backend that answers with captured text)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from testinfra.backend.base import BaseBackend, CommandResult
from testinfra.backend.local import LocalBackend
from testinfra.host import Host

from lab.command import CommandTimeout
from lab.nodes.health import node_checks, parse_lock_manager
from lab.nodes.node import Deadlines, Node, SshConfig, parse_ssh_config, remote_command
from lab.settings import REPO, lab_prefix
from lab.wait import LabError, WaitTimeout, bounded_call

from .test_lab_cluster import DLM_LS, QUORUM

SSH = SshConfig("192.0.2.1", 22, "vagrant", "/dev/null")
SSH_CONFIG = f"""\
Host node-a
  HostName 192.168.123.36
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  IdentityFile {REPO}/.vagrant/machines/node-a/libvirt/private_key
  IdentitiesOnly yes
"""


class LocalDeadlines(Deadlines, LocalBackend):
    """This machine, with the nodes' deadlines (and no sudo)."""

    as_root = False


def local_node() -> Node:
    backend = LocalDeadlines()
    host = Host(backend)
    backend.set_host(host)
    return Node("local", SSH, host)


def test_ssh_config_is_read_as_paramiko_and_testinfra_read_it() -> None:
    c = parse_ssh_config(SSH_CONFIG, "node-a")
    assert (c.host, c.port, c.user) == ("192.168.123.36", 22, "vagrant")
    assert c.identity == f"{REPO}/.vagrant/machines/node-a/libvirt/private_key"
    with pytest.raises(LabError, match="has no Host node-b"):
        parse_ssh_config(SSH_CONFIG, "node-b")
    with pytest.raises(LabError, match="lacks IdentityFile"):
        parse_ssh_config("Host x\n  User vagrant\n", "x")


@pytest.mark.parametrize(
    ("command", "timeout_s", "sudo", "line"),
    [
        ("dlm_tool ls", 30.0, True, "sudo -n timeout -k 5 30 sh -c 'dlm_tool ls'"),
        ("echo 'a b'", 0.2, False, "timeout -k 5 1 sh -c 'echo '\"'\"'a b'\"'\"''"),
    ],
    ids=["as-root", "never-timeout-0"],
)
def test_every_remote_command_runs_under_timeout(
    command: str, timeout_s: float, sudo: bool, line: str
) -> None:
    assert remote_command(command, timeout_s, sudo) == line


def test_node_run_returns_the_result_and_a_timeout_raises() -> None:
    node = local_node()
    r = node.run("echo out; echo err >&2; exit 3", timeout_s=10, sudo=False)
    assert (r.node, r.rc, r.stdout, r.stderr) == ("local", 3, "out\n", "err\n")
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"\[local\] 'sleep 30' did not finish in 1 s"):
        node.run("sleep 30", timeout_s=1, sudo=False)
    assert time.monotonic() - started < 10
    assert node.host.file("/proc/self/status").contains("^Name:")  # testinfra's modules too


def test_bounded_call_gives_up_at_the_deadline_and_unblocks_the_call() -> None:
    release = threading.Event()
    with pytest.raises(WaitTimeout, match="the read did not finish in 0 s"):
        bounded_call(lambda: release.wait(30), 0.1, "the read", release.set)
    assert release.is_set()
    assert bounded_call(lambda: 7, 1, "seven") == 7
    with pytest.raises(ZeroDivisionError):
        bounded_call(lambda: 1 // 0, 1, "a division")


# -- the health rows, over testinfra's modules ----------------------------------------------

DLM_CONF = "enable_fencing=1\nprotocol=tcp\ndevice virt /usr/sbin/fence_virt ipaddr=...\n"
FENCE_LIST = "fence_virt -T 192.168.123.1 -p 1229 -t 15 -o list"
SETTINGS = {
    "mount_point": "/var/lib/libvirt/shared",
    "fencing": True,
    "management_subnet": "192.168.123.0/24",
}
MOUNTS = "node-a:/srv/images /var/lib/libvirt/shared nfs rw,vers=3,local_lock=all 0 0\n"
STATUS = {"backend": "libdlm", "node_id": 1, "locks": 0}
QEMU_CONF = '# lock manager\nlock_manager = "dlm"\n'
HEALTHY = {
    "uname -s": (0, "Linux\n"),
    "uname -r": (0, "6.1.0-28-amd64\n"),
    "uname -m": (0, "x86_64\n"),
    "test -d /run/systemd/system/": (0, ""),
    "systemctl is-active corosync": (0, "active\n"),
    "systemctl is-active virtdlmd": (0, "active\n"),
    "systemctl is-active libvirtd": (0, "active\n"),
    "corosync-quorumtool -s": (0, QUORUM),
    "dlm_tool ls": (0, DLM_LS),
    "cat /proc/mounts": (0, MOUNTS),
    "virtdlm status --json": (0, json.dumps(STATUS)),
    "virsh -c qemu:///system version": (0, "Compiled against library: libvirt 9.0.0\n"),
    "pidof libvirtd": (0, "812\n"),
    "grep -qs -- lock-driver/dlm.so /proc/812/maps": (0, ""),
    "cat -- /etc/libvirt/qemu.conf": (0, QEMU_CONF),
    "cat -- /etc/dlm/dlm.conf": (0, DLM_CONF),
    FENCE_LIST: (
        0,
        f"{lab_prefix()}node-a  {'1' * 32}  on\n{lab_prefix()}node-b  {'2' * 32}  on\n",
    ),
}
ROWS = [
    ("corosync quorate, 2 members", "quorate=True members=2"),
    ("dlm lockspace 'libvirt' joined", "lockspaces: vdltest, libvirt"),
    ("nfs share mounted", "nfs node-a:/srv/images"),
    ("virtdlmd up, backend libdlm", "backend=libdlm node_id=1 locks=0"),
    ("libvirtd uses the dlm lock manager", 'lock_manager = "dlm"'),
    (
        "fencing (fence_virt -o list)",
        "on: fence_virt reaches 192.168.123.1:1229, lists all 2 nodes",
    ),
]


class Canned(BaseBackend):
    """A node that answers each command with captured text (unknown: not found)."""

    NAME = "canned"

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        super().__init__("node-a")
        self.answers = answers

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        line = self.quote(command, *args)
        default = (3, "") if line.startswith("systemctl is-active") else (127, "")
        rc, out = self.answers.get(line, default)
        return self.result(rc, line.encode(), out.encode(), b"")


def canned_node(answers: dict[str, tuple[int, str]]) -> Node:
    backend = Canned(answers)
    host = Host(backend)
    backend.set_host(host)
    return Node("node-a", SSH, host)


@pytest.mark.parametrize(
    ("changes", "failed_row", "detail"),
    [
        ({}, None, ""),
        ({"corosync-quorumtool -s": (2, QUORUM.replace("Yes", "No"))}, 0, "quorate=False"),
        ({"systemctl is-active corosync": (3, "inactive\n")}, 0, "corosync is not running"),
        ({"dlm_tool ls": (0, "dlm lockspaces\nname vdltest\n")}, 1, "lockspaces: vdltest"),
        ({"cat /proc/mounts": (0, "")}, 2, "/var/lib/libvirt/shared not mounted"),
        ({"virtdlm status --json": (0, '{"backend": "model"}')}, 3, "backend=model"),
        ({"grep -qs -- lock-driver/dlm.so /proc/812/maps": (1, "")}, 4, "dlm.so not loaded"),
        ({FENCE_LIST: (1, "Timed out waiting for response\n")}, 5, "Timed out"),
        ({FENCE_LIST: (0, "")}, 5, "fence_virtd lists []"),
        ({"cat -- /etc/dlm/dlm.conf": (0, "enable_fencing=0\n")}, 5, "does not enable fencing"),
    ],
    ids=[
        "healthy",
        "not-quorate",
        "corosync-down",
        "no-lockspace",
        "unmounted",
        "model",
        "nop",
        "fence-host-unreachable",
        "fence-lists-nothing",
        "fencing-not-in-dlm-conf",
    ],
)
def test_health_rows_check_what_they_say(
    changes: dict[str, tuple[int, str]], failed_row: int | None, detail: str
) -> None:
    checks = node_checks(canned_node({**HEALTHY, **changes}), SETTINGS)
    assert [c.name for c in checks] == [name for name, _ in ROWS]
    for i, (check, (_, healthy_detail)) in enumerate(zip(checks, ROWS, strict=True)):
        assert check.node == "node-a"
        if i == failed_row:
            assert not check.ok and detail in check.detail, check
        else:
            assert check.ok and check.detail == healthy_detail, check


def test_without_fencing_the_row_says_the_lab_is_unsafe() -> None:
    node = canned_node({**HEALTHY, "cat -- /etc/dlm/dlm.conf": (0, "enable_fencing=0\n")})
    row = node_checks(node, {**SETTINGS, "fencing": False})[-1]
    assert row.ok and "UNSAFE under a network partition" in row.detail, row
    enabled = node_checks(canned_node(HEALTHY), {**SETTINGS, "fencing": False})[-1]
    assert not enabled.ok and "fencing: false, but dlm.conf enables fencing" in enabled.detail


def test_lock_manager_line() -> None:
    assert parse_lock_manager(QEMU_CONF) == 'lock_manager = "dlm"'
    assert parse_lock_manager('#lock_manager = "lockd"\n') is None
