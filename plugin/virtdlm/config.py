"""virtdlmd configuration: /etc/libvirt/qemu-dlm.conf in libvirt's conf syntax.

    key = "string"      key = 123      key = 0.5      # comments

A missing file means all defaults. An unknown key, a value of the wrong type, a duplicate
key or a line that does not parse fails with the file, the line and the reason. Durations
(keys ending in _s) are seconds and may have decimals; libvirt itself never reads this file
(dlm.so reads only socket_path, and skips every other line).

Lock-failure keys (virtdlm.health, virtdlm.lockfailure):
    health_interval_s = 2            how often this node's lock health is probed
    quorum_grace_s = 10              quorum may be lost this long before locks count as lost
    lockfailure_uri = "qemu:///system"   the libvirt that on_lockfailure actions go through
"""

from __future__ import annotations

import errno
import grp
import os
import re
import socket
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/libvirt/qemu-dlm.conf"
DEFAULT_SOCKET_PATH = "/run/libvirt/virtdlmd.sock"
DEFAULT_STATE_DIR = "/run/virtdlmd"
DEFAULT_LOCKSPACE = "libvirt"
MAX_LOCKSPACE_NAME_BYTES = 64
BACKENDS = ("dlm", "model")
DEFAULT_HEALTH_INTERVAL_S = 2.0
DEFAULT_QUORUM_GRACE_S = 10.0
DEFAULT_LOCKFAILURE_URI = "qemu:///system"
MAX_HEALTH_INTERVAL_S = 60.0  # slower probing would leave domains running long after a loss

_LINE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_LOCKSPACE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_URI_RE = re.compile(r"^[a-z][a-z0-9+]*://\S*$")  # libvirt's driver[+transport]://[host]/path


@dataclass(frozen=True)
class Config:
    auto_disk_leases: bool = True
    require_lease_for_disks: bool | None = None  # None: the opposite of auto_disk_leases
    lockspace_name: str = DEFAULT_LOCKSPACE
    socket_path: str = DEFAULT_SOCKET_PATH
    state_dir: str = DEFAULT_STATE_DIR
    backend: str = "dlm"
    purge_orphans: bool = True
    allowed_group: str = ""
    node_name: str = ""  # "" = this host's name
    model_socket: str = ""  # model backend: a shared model server; "" = in-process model
    model_node_id: int = 1  # model backend: the node id this daemon plays
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S  # lock health probed this often
    quorum_grace_s: float = DEFAULT_QUORUM_GRACE_S  # quorum lost longer: locks count as lost
    lockfailure_uri: str = DEFAULT_LOCKFAILURE_URI  # where on_lockfailure actions are applied

    @property
    def lease_required(self) -> bool:
        if self.require_lease_for_disks is None:
            return not self.auto_disk_leases
        return self.require_lease_for_disks

    @property
    def effective_node_name(self) -> str:
        return self.node_name or socket.gethostname()

    def allowed_gid(self) -> int | None:
        if not self.allowed_group:
            return None
        return grp.getgrnam(self.allowed_group).gr_gid


_BOOL_KEYS = {"auto_disk_leases", "require_lease_for_disks", "purge_orphans"}
_STR_KEYS = {
    "lockspace_name",
    "socket_path",
    "state_dir",
    "backend",
    "allowed_group",
    "node_name",
    "model_socket",
    "lockfailure_uri",
}
_INT_KEYS = {"model_node_id"}
_SECONDS_KEYS = {"health_interval_s", "quorum_grace_s"}
KNOWN_KEYS = frozenset(f.name for f in fields(Config))


def _parse_value(text: str, path: str, lineno: int, key: str) -> str | int | float:
    if text.startswith('"'):
        m = re.match(r'^"((?:[^"\\]|\\.)*)"\s*(#.*)?$', text)
        if not m:
            raise ConfigError(path, lineno, f"{key}: unterminated or malformed string {text!r}")
        return re.sub(r"\\(.)", r"\1", m.group(1))
    m = re.match(r"^(-?[0-9]+)(\.[0-9]+)?\s*(#.*)?$", text)
    if not m:
        raise ConfigError(
            path, lineno, f"{key}: expected a quoted string or a number, got {text!r}"
        )
    if m.group(2):
        return float(m.group(1) + m.group(2))
    return int(m.group(1))


def _typed(key: str, value: str | int | float, path: str, lineno: int) -> Any:
    if key in _BOOL_KEYS:
        if not isinstance(value, int) or value not in (0, 1):
            raise ConfigError(path, lineno, f"{key} must be 0 or 1, got {value!r}")
        return bool(value)
    if key in _INT_KEYS:
        if not isinstance(value, int) or value < 1:
            raise ConfigError(path, lineno, f"{key} must be a positive integer, got {value!r}")
        return value
    if key in _SECONDS_KEYS:
        if isinstance(value, str):
            raise ConfigError(
                path, lineno, f"{key} must be a number of seconds (e.g. 2 or 0.5), got {value!r}"
            )
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(path, lineno, f"{key} must be a quoted string, got {value!r}")
    return value


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse the text of a config file. Pure: no file system access."""
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if not m:
            raise ConfigError(path, lineno, f"expected 'key = value', got {line!r}")
        key, rest = m.group(1), m.group(2)
        if key not in KNOWN_KEYS:
            raise ConfigError(
                path, lineno, f"unknown key {key!r}; known keys: {', '.join(sorted(KNOWN_KEYS))}"
            )
        if key in values:
            raise ConfigError(path, lineno, f"{key} is already set on line {lines[key]}")
        values[key] = _typed(key, _parse_value(rest, path, lineno, key), path, lineno)
        lines[key] = lineno
    config = replace(Config(), **values)
    _validate(config, path, lines)
    return config


def _validate(config: Config, path: str, lines: dict[str, int]) -> None:
    def fail(key: str, reason: str) -> None:
        raise ConfigError(path, lines.get(key), reason)

    if config.backend not in BACKENDS:
        fail("backend", f"backend {config.backend!r} is not one of {', '.join(BACKENDS)}")
    name = config.lockspace_name
    if not _LOCKSPACE_RE.match(name) or len(name.encode()) > MAX_LOCKSPACE_NAME_BYTES:
        fail(
            "lockspace_name",
            f"lockspace_name {name!r} must be 1..{MAX_LOCKSPACE_NAME_BYTES} bytes of "
            "[A-Za-z0-9_.-]",
        )
    for key in ("socket_path", "state_dir"):
        value = getattr(config, key)
        if not value.startswith("/"):
            fail(key, f"{key} {value!r} must be an absolute path")
    if config.model_socket and not config.model_socket.startswith("/"):
        fail("model_socket", f"model_socket {config.model_socket!r} must be an absolute path")
    if len(config.socket_path.encode()) > 107:
        fail("socket_path", "socket_path is longer than a unix socket allows (107 bytes)")
    if not 0 < config.health_interval_s <= MAX_HEALTH_INTERVAL_S:
        fail(
            "health_interval_s",
            f"health_interval_s {config.health_interval_s:g} must be more than 0 and at most "
            f"{MAX_HEALTH_INTERVAL_S:g} seconds",
        )
    if config.quorum_grace_s < 0:
        fail("quorum_grace_s", f"quorum_grace_s {config.quorum_grace_s:g} must not be negative")
    if not _URI_RE.match(config.lockfailure_uri):
        fail(
            "lockfailure_uri",
            f"lockfailure_uri {config.lockfailure_uri!r} is not a libvirt URI "
            "(e.g. qemu:///system)",
        )
    if config.allowed_group:
        try:
            grp.getgrnam(config.allowed_group)
        except KeyError:
            fail("allowed_group", f"allowed_group {config.allowed_group!r}: no such group")


def load_config(path: str = DEFAULT_CONFIG_PATH, required: bool = False) -> Config:
    """Read and parse a config file. A missing file is fine unless `required`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(path, None, "no such file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as err:
        reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else str(err)
        code = errno.errorcode.get(getattr(err, "errno", 0) or 0, "")
        raise ConfigError(path, None, f"cannot read: {reason} {code}".rstrip()) from err
    return parse_config(text, path)
