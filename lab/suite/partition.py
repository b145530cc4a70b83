"""Network partitions as faults: cut a node's cluster link, in both directions or one, and
heal it.

The cut is made inside the node with nftables, in a table of its own (so the host's rules
are never touched, and healing removes exactly what was added): packets to and/or from the
peers' cluster addresses are dropped at priority -300, before conntrack, so corosync (knet,
UDP 5405), the DLM (TCP 21064), NFS and migrations over the cluster network all stop. The
management network, over which the lab reaches the node and fence_virt reaches the host,
is not touched. A node power-cycled by a fence loses the table with its memory.

What the table says is decided by a pure function, tested on its text.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..nodes.node import Node

TABLE = "virtdlm_partition"
NFT_TIMEOUT_S = 20.0
BOTH, INBOUND, OUTBOUND = "both", "inbound", "outbound"
DIRECTIONS = (BOTH, INBOUND, OUTBOUND)


def nft_script(peers: Iterable[str], direction: str = BOTH) -> str:
    """An `nft -f` script that replaces the partition table: drop what comes from the
    peers (inbound), what goes to them (outbound), or both."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")
    addresses = sorted(set(peers))
    if not addresses:
        raise ValueError("a partition needs at least one peer address to cut off")
    wanted = ", ".join(addresses)
    chains = []
    if direction in (BOTH, INBOUND):
        chains.append(
            "  chain inbound {\n"
            "    type filter hook input priority -300; policy accept;\n"
            f"    ip saddr {{ {wanted} }} counter drop\n"
            "  }\n"
        )
    if direction in (BOTH, OUTBOUND):
        chains.append(
            "  chain outbound {\n"
            "    type filter hook output priority -300; policy accept;\n"
            f"    ip daddr {{ {wanted} }} counter drop\n"
            "  }\n"
        )
    # "table ...; delete table ...": the first line makes the delete safe when it is absent,
    # so the whole script replaces the table in one transaction.
    return (
        f"table inet {TABLE}\ndelete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n{''.join(chains)}}}\n"
    )


def cut(node: Node, peers: Iterable[str], direction: str = BOTH) -> None:
    """Cut `node` off from `peers` (cluster addresses); replaces an earlier cut."""
    script = nft_script(peers, direction)
    node.check(f"nft -f - <<'EOF'\n{script}EOF", timeout_s=NFT_TIMEOUT_S)


def heal(node: Node) -> None:
    """Remove the cut (nothing to do if there is none)."""
    node.check(
        f"nft list table inet {TABLE} >/dev/null 2>&1 && nft delete table inet {TABLE}; true",
        timeout_s=NFT_TIMEOUT_S,
    )


def is_cut(node: Node) -> bool:
    return node.run(f"nft list table inet {TABLE}", timeout_s=NFT_TIMEOUT_S).ok
