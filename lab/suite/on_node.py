"""What the two-node suite runs inside a node, as a program of its own.

    python3 -m lab.suite.on_node kill-qemu VM
        kill -9 the domain's QEMU, then print the seconds until this node's virtdlmd holds
        none of its locks: one process sends the signal and polls virtdlmd, so no SSH round
        trip or interpreter start is measured
    python3 -m lab.suite.on_node read-disks PATH...
        one JSON line: the writer guests' record and collision marker on each disk
    python3 -m lab.suite.on_node wipe-disks PATH...
        zero what writer guests left on these disks (no domain may have them open)
    python3 -m lab.suite.on_node observe PATH...
        one JSON line: this node's own truth after a step (lab.scenario.history): virtdlmd's
        locks, corosync's quorum and members, every QEMU and the files it has open for
        writing (from /proc, not from libvirt), and where each PATH really leads
    python3 -m lab.suite.on_node serve-disks
        the same three, asked as lines "read PATH..." / "wipe PATH..." / "observe PATH..."
        on stdin, one JSON line each in answer, until stdin ends (the suite keeps one per
        node)

Provisioning (lab/nodes/provisioning.py) copies this tree to NODE_TREE in each node; there
it runs with the node's own python3 and the tree's virtdlm, so it imports only the standard
library, virtdlm, lab.guest, lab.nodes (NODE_TREE) and lab.wait. ``command`` builds its command line
on the host. The result is the last line of stdout; a failure exits non-zero with one line
on stderr saying what and why.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from virtdlm.backends.dlm_health import QUORUM_TOOL, parse_quorum, run_tool
from virtdlm.cli import default_socket
from virtdlm.client import locks
from virtdlm.errors import VirtDlmError
from virtdlm.procfs import process_start_time

from ..guest import disks
from ..nodes import NODE_TREE
from ..wait import LabError, wait_for

NODE_PYTHONPATH = f"{NODE_TREE}/plugin:{NODE_TREE}"
QEMU_RUN_DIR = "/run/libvirt/qemu"  # libvirtd's <domain>.pid files
RELEASE_WATCH_S = 10.0  # how long the node watches for the release before it gives up
POLL_INTERVAL_S = 0.01
LOCKS_TIMEOUT_S = 5.0  # one `locks` request to virtdlmd


class OnNodeError(LabError):
    pass


def node_python(module: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    """The shell command that runs `python3 -m module args` in a node, on this tree."""
    assignments = [
        f"{k}={shlex.quote(v)}" for k, v in {"PYTHONPATH": NODE_PYTHONPATH, **(env or {})}.items()
    ]
    return " ".join([*assignments, "python3", "-m", module, *map(shlex.quote, args)])


def command(*args: str) -> str:
    """The command line of this program in a node, e.g. command("kill-qemu", "vm-1")."""
    return node_python(__name__, *args)


def holds(held: Iterable[Mapping[str, Any]], vm: str) -> bool:
    """Whether any of these lock records (virtdlmd's `locks`) belongs to the domain."""
    return any(lock["domain"] == vm for lock in held)


def qemu_pid(vm: str, run_dir: str = QEMU_RUN_DIR) -> int:
    """The pid of the domain's QEMU, from libvirtd's pid file; it must be running."""
    path = os.path.join(run_dir, f"{vm}.pid")
    try:
        with open(path, encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as err:
        raise OnNodeError(f"no QEMU pid for {vm}: {path}: {err}") from err
    if process_start_time(pid) is None:
        raise OnNodeError(f"QEMU of {vm}: pid {pid} from {path} is not running")
    return pid


def seconds_until_released(
    held: Callable[[], bool],
    kill: Callable[[], None],
    what: str,
    watch_s: float = RELEASE_WATCH_S,
    interval_s: float = POLL_INTERVAL_S,
) -> float:
    """Kill, then poll `held` until it is False; the seconds from the kill to that poll.

    `what` names the locks in messages. They must be held before the kill: a release
    that already happened cannot be timed.
    """
    if not held():
        raise OnNodeError(f"{what}: none held before the kill")
    started = time.monotonic()
    kill()
    wait_for(lambda: not held(), watch_s, interval_s, f"{what} to be released after the kill")
    return time.monotonic() - started


def kill_qemu(vm: str, socket_path: str, watch_s: float) -> float:
    pid = qemu_pid(vm)
    return seconds_until_released(
        lambda: holds(locks(socket_path, LOCKS_TIMEOUT_S), vm),
        lambda: os.kill(pid, signal.SIGKILL),
        f"the locks of {vm} (QEMU pid {pid}) in virtdlmd at {socket_path}",
        watch_s,
    )


def read_disks(paths: Iterable[str]) -> str:
    """One JSON line: what the writer guests left on each disk (lab.guest.disks)."""
    return json.dumps([disks.evidence(path).to_json() for path in paths])


def wipe_disks(paths: Iterable[str]) -> str:
    for path in paths:
        disks.wipe(path)
    return "wiped"


QEMU_COMM_PREFIX = "qemu-system"
PROC = "/proc"


def parse_members(quorumtool: str) -> list[str]:
    """Node names in `corosync-quorumtool -s`'s membership table ("(local)" dropped)."""
    members, table = [], False
    for line in quorumtool.splitlines():
        fields = line.split()
        if fields[:3] == ["Nodeid", "Votes", "Name"] or fields[:4] == [
            "Nodeid",
            "Votes",
            "Qdevice",
            "Name",
        ]:
            table = True
        elif table and len(fields) >= 3 and fields[0].isdigit():
            members.append(fields[-2] if fields[-1] == "(local)" else fields[-1])
    return members


def guest_name(cmdline: list[str]) -> str:
    """The domain a QEMU runs, from its `-name guest=NAME,...` argument (libvirt's form)."""
    for flag, value in zip(cmdline, cmdline[1:], strict=False):
        if flag == "-name":
            first = value.split(",")[0]
            return first.removeprefix("guest=")
    return ""


def open_for_writing(pid: int, proc: str = PROC) -> list[str]:
    """The files and devices the process has open for writing (O_WRONLY or O_RDWR), as the
    kernel names them: the node's own truth of who can write a disk."""
    out = set()
    fd_dir = f"{proc}/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
            with open(f"{proc}/{pid}/fdinfo/{fd}", encoding="ascii") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (OSError, StopIteration, ValueError):
            continue  # closed meanwhile
        if target.startswith("/") and flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
            out.add(target.removesuffix(" (deleted)"))
    return sorted(out)


def qemu_writers(proc: str = PROC) -> list[dict[str, Any]]:
    """Every QEMU on this node: its pid, domain and what it has open for writing."""
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/comm", encoding="utf-8") as f:
                if not f.read().startswith(QEMU_COMM_PREFIX):
                    continue
            with open(f"{proc}/{entry}/cmdline", encoding="utf-8", errors="replace") as f:
                cmdline = f.read().split("\0")
        except OSError:
            continue
        pid = int(entry)
        found.append(
            {"pid": pid, "domain": guest_name(cmdline), "writes": open_for_writing(pid, proc)}
        )
    return sorted(found, key=lambda q: q["pid"])


def observe(paths: Iterable[str], socket_path: str) -> dict[str, Any]:
    """What this node itself says after a step (see the module's docstring)."""
    try:
        held: Any = locks(socket_path, LOCKS_TIMEOUT_S)
    except (VirtDlmError, OSError) as err:
        held = {"error": str(err)}
    rc, text = run_tool(QUORUM_TOOL)
    quorate, detail = parse_quorum(rc, text)
    return {
        "locks": held,
        "quorum": {"quorate": quorate, "detail": detail, "members": parse_members(text)},
        "qemu": qemu_writers(),
        "paths": {p: os.path.realpath(p) for p in paths},
    }


def serve_disks(lines: Iterable[str], out: Any) -> None:
    """Answer "read PATH..." and "wipe PATH..." one line each until stdin ends: the suite
    reads the disks after every step through one SSH channel (lab.nodes.node.Session)."""
    offsets: dict[str, int] = {}
    for line in lines:
        verb, *paths = line.split()
        try:
            if verb == "read" and paths:
                answer = json.dumps([disks.evidence(p, offsets).to_json() for p in paths])
            elif verb == "observe":
                answer = json.dumps(observe(paths, default_socket()))
            elif verb == "wipe" and paths:
                for path in paths:
                    offsets.pop(path, None)
                answer = json.dumps(wipe_disks(paths))
            else:
                answer = json.dumps({"error": f"not understood: {line.strip()!r}"})
        except (LabError, OSError) as err:
            answer = json.dumps({"error": str(err)})
        out.write(answer + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python3 -m {__spec__.name if __spec__ else 'on_node'}")
    sub = parser.add_subparsers(dest="command", required=True)
    kill = sub.add_parser("kill-qemu", help="kill -9 a domain's QEMU; time its locks' release")
    kill.add_argument("vm")
    kill.add_argument("--socket", help="virtdlmd's socket (default: the one `virtdlm` uses)")
    kill.add_argument("--watch-s", type=float, default=RELEASE_WATCH_S)
    read = sub.add_parser("read-disks", help="what writer guests left on these disks (JSON)")
    read.add_argument("paths", nargs="+")
    wipe = sub.add_parser("wipe-disks", help="zero what writer guests left (nobody may run)")
    wipe.add_argument("paths", nargs="+")
    look = sub.add_parser("observe", help="this node's locks, quorum and QEMU writers (JSON)")
    look.add_argument("paths", nargs="*")
    sub.add_parser("serve-disks", help="answer read/wipe/observe lines, one JSON line each")
    args = parser.parse_args(argv)
    try:
        if args.command == "kill-qemu":
            out = f"{kill_qemu(args.vm, args.socket or default_socket(), args.watch_s):.3f}"
        elif args.command == "read-disks":
            out = read_disks(args.paths)
        elif args.command == "observe":
            out = json.dumps(observe(args.paths, default_socket()))
        elif args.command == "serve-disks":
            serve_disks(sys.stdin, sys.stdout)
            return 0
        else:
            out = wipe_disks(args.paths)
    except (LabError, VirtDlmError, OSError) as err:
        what = args.vm if args.command == "kill-qemu" else " ".join(args.paths)
        sys.stderr.write(f"{args.command} {what}: {err}\n")
        return 1
    sys.stdout.write(out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
