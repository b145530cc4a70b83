"""The two-node lab's pure parts on captured text: corosync, dlm_tool, the health table,
settings resolution, and which domains are orphans of an earlier lab."""

from __future__ import annotations

import pytest

from lab.nodes.health import Check, format_table, parse_lockspace, parse_lockspaces, parse_quorum
from lab.nodes.machines import NODES, orphans
from lab.settings import SettingsError, cluster_addresses, node_list, resolve

# Captured from corosync 3.1.7, dlm 4.2.0.
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
YAML = (
    "memory_mib: 2048\naccel: auto\nnfs_locking: false\nlock_manager: dlm\nnodes: 2\n"
    "cluster_subnet: 192.168.124.0/24\n"
)


def test_corosync_quorum_and_dlm_lockspaces() -> None:
    assert parse_quorum(QUORUM) == (True, 2)
    assert parse_quorum(QUORUM.replace("Quorate:          Yes", "Quorate:          No")) == (
        False,
        2,
    )
    assert parse_lockspaces(DLM_LS) == ["vdltest", "libvirt"]


def test_lockspace_members_and_flags_before_and_after_a_node_failure() -> None:
    assert parse_lockspace(DLM_LS, "libvirt") == ([1, 2], -1)
    assert parse_lockspace(DLM_LS_AFTER_FAILURE, "libvirt") == ([2], 0)
    assert parse_lockspace(DLM_LS, "vdltest") == ([], -1)
    assert parse_lockspace(DLM_LS, "other") is None


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


P = "virtdlm-1a2b3c-"
DOMAINS = [f"{P}node-a", f"{P}node-b", f"{P}vm-9", "virtdlm-ffffff-node-a", "other"]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({}, [f"{P}node-a", f"{P}node-b"]),
        ({"node-a": "not_created", "node-b": "not_created"}, [f"{P}node-a", f"{P}node-b"]),
        ({"node-a": "running", "node-b": "not_created"}, []),
        ({"node-a": "poweroff"}, []),
    ],
    ids=["vagrant-knows-nothing", "not-created", "one-known", "one-stopped"],
)
def test_orphans_are_our_nodes_only_when_vagrant_knows_none(
    states: dict[str, str], expected: list[str]
) -> None:
    assert orphans(DOMAINS, P, NODES, states) == expected


def test_the_node_count_names_and_addresses_every_node() -> None:
    three = resolve(YAML, {"VIRTDLM_LAB_NODES": "3"})
    assert node_list(three) == [
        {"name": "node-a", "id": 1, "ip": "192.168.124.11"},
        {"name": "node-b", "id": 2, "ip": "192.168.124.12"},
        {"name": "node-c", "id": 3, "ip": "192.168.124.13"},
    ]
    assert cluster_addresses(resolve(YAML, {})) == {
        "node-a": "192.168.124.11",
        "node-b": "192.168.124.12",
    }
    for bad in ("1", "6"):
        with pytest.raises(SettingsError, match="nodes .*expected 2 to 5"):
            resolve(YAML, {"VIRTDLM_LAB_NODES": bad})
    with pytest.raises(SettingsError, match="has no address .11 for node-a"):
        resolve(YAML, {"VIRTDLM_LAB_CLUSTER_SUBNET": "10.0.0.0/29"})
    with pytest.raises(SettingsError, match="cluster_subnet"):
        resolve(YAML, {"VIRTDLM_LAB_CLUSTER_SUBNET": "10.0.0.1/24"})
