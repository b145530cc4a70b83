"""The host's libvirtd under the two-node lab (make lab): does it answer, and start it if not.

Asked through libvirt-python, with a deadline (lab.wait.bounded_call: a libvirtd that takes
connections but never answers cannot hang make lab). When it does not answer, the error
says what libvirt itself said, not a guess. libvirtd (and virtlogd) are started only when
no init system runs them, and found by the pid file the host's own daemons write.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

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
KVM_DEVICE = "/dev/kvm"
KVM_GROUP = "kvm"
QEMU_USER = "libvirt-qemu"  # Debian's libvirt runs QEMU as this user (qemu.conf `user`)


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


def user_can_rw(mode: int, owner: int, group: int, uid: int, gids: set[int]) -> bool:
    """Whether a user (uid, all its group ids) may read and write a file of this mode and
    ownership, by the permission bits alone (no ACL: the device nodes here have none)."""
    if uid == owner:
        return mode & stat.S_IRUSR != 0 and mode & stat.S_IWUSR != 0
    if group in gids:
        return mode & stat.S_IRGRP != 0 and mode & stat.S_IWGRP != 0
    return mode & stat.S_IROTH != 0 and mode & stat.S_IWOTH != 0


def kvm_device_fix(who: Runner, device: str = KVM_DEVICE, user: str = QEMU_USER) -> str | None:
    """Give /dev/kvm Debian's udev ownership (root:kvm 0660) when the QEMU user cannot open
    it; what was done (or what to do), or None when nothing is needed.

    libvirt 9 probes QEMU's capabilities with CAP_DAC_OVERRIDE, so its probe opens /dev/kvm
    whatever its mode, while its validity check asks whether the QEMU user can: when they
    differ ("KVM was enabled when probing ..., but it is not available now" in its debug
    log) every call that needs capabilities probes QEMU again, about 4 s each, and
    vagrant-libvirt makes dozens. Seen here after box builds that bind-mounted the host's
    /dev into their chroot, where a package script chgrp'd /dev/kvm by the chroot's kvm gid
    (build-box no longer does); any host whose /dev/kvm has another group gets the same.
    The lab's own choice of KVM or TCG does not depend on it.
    """
    try:
        st = os.stat(device)
        account = pwd.getpwnam(user)
        kvm_gid = grp.getgrnam(KVM_GROUP).gr_gid
    except (OSError, KeyError):
        return None  # no device, no QEMU user or no kvm group: nothing libvirt could use
    gids = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if user_can_rw(st.st_mode, st.st_uid, st.st_gid, account.pw_uid, gids):
        return None
    was = f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid}"
    if kvm_gid not in gids:
        return f"{device} ({was}) is not usable by {user}, who is not in group {KVM_GROUP}"
    if not (who.root or who.sudo):
        return (
            f"{device} ({was}) is not usable by {user}: libvirt re-probes QEMU on every call "
            f"(make lab is slow); `sudo chgrp {KVM_GROUP} {device}; sudo chmod 0660 {device}`"
        )
    check(as_root(["chgrp", KVM_GROUP, device], who), timeout_s=START_TIMEOUT_S)
    check(as_root(["chmod", "0660", device], who), timeout_s=START_TIMEOUT_S)
    return (
        f"{device} was {was}, not usable by {user}: now root:{KVM_GROUP} 0660 as Debian's "
        "udev rule makes it, so libvirt keeps its QEMU capability cache (fix_kvm_device)"
    )
