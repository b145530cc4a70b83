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


# Where libvirtd is started with /dev/kvm hidden: an empty file nobody may open.
NO_KVM = "/run/virtdlm-lab/no-kvm"
KVM_DEVICE = "/dev/kvm"


def start_argv(daemons: list[str], hide_kvm: bool) -> list[str]:
    """How to start the stopped daemons. With hide_kvm (the lab has decided on TCG and
    starts libvirtd itself): in a private mount namespace where /dev/kvm is an empty,
    unreadable file. On a host whose /dev/kvm exists but cannot run guests, libvirt 9.0's
    capability cache otherwise disagrees with its own probe (the probe keeps
    CAP_DAC_OVERRIDE and finds KVM; the cache check, as the QEMU user, does not) and is
    thrown away on every API call: each `define` then probes QEMU 16 times, ~220 s of a
    cold make lab. Hidden, both agree there is no KVM, and the cache holds. Only this
    libvirtd and the QEMUs it starts see the hidden device; the host's /dev/kvm is as it
    was, and the daemons' sockets are where clients expect them."""
    starts = " && ".join(f"{d} -d" for d in daemons)
    if not hide_kvm:
        return ["sh", "-c", starts]
    script = (
        f"mkdir -p {os.path.dirname(NO_KVM)} && : > {NO_KVM} && chmod 000 {NO_KVM} "
        f"&& mount --bind {NO_KVM} {KVM_DEVICE} && {starts}"
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def ensure_running(who: Runner, uri: str = HOST_URI, hide_kvm: bool = False) -> None:
    """Make sure the host's libvirtd answers at `uri`; start it when nothing runs it (with
    /dev/kvm hidden from it when `hide_kvm`: start_argv says why)."""
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
    hide = hide_kvm and os.path.exists(KVM_DEVICE)
    check(as_root(start_argv(stopped, hide), who), timeout_s=START_TIMEOUT_S)
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
