"""virtdlmd configuration: /etc/libvirt/qemu-dlm.conf in libvirt's conf syntax.

    key = "string"      key = 123      # comments

A missing file means all defaults. An unknown key, a value of the wrong type, a duplicate
key or a line that does not parse fails with the file, the line and the reason.
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

_LINE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_LOCKSPACE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


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
}
_INT_KEYS = {"model_node_id"}
KNOWN_KEYS = frozenset(f.name for f in fields(Config))


def _parse_value(text: str, path: str, lineno: int, key: str) -> str | int:
    if text.startswith('"'):
        m = re.match(r'^"((?:[^"\\]|\\.)*)"\s*(#.*)?$', text)
        if not m:
            raise ConfigError(path, lineno, f"{key}: unterminated or malformed string {text!r}")
        return re.sub(r"\\(.)", r"\1", m.group(1))
    m = re.match(r"^(-?[0-9]+)\s*(#.*)?$", text)
    if not m:
        raise ConfigError(
            path, lineno, f"{key}: expected a quoted string or an integer, got {text!r}"
        )
    return int(m.group(1))


def _typed(key: str, value: str | int, path: str, lineno: int) -> Any:
    if key in _BOOL_KEYS:
        if value not in (0, 1) or isinstance(value, str):
            raise ConfigError(path, lineno, f"{key} must be 0 or 1, got {value!r}")
        return bool(value)
    if key in _INT_KEYS:
        if not isinstance(value, int) or value < 1:
            raise ConfigError(path, lineno, f"{key} must be a positive integer, got {value!r}")
        return value
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
