"""Fencing in the lab, host side: fence_virtd (Debian's fence-virtd, of the fence-agents
family) with its libvirt backend, so that a node's dlm_controld can power off the other
node through the host's libvirt with fence_virt.

Why fence_virt/fence_virtd and not fence_virsh: fence_virsh logs in to the host over SSH as
a user who may run virsh, so the nodes would need an SSH server on the host, a host account
and a key that opens the host's whole libvirt. fence_virtd offers only status/on/off/reboot,
key-authenticated, on one port of the lab's own management bridge, and only for the domains
its `groups` section lists, asked from the addresses listed there: this checkout's nodes.

Run as `fence_virtd -F -f <conf> -p <pid>` (no init system is assumed), its output in
.lab/logs/fence_virtd.log, its pid, configuration and key under .lab/fencing/. make lab
starts it (or keeps the one it started, when its configuration is unchanged and it
answers), make lab-destroy stops it. What the configuration says is decided by a pure
function, tested on its text.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from ..command import alive, check, read_pid, spawn
from ..settings import LAB_DIR
from ..wait import LabError, WaitTimeout, wait_for
from .access import Runner, as_root
from .libvirtd import HOST_URI

FENCE_PORT = 1229  # fence_virt's default tcp port
FENCE_DIR = os.path.join(LAB_DIR, "fencing")
CONF = os.path.join(FENCE_DIR, "fence_virtd.conf")
PID_FILE = os.path.join(FENCE_DIR, "fence_virtd.pid")
KEY_FILE = os.path.join(LAB_DIR, "secrets", "fence_xvm.key")
LOG_FILE = os.path.join(LAB_DIR, "logs", "fence_virtd.log")
MODULE_PATH = "/usr/lib/x86_64-linux-gnu/fence-virt"
KEY_BYTES = 512
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.5
# On the node: fence_virt's own default key path, so `fence_virt -o list` needs no -k.
NODE_KEY_FILE = "/etc/cluster/fence_xvm.key"
# fence_virt's timeout on the nodes (its default, 30 s, is short for a busy TCG host).
AGENT_TIMEOUT_S = 60
# Fencing node-a waits this long, so that in a split node-a (the NFS server, which the
# other node's VMs need) wins the fence race and node-b is the one powered off.
RACE_DELAY_S = 10
SURVIVOR = "node-a"


class FencingError(LabError):
    pass


@dataclass(frozen=True)
class Member:
    """A node fence_virtd may fence, and the address its requests come from."""

    domain: str
    uuid: str
    ip: str


def bridge_address(management_subnet: str) -> str:
    """The host's address on the management network: vagrant-libvirt gives the bridge the
    subnet's first host address."""
    return str(next(ipaddress.ip_network(management_subnet, strict=False).hosts()))


def conf_text(
    address: str,
    port: int,
    key_file: str,
    group: str,
    members: Iterable[Member],
    uri: str = HOST_URI,
    module_path: str = MODULE_PATH,
) -> str:
    """fence_virtd's configuration: the tcp listener on `address` only, the libvirt backend,
    and one group that allows exactly `members` and only from their addresses. A request
    names its domain by name (dlm.conf's plug=) or uuid, and fence_virtd matches that text
    against the group's `uuid =` lines, so each member has both; without an `ip =` line
    fence_virtd refuses every request."""
    members = list(members)
    lines = [f'\t\tuuid = "{key}";' for m in members for key in (m.domain, m.uuid)]
    lines += [f'\t\tip = "{m.ip}";' for m in members]
    allowed = "\n".join(lines)
    return f"""# virtdlm lab: written by make lab (lab/host/fencing.py); make lab-destroy stops it.
fence_virtd {{
\tlistener = "tcp";
\tbackend = "libvirt";
\tmodule_path = "{module_path}";
}}
listeners {{
\ttcp {{
\t\tkey_file = "{key_file}";
\t\taddress = "{address}";
\t\tport = "{port}";
\t\tfamily = "ipv4";
\t}}
}}
backends {{
\tlibvirt {{
\t\turi = "{uri}";
\t}}
}}
groups {{
\tgroup {{
\t\tname = "{group}";
{allowed}
\t}}
}}
"""


def key_file(path: str = KEY_FILE) -> str:
    """The fence key shared by fence_virtd and the nodes' fence_virt, made once."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o400), "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
    return path


def running_pid(pid_file: str = PID_FILE) -> int | None:
    """Our fence_virtd's pid, if it runs (a reused pid is not ours)."""
    pid = read_pid(pid_file)
    if pid is None or not alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii") as f:
            return pid if f.read().strip() == "fence_virtd" else None
    except OSError:
        return None


def listening(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=2.0):
        return True
    return False


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def log_tail(lines: int = 15) -> str:
    return "\n".join(_read(LOG_FILE).splitlines()[-lines:])


def ensure(who: Runner, address: str, port: int, text: str) -> str:
    """fence_virtd running with configuration `text`, listening on address:port. Keeps the
    one this lab started when its configuration is the same and it listens; what it did."""
    pid = running_pid()
    if pid is not None and _read(CONF) == text and listening(address, port):
        return f"fence_virtd (pid {pid}) already serves {address}:{port}"
    stop(who)
    if listening(address, port):
        raise FencingError(
            f"{address}:{port} is taken by a process this lab did not start (another "
            f"fence_virtd?): see `ss -ltnp sport = :{port}`; stop it, or run `make lab-destroy` "
            "in the checkout that started it"
        )
    os.makedirs(FENCE_DIR, mode=0o700, exist_ok=True)
    os.makedirs(os.path.dirname(LOG_FILE), exist_ok=True)
    with open(os.open(CONF, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    # fence_virtd -F stays in the foreground and logs to stdout: started in its own
    # session with its output in the log, it outlives make lab until make lab-destroy.
    argv = as_root(["fence_virtd", "-F", "-d", "1", "-f", CONF, "-p", PID_FILE], who)
    spawn(argv, LOG_FILE)
    try:
        wait_for(
            lambda: running_pid() is not None and listening(address, port),
            START_TIMEOUT_S,
            POLL_S,
            f"fence_virtd to listen on {address}:{port}",
        )
    except WaitTimeout as err:
        raise FencingError(
            f"fence_virtd did not come up on {address}:{port} within {START_TIMEOUT_S:.0f} s; "
            f"its log ({LOG_FILE}) ends:\n{log_tail()}"
        ) from err
    return f"fence_virtd (pid {running_pid()}) started on {address}:{port}"


def stop(who: Runner) -> int | None:
    """Stop the fence_virtd this lab started; its pid, None if none ran."""
    pid = running_pid()
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(PID_FILE)
        return None
    check(as_root(["kill", "-TERM", str(pid)], who), timeout_s=STOP_TIMEOUT_S)
    try:
        wait_for(lambda: not alive(pid), STOP_TIMEOUT_S, POLL_S, f"fence_virtd {pid} to exit")
    except WaitTimeout:
        check(as_root(["kill", f"-{signal.SIGKILL.value}", str(pid)], who), STOP_TIMEOUT_S)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(PID_FILE)
    return pid
