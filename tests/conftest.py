"""Fixtures the lab tiers share: the two-node Vagrant lab, brought up if it is not up.

lab.cluster is imported inside the fixtures: the unit tier also runs inside the lab's
nodes (the contract suite on libdlm), where the host-side lab kit is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lab.cluster import Lab
    from lab.nodes.node import Node


@pytest.fixture(scope="session")
def lab() -> Lab:
    from lab.cluster import Lab

    lab = Lab()
    if not lab.is_up():
        lab.up()
    return lab


@pytest.fixture(scope="session")
def nodes(lab: Lab) -> dict[str, Node]:
    from lab.cluster import NODES

    return {name: lab.nodes.node(name) for name in NODES}
