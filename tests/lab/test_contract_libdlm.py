"""The backend contract suite, unchanged, against the kernel DLM through libdlm in a node.

The same tests/unit/test_backend_contract.py that holds the model to the DLM's semantics
runs inside node-a against libdlm_lt (a lockspace of its own, 'vdltest'), orphans after
kill -9 and their adoption included: the model cannot drift from the real thing unseen.
"""

from __future__ import annotations

from lab.nodes.node import Node

CONTRACT_TIMEOUT_S = 600.0


def test_backend_contract_suite_passes_on_libdlm_in_node_a(nodes: dict[str, Node]) -> None:
    result = nodes["node-a"].run(
        "cd /opt/virtdlm && PYTHONPATH=/opt/virtdlm/plugin:/opt/virtdlm "
        "VIRTDLM_CONTRACT_BACKENDS=libdlm python3 -m pytest -q -p no:cacheprovider "
        "tests/unit/test_backend_contract.py",
        timeout_s=CONTRACT_TIMEOUT_S,
    )
    assert result.ok, result.describe()
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-800:]
