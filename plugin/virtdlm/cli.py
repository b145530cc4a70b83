"""virtdlm: look at what virtdlmd holds, and at this node's lock health.

    virtdlm [--socket PATH] status [--json]
    virtdlm [--socket PATH] locks  [--json]

`status` also shows the lock health (the lockspace's state, since when, quorum) and the last
on_lockfailure actions, the newest first. Exit status: 0 ok, 1 the daemon answered with an
error, 2 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import client
from .config import DEFAULT_CONFIG_PATH, load_config
from .errors import ConfigError, DaemonUnavailable, VirtDlmError
from .health import clock

EXIT_ERROR = 1
EXIT_UNREACHABLE = 2


def format_status(status: dict[str, Any]) -> str:
    rows = [
        ("backend", status["backend"] + ("" if status["cluster"] else "  (NOT a cluster lock)")),
        ("lockspace", status["lockspace"]),
        ("node", f"{status['node_name']} (id {status['node_id']})"),
        ("owners", status["owners"]),
        ("locks", status["locks"]),
        ("uptime", f"{status['uptime_s']:.0f} s"),
        ("socket", status["socket"]),
        ("version", f"{status['version']} (pid {status['pid']})"),
    ]
    health = status.get("health")
    if health is not None:
        rows += _health_rows(health, status.get("lockfailure", {}))
    return "\n".join(f"{k:<10} {v}" for k, v in rows)


def _health_rows(health: dict[str, Any], lockfailure: dict[str, Any]) -> list[tuple[str, Any]]:
    """Lock health, quorum and the last on_lockfailure actions, one row each."""
    state = health["state"]
    if state != "ok":
        state += f": {health['detail']} (since {clock(health['since'])})"
    if health["lost"]:
        state += f"; LOCKS LOST: {health['lost_reason']}"
    if health["pending_releases"]:
        state += f"; {health['pending_releases']} releases wait for the lockspace"
    quorum = {True: "quorate", False: "NOT quorate", None: "unknown"}[health["quorate"]]
    if health["quorum_detail"]:
        quorum += f" ({health['quorum_detail']})"
    rows: list[tuple[str, Any]] = [("health", state), ("quorum", quorum)]
    if lockfailure.get("unavailable"):
        rows.append(("actions", f"cannot be applied: {lockfailure['unavailable']}"))
    actions = lockfailure.get("actions", [])
    if not actions:
        rows.append(("actions", "none"))
    for a in reversed(actions):  # the last first
        rows.append(
            ("action", f"{clock(a['time'])} {a['domain']} {a['action']}: {a['outcome']} "
                       f"({a['reason']})")
        )  # fmt: skip
    return rows


def format_locks(locks: list[dict[str, Any]]) -> str:
    if not locks:
        return "no locks held"
    head = ("MODE", "DOMAIN", "PID", "NODE", "KIND", "PATH", "RESOURCE")
    rows = [head] + [
        (
            lk["mode"],
            lk["domain"],
            str(lk["pid"]),
            lk["node"],
            lk["kind"],
            lk["path"],
            lk["resource"],
        )
        for lk in locks
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )


def default_socket() -> str:
    env = os.environ.get("VIRTDLM_SOCKET")
    if env:
        return env
    try:
        return load_config(DEFAULT_CONFIG_PATH).socket_path
    except ConfigError as err:
        print(f"virtdlm: warning: {err}; using the default socket", file=sys.stderr)
        from .config import DEFAULT_SOCKET_PATH

        return DEFAULT_SOCKET_PATH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="virtdlm", description="Inspect virtdlmd.")
    parser.add_argument("--socket", help="virtdlmd socket (default: from qemu-dlm.conf)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("status", "daemon, backend and counts"), ("locks", "every lock held")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    socket_path = args.socket or default_socket()
    ask = client.status if args.command == "status" else client.locks
    try:
        data: dict[str, Any] | list[dict[str, Any]] = ask(socket_path)
    except DaemonUnavailable as err:
        print(f"virtdlm: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except VirtDlmError as err:
        print(f"virtdlm: {args.command}: {err}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif isinstance(data, dict):
        print(format_status(data))
    else:
        print(format_locks(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
