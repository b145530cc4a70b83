"""Classify why libvirt refused an operation: which layer said no, and with which code.

Layers:
- ``lock-manager``: the DLM lock manager (dlm.so / virtdlmd) refused; libvirt error code
  VIR_ERR_RESOURCE_BUSY with "resource busy: …", or, while this node's lockspace cannot be
  used (not quorate, stopped, waiting for a fence), "lockspace … starts are refused until …"
  (code 1 when dlm.so says it in QEMU's pre-exec child, 38 from libvirtd).
- ``qemu-image-lock``: QEMU's own OFD image lock refused ("Failed to get "write" lock").
- ``lock-daemon-down``: the lock manager could not reach virtdlmd.
- ``other``: anything else.
A step that was not refused has the outcome ``ok``.

Pure functions over libvirt's error text, so they are tested on captured text. The same texts
are what a refusal leaves in libvirtd's log: ``LOG_SIGNS`` is what a test that expects a
refusal allows in the node-journal audit (lab.suite.journal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import libvirt

from virtdlm.health import REFUSED_UNTIL

OK = "ok"
LOCK_MANAGER = "lock-manager"
QEMU_IMAGE_LOCK = "qemu-image-lock"
LOCK_DAEMON_DOWN = "lock-daemon-down"
OTHER = "other"
NONE = "none"

RESOURCE_BUSY = "resource busy:"  # how dlm.so words every refusal by the lock manager
DAEMON_DOWN = "virtdlmd is not running"  # how dlm.so says it cannot reach virtdlmd

_HOLDER_RE = re.compile(
    rf"{RESOURCE_BUSY} (?P<kind>disk|lease) (?P<resource>\S+) is locked "
    r"(?:(?P<how>exclusively|shared) )?by (?P<domain>\S+) on (?P<node>\S+)"
)
_QEMU_LOCK_RE = re.compile(r'Failed to get (?:shared )?"(?:write|consistent read)" lock')

LOG_SIGNS: dict[str, tuple[str, ...]] = {
    LOCK_MANAGER: (RESOURCE_BUSY, REFUSED_UNTIL),
    # QEMU exits at start-up: libvirtd also says its monitor went away.
    QEMU_IMAGE_LOCK: (
        '"write" lock',
        '"consistent read" lock',
        "Unable to read from monitor: Connection reset by peer",
    ),
    # The pre-exec child fails: libvirtd also logs the broken start-up handshake.
    LOCK_DAEMON_DOWN: (DAEMON_DOWN, "Child quit during startup handshake"),
}


def log_signs(*layers: str) -> tuple[str, ...]:
    """The log text of refusals by these layers (nothing for ``ok``)."""
    return tuple(sign for layer in layers for sign in LOG_SIGNS.get(layer, ()))


@dataclass(frozen=True)
class Refusal:
    layer: str
    code: int | None  # the libvirt error code, where the text shows it
    message: str
    holder_domain: str = ""
    holder_node: str = ""
    resource: str = ""


def classify(stderr: str, code: int | None = None) -> Refusal:
    """Which layer refused, from libvirt's error text (and the error code when known)."""
    text = " ".join(stderr.split())
    m = _HOLDER_RE.search(text)
    if m or RESOURCE_BUSY in text:
        return Refusal(
            LOCK_MANAGER,
            code if code is not None else libvirt.VIR_ERR_RESOURCE_BUSY,
            text,
            m.group("domain") if m else "",
            m.group("node") if m else "",
            m.group("resource") if m else "",
        )
    if REFUSED_UNTIL in text:  # the lockspace cannot be used: the lock manager says no
        return Refusal(LOCK_MANAGER, code, text)
    if _QEMU_LOCK_RE.search(text):
        return Refusal(QEMU_IMAGE_LOCK, code, text)
    if DAEMON_DOWN in text:
        return Refusal(LOCK_DAEMON_DOWN, code, text)
    return Refusal(OTHER, code, text)
