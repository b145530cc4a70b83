"""The host's libvirtd under the two-node lab (make lab): does it answer, and start it if not.

Asked through libvirt-python, with a deadline (lab.wait.bounded_call: a libvirtd that takes
connections but never answers cannot hang make lab). When it does not answer, the error
says what libvirt itself said, not a guess. libvirtd (and virtlogd) are started only when
no init system runs them, and found by the pid file the host's own daemons write.
"""

from __future__ import annotations

import os

import libvirt

from ..command import alive, check, read_pid
from ..wait import LabError, WaitTimeout, bounded_call, wait_for
from .access import Runner, as_root

HOST_URI = "qemu:///system"
ANSWER_TIMEOUT_S = 20.0
START_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0
POLL_S = 1.0
DAEMONS = ("virtlogd", "libvirtd")


def host_daemon_pid(name: str, run_dir: str = "/run") -> int | None:
    """The host's own libvirtd/virtlogd, by the pid file it writes as root, if it runs.

    Not by process name: the local tier's private daemons carry the same names, and under an
    init that reaps late the ones it just stopped linger as zombies for a minute.
    """
    pid = read_pid(os.path.join(run_dir, f"{name}.pid"))
    if pid is None or not alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii") as f:
            return pid if f.read().strip() == name else None  # not a reused pid
    except OSError:
        return None


def _version(uri: str) -> int:
    conn = libvirt.open(uri)
    try:
        return int(conn.getLibVersion())
    finally:
        conn.close()


def answer_error(uri: str = HOST_URI, timeout_s: float = ANSWER_TIMEOUT_S) -> str | None:
    """None when the libvirtd at `uri` answers; else why not, in libvirt's own words."""
    try:
        bounded_call(lambda: _version(uri), timeout_s, f"connecting to {uri}")
    except libvirt.libvirtError as err:
        return str(err.get_error_message() or err)
    except WaitTimeout as err:
        return str(err)
    return None


def ensure_running(who: Runner, uri: str = HOST_URI) -> None:
    """Make sure the host's libvirtd answers at `uri`; start it when nothing runs it."""
    why = answer_error(uri)
    if why is None:
        return
    stopped = [d for d in DAEMONS if host_daemon_pid(d) is None]
    if not stopped:
        pid = host_daemon_pid("libvirtd")
        raise LabError(
            f"the host's libvirtd runs (pid {pid}), but connecting to {uri} fails: {why}"
        )
    if not (who.root or who.sudo):
        raise LabError(
            f"connecting to {uri} fails: {why}; {' and '.join(stopped)} not running, and "
            "starting them needs root: `sudo systemctl start libvirtd`, or `sudo make lab`"
        )
    for daemon in stopped:
        check(as_root([daemon, "-d"], who), timeout_s=START_TIMEOUT_S)
    last = [why]

    def answers() -> bool:
        err = answer_error(uri)
        last[0] = err or ""
        return err is None

    try:
        wait_for(answers, READY_TIMEOUT_S, POLL_S, f"the host's libvirtd at {uri} to answer")
    except WaitTimeout as err:
        pid = host_daemon_pid("libvirtd")
        state = f"runs as pid {pid}" if pid else "is not running"
        raise LabError(
            f"started {' and '.join(stopped)}, but connecting to {uri} still fails after "
            f"{READY_TIMEOUT_S:.0f} s: {last[0]} (libvirtd {state}; its log: "
            "/var/log/libvirt/libvirtd.log)"
        ) from err
