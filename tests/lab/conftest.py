"""Fixtures of the lab tier: the two-node Vagrant lab, brought up if it is not up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.cluster import NODES, Lab
from lab.node import Node


@pytest.fixture(scope="session")
def cluster() -> Iterator[Lab]:
    lab = Lab()
    if not lab.is_up():
        lab.up()
    yield lab


@pytest.fixture(scope="session")
def nodes(cluster: Lab) -> dict[str, Node]:
    return {name: cluster.node(name) for name in NODES}
