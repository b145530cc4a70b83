"""The lab's fencing and partition pieces that are decided by pure functions: fence_virtd's
configuration, the host's bridge address, the nftables cut, the provisioning's request for
a power cycle, and the health check's reading of `fence_virt -o list`."""

from __future__ import annotations

import pytest

from lab.host import fencing
from lab.nodes.health import parse_fence_list
from lab.nodes.provisioning import RESTART_NEEDED, restart_needed
from lab.suite import partition

MEMBERS = [
    fencing.Member(
        "virtdlm-abc123-node-a", "11111111-2222-3333-4444-555555555555", "192.168.123.17"
    ),
    fencing.Member(
        "virtdlm-abc123-node-b", "66666666-7777-8888-9999-000000000000", "192.168.123.42"
    ),
]


def test_bridge_address_is_the_subnets_first_host() -> None:
    assert fencing.bridge_address("192.168.123.0/24") == "192.168.123.1"
    assert fencing.bridge_address("10.9.0.0/16") == "10.9.0.1"


def test_fence_virtd_listens_on_the_bridge_only_and_allows_only_the_lab_nodes() -> None:
    text = fencing.conf_text("192.168.123.1", 1229, "/k", "virtdlm-abc123", MEMBERS)
    assert 'listener = "tcp";' in text and 'backend = "libvirt";' in text
    assert 'address = "192.168.123.1";' in text and 'port = "1229";' in text
    assert 'key_file = "/k";' in text and 'uri = "qemu:///system";' in text
    groups = text[text.index("groups {") :]
    for m in MEMBERS:
        assert f'uuid = "{m.uuid}";' in groups and f'ip = "{m.ip}";' in groups
        # dlm.conf's plug= names the domain: fence_virtd matches it against `uuid =` too
        assert f'uuid = "{m.domain}";' in groups
    assert groups.count("uuid =") == 4 and groups.count("ip =") == 2
    # balanced braces: fence_virtd's parser refuses the whole file otherwise
    assert text.count("{") == text.count("}")


def test_a_cut_in_both_directions_drops_to_and_from_the_peers() -> None:
    script = partition.nft_script(["192.168.124.11", "192.168.124.11"])
    assert script.startswith(f"table inet {partition.TABLE}\ndelete table inet {partition.TABLE}\n")
    assert "hook input priority -300" in script and "hook output priority -300" in script
    assert "ip saddr { 192.168.124.11 } counter drop" in script
    assert "ip daddr { 192.168.124.11 } counter drop" in script


@pytest.mark.parametrize(
    ("direction", "hooks"),
    [(partition.INBOUND, ["input"]), (partition.OUTBOUND, ["output"])],
)
def test_a_one_way_cut_has_one_chain(direction: str, hooks: list[str]) -> None:
    script = partition.nft_script(["10.0.0.2", "10.0.0.3"], direction)
    assert [h for h in ("input", "output") if f"hook {h} " in script] == hooks
    assert "{ 10.0.0.2, 10.0.0.3 }" in script


def test_a_cut_needs_a_peer_and_a_known_direction() -> None:
    with pytest.raises(ValueError, match="at least one peer"):
        partition.nft_script([])
    with pytest.raises(ValueError, match="expected one of both, inbound, outbound"):
        partition.nft_script(["10.0.0.2"], "sideways")


def test_restart_needed_names_the_nodes_that_asked_for_a_power_cycle() -> None:
    shown = [
        f"node-a: {RESTART_NEEDED} /etc/dlm/dlm.conf changed while lockspaces exist",
        "[node-a base] ok (changed: /etc/dlm/dlm.conf)",
        "[node-b base] ok (changed: nothing)",
    ]
    assert restart_needed(shown) == ["node-a"]
    assert restart_needed(shown[1:]) == []


def test_fence_list_gives_the_domain_names() -> None:
    out = (
        "virtdlm-abc123-node-a            11111111-2222-3333-4444-555555555555 on\n"
        "virtdlm-abc123-node-b            66666666-7777-8888-9999-000000000000 on\n"
    )
    assert parse_fence_list(out) == ["virtdlm-abc123-node-a", "virtdlm-abc123-node-b"]
    assert parse_fence_list("") == []


def test_provisioning_names_the_node_of_a_restart_request_wherever_it_printed_it() -> None:
    from lab.nodes.provisioning import provision

    class Printed:
        def __init__(self, name: str, out: str) -> None:
            self.name, self.out = name, out

        def check(self, command: str, timeout_s: float) -> object:
            return type("R", (), {"stdout": self.out})()

    nodes = [
        Printed("node-a", "[node-a base] ok (changed: nothing)\n"),
        Printed("node-b", f"{RESTART_NEEDED} dlm.conf changed\n[node-b base] ok\n"),
    ]
    shown = provision(nodes, "base")  # type: ignore[arg-type]
    assert f"node-b: {RESTART_NEEDED} dlm.conf changed" in shown
    assert restart_needed(shown) == ["node-b"]
