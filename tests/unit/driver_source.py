"""The facts the C driver's sources state, read from the sources themselves.

The driver (plugin/driver/*.c, *.h) keeps its own copies of the protocol's limits, the daemon's
error codes and their libvirt errors: it cannot import Python. These readers let the tests
compare those copies with plugin/virtdlm (test_driver_drift.py) and drive the behaviour tests
from them, so no number is written a third time in a test.
"""

from __future__ import annotations

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER_DIR = os.path.join(REPO, "plugin", "driver")
PROTOCOL_DOC = os.path.join(REPO, "docs", "protocol.md")

# A string or char literal (kept), or a comment (dropped).
_LITERAL_OR_COMMENT = re.compile(
    r"(\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*')|/\*.*?\*/|//[^\n]*", re.S
)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(.+?)[ \t]*$", re.M)
_INT = re.compile(r"^\(?(-?(?:0x[0-9a-fA-F]+|\d+))[uUlL]*\)?$")
_SHIFT = re.compile(r"^\((\d+)[uU]?\s*<<\s*(\d+)\)$")
_STRING = re.compile(r'^"((?:[^"\\]|\\.)*)"$')
_ENUM = re.compile(r"\benum\s*\{([^}]*)\}")
_ENUM_ITEM = re.compile(r"\b(VDL_\w+)\s*=\s*(\d+)")
_MAP_ROW = re.compile(r"\{\s*(VDL_CODE_\w+)\s*,\s*(VDL_ERR_\w+)\s*\}")
_ACTION_ROW = re.compile(r"\[\s*(VDL_LOCK_FAILURE_\w+)\s*\]\s*=\s*\"(\w+)\"")
_DOC_ROW = re.compile(
    r"^\|\s*(\d+)\s*\|\s*`(\w+)`\s*\|.*\|\s*`(VIR_ERR_\w+)`\s*\((\d+)\)\s*\|$", re.M
)


def source_text() -> str:
    """Every .c and .h of the driver (not its fuzz shim), comments removed."""
    paths = sorted(glob.glob(os.path.join(DRIVER_DIR, "*.[ch]")))
    assert paths, f"no C sources in {DRIVER_DIR}"
    text = ""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text += _LITERAL_OR_COMMENT.sub(lambda m: m.group(1) or " ", f.read()) + "\n"
    return text


def defines() -> dict[str, int | str]:
    """#define NAME VALUE where VALUE is an integer, (1u << n) or a string literal."""
    found: dict[str, int | str] = {}
    for name, value in _DEFINE.findall(source_text()):
        if m := _INT.match(value):
            parsed: int | str = int(m.group(1), 0)
        elif m := _SHIFT.match(value):
            parsed = int(m.group(1)) << int(m.group(2))
        elif m := _STRING.match(value):
            parsed = m.group(1)
        else:
            continue  # an expression or a macro with arguments
        assert name not in found, f"{name} is defined twice in {DRIVER_DIR}"
        found[name] = parsed
    return found


def define(name: str) -> int | str:
    values = defines()
    assert name in values, f"#define {name} not found in {DRIVER_DIR}"
    return values[name]


def int_define(name: str) -> int:
    value = define(name)
    assert isinstance(value, int), f"{name} is not an integer: {value!r}"
    return value


def enum_values() -> dict[str, int]:
    """Every VDL_NAME = n inside an enum { ... } of the driver."""
    found: dict[str, int] = {}
    for body in _ENUM.findall(source_text()):
        for name, n in _ENUM_ITEM.findall(body):
            assert name not in found, f"{name} is declared twice in {DRIVER_DIR}"
            found[name] = int(n)
    return found


def error_codes() -> dict[str, int]:
    """The daemon error codes the driver knows: enum VDL_CODE_NAME = n, as {NAME: n}."""
    prefix = "VDL_CODE_"
    codes = {k.removeprefix(prefix): v for k, v in enum_values().items() if k.startswith(prefix)}
    assert codes, f"no {prefix}* enum in the driver"
    return codes


def error_map() -> dict[int, int]:
    """vdlErrorMap: daemon code -> libvirt error number, resolved through the sources."""
    text = source_text()
    codes = {f"VDL_CODE_{k}": v for k, v in error_codes().items()}
    rows = _MAP_ROW.findall(text)
    assert rows, "vdlErrorMap not found"
    mapped: dict[int, int] = {}
    for code, err in rows:
        assert codes[code] not in mapped, f"{code} is mapped twice"
        mapped[codes[code]] = int_define(err)
    return mapped


def action_names() -> dict[int, str]:
    """vdlActionName's table: drvAcquire's action number -> the name sent as "action"."""
    rows = _ACTION_ROW.findall(source_text())
    assert rows, "the lock failure action names (vdlActionName) not found"
    named: dict[int, str] = {}
    for macro, name in rows:
        number = int_define(macro)
        assert number not in named, f"{macro} is named twice"
        named[number] = name
    return named


def documented_error_map() -> dict[int, tuple[str, str, int]]:
    """docs/protocol.md's error table: code -> (NAME, libvirt error name, libvirt number)."""
    with open(PROTOCOL_DOC, encoding="utf-8") as f:
        rows = _DOC_ROW.findall(f.read())
    assert rows, f"no error table in {PROTOCOL_DOC}"
    return {int(code): (name, virt, int(num)) for code, name, virt, num in rows}
