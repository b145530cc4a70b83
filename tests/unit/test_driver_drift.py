"""The C driver and the Python side state the same protocol facts: nothing may drift.

The driver cannot import plugin/virtdlm, so it keeps copies: limits, defaults, the timeout it
waits for a reply, the daemon's error codes and the libvirt error each becomes. This file reads
those copies from the C sources (driver_source.py) and compares them with protocol.py,
client.py, config.py, virtdlm.errors.ErrorCode, docs/protocol.md's error table, libvirt-python
and the ctypes mirror of the ABI (driver_abi.py). No dlm.so and no daemon needed.
"""

from __future__ import annotations

import ast
import glob
import os

import libvirt
import pytest

import virtdlm
from virtdlm import client, config, protocol
from virtdlm.errors import ErrorCode

from . import driver_abi as abi
from . import driver_source as src

REPLY_MARGIN_S = 2.0  # the reply's way back after the daemon's deadline: a busy loop, one write

# -- limits, defaults, timeouts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("c_name", "python_value"),
    [
        ("VDL_PROTOCOL_VERSION", protocol.PROTOCOL_VERSION),
        ("VDL_FRAME_HEADER_BYTES", protocol.HEADER.size),
        ("VDL_MAX_FRAME_BYTES", protocol.MAX_FRAME_BYTES),
        ("VDL_MAX_RESOURCES", protocol.MAX_RESOURCES_PER_REQUEST),
        ("VDL_MAX_PATH_BYTES", protocol.MAX_PATH_BYTES),
        ("VDL_MAX_NAME_BYTES", protocol.MAX_NAME_BYTES),
        ("VDL_DEFAULT_SOCKET_PATH", config.DEFAULT_SOCKET_PATH),
    ],
)
def test_driver_limits_and_defaults_are_the_protocols(c_name: str, python_value: object) -> None:
    assert src.define(c_name) == python_value


def test_both_clients_wait_as_long_for_a_reply() -> None:
    """dlm.so and virtdlm.client (CLI, lab, tests) give virtdlmd the same time to answer."""
    assert src.int_define("VDL_IO_TIMEOUT_MS") == client.REPLY_TIMEOUT_S * 1000


def _daemon_constant(name: str) -> float:
    """A module-level number of the daemon, wherever in plugin/virtdlm it is assigned now
    (read with ast, so that a module being rewritten elsewhere is not imported here)."""
    found: dict[str, float] = {}
    for path in glob.glob(
        os.path.join(os.path.dirname(virtdlm.__file__), "**", "*.py"), recursive=True
    ):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in tree.body:
            target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            value = getattr(node, "value", None)
            if (
                isinstance(target, ast.Name)
                and target.id == name
                and isinstance(value, ast.Constant)
                and isinstance(value.value, int | float)
            ):
                found[path] = float(value.value)
    if len(set(found.values())) != 1:  # not an AssertionError: a wrong name is not a drift
        raise LookupError(f"{name}: want one value in plugin/virtdlm, found {found}")
    return next(iter(found.values()))


def test_virtdlmd_answers_before_the_driver_gives_up() -> None:
    """Every wait of a request (disk identities, the decision lock, the worker's queue, the
    backend call) is bounded by what is left of REQUEST_TIMEOUT_S, so virtdlmd answers, with
    TIMEOUT at worst, while dlm.so and virtdlm.client still listen: libvirt never sees an
    acquire fail that the daemon then grants (a late grant is released, test_late_grant.py)."""
    request_s = _daemon_constant("REQUEST_TIMEOUT_S")
    assert _daemon_constant("IDENTITY_TIMEOUT_S") < request_s
    assert request_s + REPLY_MARGIN_S <= src.int_define("VDL_IO_TIMEOUT_MS") / 1000


# -- error codes -----------------------------------------------------------------------------


def test_the_driver_knows_every_daemon_error_code_by_its_name() -> None:
    assert src.error_codes() == {c.name: int(c) for c in ErrorCode}


def test_the_driver_maps_error_codes_as_documented() -> None:
    documented = src.documented_error_map()
    assert {code: name for code, (name, _, _) in documented.items()} == {
        int(c): c.name for c in ErrorCode
    }
    assert src.error_map() == {code: number for code, (_, _, number) in documented.items()}
    for _, libvirt_name, number in documented.values():
        assert getattr(libvirt, libvirt_name) == number, libvirt_name


@pytest.mark.parametrize(
    ("c_name", "libvirt_name"),
    [
        ("VDL_FROM_LOCKING", "VIR_FROM_LOCKING"),
        ("VDL_ERR_INTERNAL_ERROR", "VIR_ERR_INTERNAL_ERROR"),
        ("VDL_ERR_OPERATION_FAILED", "VIR_ERR_OPERATION_FAILED"),
        ("VDL_ERR_RESOURCE_BUSY", "VIR_ERR_RESOURCE_BUSY"),
    ],
)
def test_libvirt_error_numbers_are_libvirts(c_name: str, libvirt_name: str) -> None:
    assert src.define(c_name) == getattr(libvirt, libvirt_name)


# -- on_lockfailure: libvirt's numbers, the driver's names, the protocol's names ---------------


def test_the_driver_names_each_lock_failure_action_as_the_protocol_does() -> None:
    """drvAcquire's action is libvirt's virDomainLockFailureAction (0..4, FACTS §1); the
    driver sends the protocol's name for each, in libvirt's order."""
    assert src.action_names() == dict(enumerate(protocol.ACTIONS))
    mirror = {name: getattr(abi, f"ACTION_{name.upper()}") for name in protocol.ACTIONS}
    assert mirror == {name: number for number, name in enumerate(protocol.ACTIONS)}


# -- the ABI: dlm_driver.h and its ctypes mirror ---------------------------------------------


@pytest.mark.parametrize(
    ("c_name", "mirror"),
    [
        ("VDL_LOCK_MANAGER_VERSION", abi.LOCK_MANAGER_VERSION),
        ("VDL_OBJECT_TYPE_DOMAIN", abi.OBJECT_TYPE_DOMAIN),
        ("VDL_NEW_STARTED", abi.NEW_STARTED),
        ("VDL_RESOURCE_TYPE_DISK", abi.RESOURCE_TYPE_DISK),
        ("VDL_RESOURCE_TYPE_LEASE", abi.RESOURCE_TYPE_LEASE),
        ("VDL_RESOURCE_READONLY", abi.RESOURCE_READONLY),
        ("VDL_RESOURCE_SHARED", abi.RESOURCE_SHARED),
        ("VDL_ACQUIRE_REGISTER_ONLY", abi.ACQUIRE_REGISTER_ONLY),
        ("VDL_ACQUIRE_RESTRICT", abi.ACQUIRE_RESTRICT),
    ],
)
def test_the_header_and_its_ctypes_mirror_agree(c_name: str, mirror: int) -> None:
    assert src.define(c_name) == mirror


def test_parameter_types_agree() -> None:
    header = {k.removeprefix("VDL_"): v for k, v in src.enum_values().items() if "_PARAM_" in k}
    mirror = {k: v for k, v in vars(abi).items() if k.startswith("PARAM_") and k != "PARAM_BYTES"}
    assert header == mirror
