"""The lab's settings: lab/settings.yaml, VIRTDLM_LAB_* overrides, computed values.

``resolve`` is pure (text + environment in, dict out); ``write_vagrant_settings`` writes what
the Vagrantfile reads, so the Vagrantfile holds no logic of its own.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml

from .nodes import NODE_NAMES, WRITER_BOOT_IMAGE
from .wait import LabError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS_YAML = os.path.join(REPO, "lab", "settings.yaml")
LAB_DIR = os.path.join(REPO, ".lab")
VAGRANT_SETTINGS = os.path.join(LAB_DIR, "vagrant-settings.json")
ENV_PREFIX = "VIRTDLM_LAB_"
BOOT_TIMEOUT_S = 600
LOCK_MANAGERS = ("dlm", "nop")
BOX_NAME_PREFIX = "virtdlm-debian12-"  # vagrant's name for a box: this + its recipe digest


class SettingsError(LabError):
    pass


def _coerce(key: str, default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{ENV_PREFIX}{key.upper()}={raw!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError as err:
            raise SettingsError(f"{ENV_PREFIX}{key.upper()}={raw!r}: expected an integer") from err
    return raw


def resolve(text: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Settings from the YAML text with environment overrides; unknown names are refused."""
    base = yaml.safe_load(text) or {}
    if not isinstance(base, dict):
        raise SettingsError("lab/settings.yaml must be a mapping of key: value")
    out = dict(base)
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in base:
            raise SettingsError(f"{name}: no such lab setting; known: {', '.join(sorted(base))}")
        out[key] = _coerce(key, base[key], raw)
    if out["accel"] not in ("auto", "kvm", "tcg"):
        raise SettingsError(f"accel {out['accel']!r}: expected auto, kvm or tcg")
    if out["lock_manager"] not in LOCK_MANAGERS:
        raise SettingsError(f"lock_manager {out['lock_manager']!r}: expected dlm or nop")
    if not 2 <= int(out["nodes"]) <= len(NODE_NAMES):
        raise SettingsError(f"nodes {out['nodes']!r}: expected 2 to {len(NODE_NAMES)}")
    node_list(out)  # the subnet must hold every node's address
    return out


def node_names(settings: Mapping[str, Any]) -> tuple[str, ...]:
    return NODE_NAMES[: int(settings["nodes"])]


def node_list(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each node's name, corosync node id and cluster address (.10 + id of the subnet)."""
    try:
        net = ipaddress.ip_network(str(settings["cluster_subnet"]), strict=True)
    except ValueError as err:
        raise SettingsError(f"cluster_subnet {settings['cluster_subnet']!r}: {err}") from err
    hosts = list(net.hosts())
    out = []
    for i, name in enumerate(node_names(settings), start=1):
        if 10 + i > len(hosts):
            raise SettingsError(f"cluster_subnet {net} has no address .{10 + i} for {name}")
        out.append({"name": name, "id": i, "ip": str(hosts[10 + i - 1])})
    return out


def cluster_addresses(settings: Mapping[str, Any]) -> dict[str, str]:
    """Each node's address on the cluster network, by name."""
    return {n["name"]: n["ip"] for n in node_list(settings)}


def lab_node_names(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The nodes of the lab these settings describe; the two-node default when the settings
    are bad (every command that uses them loads them again and says what is wrong)."""
    try:
        return node_names(load(env))
    except (SettingsError, OSError, yaml.YAMLError):
        return NODE_NAMES[:2]


def load(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    with open(SETTINGS_YAML, encoding="utf-8") as f:
        return resolve(f.read(), os.environ if env is None else env)


def lab_prefix(repo: str = REPO) -> str:
    """Names of this checkout's domains, networks and volumes start with this."""
    return f"virtdlm-{hashlib.sha256(repo.encode()).hexdigest()[:6]}-"


def vagrant_settings(settings: dict[str, Any], box_dir: str, domain_type: str) -> dict[str, Any]:
    from .host import fencing  # the fencing facts live there; it imports this module

    prefix = lab_prefix()
    return {
        **settings,
        "box_dir": box_dir,
        "box_name": f"{BOX_NAME_PREFIX}{os.path.basename(box_dir.rstrip('/'))}",
        "domain_type": domain_type,
        "prefix": prefix,
        "management_network": f"{prefix}mgmt",
        "cluster_network": f"{prefix}cluster",
        "node_list": node_list(settings),
        "log_dir": os.path.join(LAB_DIR, "logs"),
        "boot_timeout_s": BOOT_TIMEOUT_S,
        "writer_boot_image": WRITER_BOOT_IMAGE,
        # read by node.sh for dlm.conf's fence device
        "fence_address": fencing.bridge_address(str(settings["management_subnet"])),
        "fence_port": fencing.FENCE_PORT,
        "fence_key_file": fencing.NODE_KEY_FILE,
        "fence_timeout_s": fencing.AGENT_TIMEOUT_S,
        "fence_race_delay_s": fencing.RACE_DELAY_S,
    }


def write_vagrant_settings(values: dict[str, Any]) -> str:
    os.makedirs(LAB_DIR, exist_ok=True)
    tmp = VAGRANT_SETTINGS + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2, sort_keys=True)
    os.replace(tmp, VAGRANT_SETTINGS)
    return VAGRANT_SETTINGS


def read_vagrant_settings() -> dict[str, Any] | None:
    """The settings the running lab was brought up with, if any."""
    try:
        with open(VAGRANT_SETTINGS, encoding="utf-8") as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return None
