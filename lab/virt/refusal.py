"""Classify why libvirt refused an operation: which layer said no, and with which code.

Layers:
- ``lock-manager``: the DLM lock manager (dlm.so / virtdlmd) refused; libvirt error code 87
  (VIR_ERR_RESOURCE_BUSY) with "resource busy: …".
- ``qemu-image-lock``: QEMU's own OFD image lock refused ("Failed to get "write" lock").
- ``lock-daemon-down``: the lock manager could not reach virtdlmd.
- ``other``: anything else.

Pure functions over virsh's stderr, so they are tested on captured text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOCK_MANAGER = "lock-manager"
QEMU_IMAGE_LOCK = "qemu-image-lock"
LOCK_DAEMON_DOWN = "lock-daemon-down"
OTHER = "other"
NONE = "none"

VIR_ERR_RESOURCE_BUSY = 87

_HOLDER_RE = re.compile(
    r"resource busy: (?P<kind>disk|lease) (?P<resource>\S+) is locked "
    r"(?:(?P<how>exclusively|shared) )?by (?P<domain>\S+) on (?P<node>\S+)"
)
_QEMU_LOCK_RE = re.compile(r'Failed to get (?:shared )?"(?:write|consistent read)" lock')


@dataclass(frozen=True)
class Refusal:
    layer: str
    code: int | None  # the libvirt error code, where the text shows it
    message: str
    holder_domain: str = ""
    holder_node: str = ""
    resource: str = ""


def classify(stderr: str, code: int | None = None) -> Refusal:
    """Which layer refused, from virsh's stderr (and the error code when known)."""
    text = " ".join(stderr.split())
    m = _HOLDER_RE.search(text)
    if m or "resource busy:" in text:
        return Refusal(
            LOCK_MANAGER,
            code if code is not None else VIR_ERR_RESOURCE_BUSY,
            text,
            m.group("domain") if m else "",
            m.group("node") if m else "",
            m.group("resource") if m else "",
        )
    if _QEMU_LOCK_RE.search(text):
        return Refusal(QEMU_IMAGE_LOCK, code, text)
    if "virtdlmd is not running" in text:
        return Refusal(LOCK_DAEMON_DOWN, code, text)
    return Refusal(OTHER, code, text)
