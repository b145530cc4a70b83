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


@pytest.fixture(scope="session")
def driver_path(request: pytest.FixtureRequest) -> str:
    path = request.config.getoption("--driver")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run 'make plugin' first")
    return str(path)


TIER_MARKERS = {"blackbox": "local", "lab": "lab"}  # tests/<dir> -> marker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(ROOT).parts
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in TIER_MARKERS:
            item.add_marker(getattr(pytest.mark, TIER_MARKERS[parts[1]]))
