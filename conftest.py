"""Options, markers and fixtures every test tier shares."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "plugin"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--driver",
        default=os.path.join(ROOT, "build", "dlm.so"),
        help="path of the built lock driver dlm.so",
    )
    parser.addoption(
        "--no-writers",
        dest="writers",
        action="store_false",
        default=True,
        help="thesis VMs run firmware only instead of the writer guest (for the benchmark)",
    )


@pytest.fixture(scope="session")
def driver_path(request: pytest.FixtureRequest) -> str:
    path = request.config.getoption("--driver")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run 'make plugin' first")
    return str(path)


TIER_MARKERS = {  # tests/<dir>... -> marker
    ("blackbox", "local"): "local",
    ("blackbox", "cluster"): "lab",
    ("lab",): "lab",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(ROOT).parts
        if len(parts) < 2 or parts[0] != "tests":
            continue
        for prefix, marker in TIER_MARKERS.items():
            if parts[1 : 1 + len(prefix)] == prefix:
                item.add_marker(getattr(pytest.mark, marker))
