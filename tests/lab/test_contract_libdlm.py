"""The backend contract suite, unchanged, against the kernel DLM through libdlm in a node.

The same tests/unit/test_backend_contract.py that holds the model to the DLM's semantics
runs inside node-a against libdlm_lt (a lockspace of its own, 'vdltest'), orphans after
kill -9 and their adoption included: the model cannot drift from the real thing unseen.
"""

from __future__ import annotations

from lab.nodes import NODE_TREE
from lab.nodes.node import Node
from lab.suite.on_node import node_python
from lab.suite.steps import NODE_A

CONTRACT_TIMEOUT_S = 600.0


def test_backend_contract_suite_passes_on_libdlm_in_node_a(nodes: dict[str, Node]) -> None:
    pytest_in_node = node_python(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/unit/test_backend_contract.py",
        env={"VIRTDLM_CONTRACT_BACKENDS": "libdlm"},
    )
    result = nodes[NODE_A].run(f"cd {NODE_TREE} && {pytest_in_node}", timeout_s=CONTRACT_TIMEOUT_S)
    assert result.ok, result.describe()
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-800:]
