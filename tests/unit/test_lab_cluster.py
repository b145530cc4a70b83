"""The two-node lab's pure parts on captured text: vagrant, ssh-config, corosync, dlm_tool,
settings resolution."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lab.cluster import host_daemon_pid
from lab.command import alive
from lab.nodes.health import Check, format_table, parse_lockspace, parse_lockspaces, parse_quorum
from lab.nodes.node import parse_ssh_config
from lab.nodes.vagrant import (
    Vagrant,
    VagrantError,
    VagrantTimeout,
    boot_or_network_timeout,
    parse_status,
)
from lab.settings import SettingsError, resolve
from lab.wait import LabError, wait_for

# Captured from vagrant 2.3.4 / vagrant-libvirt 0.11.2, corosync 3.1.7, dlm 4.2.0.
STATUS = """\
1763939000,node-a,metadata,provider,libvirt
1763939000,node-a,provider-name,libvirt
1763939000,node-a,state,running
1763939000,node-b,state,not_created
1763939000,,ui,info,Current machine states:
"""
SSH_CONFIG = """\
Host node-a
  HostName 192.168.123.36
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  IdentityFile /work/main/.vagrant/machines/node-a/libvirt/private_key
  IdentitiesOnly yes
"""
QUORUM = """\
Quorum information
------------------
Date:             Mon Nov 23 23:10:02 2026
Quorum provider:  corosync_votequorum
Nodes:            2
Node ID:          1
Ring ID:          1.9
Quorate:          Yes

Votequorum information
----------------------
Expected votes:   2
Flags:            2Node Quorate WaitForAll
"""
DLM_LS = """\
dlm lockspaces
name          vdltest
id            0x85693d0b

name          libvirt
id            0x021b96b7
members       1 2
"""
# node-b's view right after node-a failed: node 1 removed, recovery done (flags 0).
DLM_LS_AFTER_FAILURE = """\
dlm lockspaces
name          libvirt
id            0x021b96b7
flags         0x00000000 
change        member 1 joined 0 remove 1 failed 1 seq 4,4
members       2 
"""
YAML = "memory_mib: 2048\naccel: auto\nnfs_locking: false\nlock_manager: dlm\n"


def test_vagrant_status() -> None:
    assert [(m.name, m.state) for m in parse_status(STATUS)] == [
        ("node-a", "running"),
        ("node-b", "not_created"),
    ]


def test_ssh_config() -> None:
    c = parse_ssh_config(SSH_CONFIG)
    assert (c.host, c.port, c.user) == ("192.168.123.36", 22, "vagrant")
    assert c.identity.endswith("node-a/libvirt/private_key")
    with pytest.raises(LabError, match="lacks hostname"):
        parse_ssh_config("Host x\n  User vagrant\n")


def test_corosync_quorum_and_dlm_lockspaces() -> None:
    assert parse_quorum(QUORUM) == (True, 2)
    assert parse_quorum(QUORUM.replace("Quorate:          Yes", "Quorate:          No")) == (
        False,
        2,
    )
    assert parse_lockspaces(DLM_LS) == ["vdltest", "libvirt"]


def test_retry_only_boot_and_network_timeouts() -> None:
    assert boot_or_network_timeout("Timed out while waiting for the machine to boot")
    assert not boot_or_network_timeout("The box 'x' could not be found")


def test_health_table_marks_failures() -> None:
    table = format_table(
        [Check("corosync", "node-a", True, "ok"), Check("dlm", "node-b", False, "lockspaces: none")]
    )
    assert table.splitlines()[2].split()[:3] == ["dlm", "node-b", "NO"]


def test_settings_env_overrides_are_typed_and_checked() -> None:
    s = resolve(
        YAML, {"VIRTDLM_LAB_MEMORY_MIB": "3072", "VIRTDLM_LAB_NFS_LOCKING": "yes", "PATH": "/bin"}
    )
    assert (s["memory_mib"], s["nfs_locking"], s["accel"]) == (3072, True, "auto")
    with pytest.raises(SettingsError, match="VIRTDLM_LAB_COLOUR: no such lab setting"):
        resolve(YAML, {"VIRTDLM_LAB_COLOUR": "red"})
    with pytest.raises(SettingsError, match="expected an integer"):
        resolve(YAML, {"VIRTDLM_LAB_MEMORY_MIB": "lots"})
    with pytest.raises(SettingsError, match="expected auto, kvm or tcg"):
        resolve(YAML, {"VIRTDLM_LAB_ACCEL": "hvf"})


def _fake_vagrant(tmp_path: Path, script: str) -> dict[str, str]:
    exe = tmp_path / "vagrant"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


def test_a_hung_vagrant_is_a_timeout_not_a_hang(tmp_path: Path) -> None:
    env = _fake_vagrant(tmp_path, "echo '==> node-a: Waiting for machine to boot'; sleep 30")
    v = Vagrant(str(tmp_path), str(tmp_path / "vagrant.log"), env)
    started = time.monotonic()
    with pytest.raises(VagrantTimeout, match="did not finish in 1 s"):
        v._stream(["up"], 1.0, "up")
    assert time.monotonic() - started < 10
    assert "Waiting for machine to boot" in (tmp_path / "vagrant.log").read_text()


def test_a_failing_vagrant_raises_with_the_log_tail(tmp_path: Path) -> None:
    env = _fake_vagrant(tmp_path, "echo 'The box could not be found'; exit 3")
    v = Vagrant(str(tmp_path), str(tmp_path / "vagrant.log"), env)
    with pytest.raises(VagrantError, match=r"(?s)failed \(rc 3\).*The box could not be found"):
        v._stream(["up"], 30.0, "up")


def test_lockspace_members_and_flags_before_and_after_a_node_failure() -> None:
    assert parse_lockspace(DLM_LS, "libvirt") == ([1, 2], -1)
    assert parse_lockspace(DLM_LS_AFTER_FAILURE, "libvirt") == ([2], 0)
    assert parse_lockspace(DLM_LS, "vdltest") == ([], -1)
    assert parse_lockspace(DLM_LS, "other") is None


def test_the_host_daemon_is_found_by_its_pid_file_never_by_name_or_as_a_zombie(
    tmp_path: Path,
) -> None:
    """The local tier's libvirtd, just stopped, lingers as a zombie named "libvirtd" under
    an init that reaps late; mistaking it for the host's daemon left the host without one."""
    fake = tmp_path / "virtlogd"
    fake.symlink_to("/bin/sleep")  # its comm is "virtlogd"
    pidfile = tmp_path / "virtlogd.pid"
    assert host_daemon_pid("virtlogd", str(tmp_path)) is None  # no pid file
    live = subprocess.Popen([str(fake), "30"])
    other = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen([str(fake), "0"])
    try:
        pidfile.write_text(f"{live.pid}\n")
        assert host_daemon_pid("virtlogd", str(tmp_path)) == live.pid
        pidfile.write_text(f"{other.pid}\n")  # a reused pid now runs something else
        assert host_daemon_pid("virtlogd", str(tmp_path)) is None
        wait_for(lambda: not alive(zombie.pid), 10, 0.01, "the child to exit (unreaped)")
        pidfile.write_text(f"{zombie.pid}\n")  # exited, not yet reaped
        assert host_daemon_pid("virtlogd", str(tmp_path)) is None
        pidfile.write_text("garbage\n")
        assert host_daemon_pid("virtlogd", str(tmp_path)) is None
    finally:
        for proc in (live, other, zombie):
            proc.kill()
            proc.wait()
