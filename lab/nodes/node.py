"""One lab node: a testinfra host over SSH (paramiko), every command with a deadline.

``Node.host`` is a testinfra Host on its paramiko backend, configured by the node's
`vagrant ssh-config` file: health checks and tests write ``host.service(...)``,
``host.file(...)``, ``host.mount_point(...)``, ``host.run(...)``. Every command it runs, its
own modules' included, runs under coreutils `timeout` (and `sudo -n`, never a password
prompt) on the node *and* under a deadline here (lab.wait.bounded_call), so neither a hung
virsh nor a dead node can hang the test run. ``run``/``check`` return lab.command's Result
record; ``put`` copies a file in over the same SSH connection (SFTP).
"""

from __future__ import annotations

import math
import os
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Any

import paramiko
import testinfra.host
from testinfra.backend.base import BaseBackend, CommandResult
from testinfra.backend.paramiko import ParamikoBackend

from ..command import CommandFailed, CommandTimeout, Result
from ..wait import LabError, WaitTimeout, bounded_call

DEFAULT_TIMEOUT_S = 60.0
MAX_STDERR_BYTES = 4096  # of a session program that ended, for the error
CONNECT_TIMEOUT_S = 15
PUT_TIMEOUT_S = 300.0
GRACE_S = 5.0  # the local deadline waits this much longer than the remote `timeout`
KILL_AFTER_S = 5  # `timeout -k`: SIGKILL this long after the SIGTERM
TIMEOUT_RC = 124  # coreutils timeout: the command ran out of time


@dataclass(frozen=True)
class SshConfig:
    host: str
    port: int
    user: str
    identity: str


def parse_ssh_config(text: str, name: str) -> SshConfig:
    """The Host `name` entry of `vagrant ssh-config` output, read by paramiko's parser (the
    one testinfra's paramiko backend reads the same file with)."""
    config = paramiko.SSHConfig.from_text(text)
    if name not in config.get_hostnames():
        raise LabError(f"vagrant ssh-config has no Host {name}: {text[:300]!r}")
    values = config.lookup(name)
    if "identityfile" not in values:
        raise LabError(f"vagrant ssh-config of {name} lacks IdentityFile: {text[:300]!r}")
    return SshConfig(
        values["hostname"],
        int(values.get("port", "22")),
        values.get("user", "vagrant"),
        values["identityfile"][0],
    )


def remote_command(command: str, timeout_s: float, sudo: bool) -> str:
    """The shell line a node runs for `command`: under `timeout`, as root unless told not."""
    seconds = max(1, math.ceil(timeout_s))  # `timeout 0` would mean no deadline at all
    line = f"timeout -k {KILL_AFTER_S} {seconds} sh -c {shlex.quote(command)}"
    return f"sudo -n {line}" if sudo else line


class Deadlines(BaseBackend):
    """A testinfra backend's commands with the lab's deadlines (remote_command and a local
    bound); mixed in before a backend class, e.g. DeadlineBackend below.

    sudo and `timeout` are added here, not by testinfra's `sudo /bin/sh -c`.
    """

    timeout_s: float = DEFAULT_TIMEOUT_S
    as_root: bool = True

    def get_command(self, command: str, *args: str) -> str:
        return self.quote(command, *args)

    def run(
        self,
        command: str,
        *args: str,
        timeout_s: float | None = None,
        sudo: bool | None = None,
        **kwargs: Any,
    ) -> CommandResult:
        limit = self.timeout_s if timeout_s is None else timeout_s
        line = self.quote(command, *args)
        wrapped = remote_command(line, limit, self.as_root if sudo is None else sudo)
        backend_run = super().run
        try:
            result = bounded_call(
                lambda: backend_run(wrapped),
                limit + GRACE_S,
                f"[{self.hostname}] {line}",
                self.close,
            )
        except WaitTimeout as err:
            raise CommandTimeout(self.hostname, [line], limit, "") from err
        except (OSError, EOFError, paramiko.SSHException) as err:
            self.close()
            raise LabError(f"[{self.hostname}] {line}: ssh failed: {err}") from err
        if result.rc == TIMEOUT_RC:
            raise CommandTimeout(
                self.hostname,
                [line],
                limit,
                (result.stdout_bytes + result.stderr_bytes).decode(errors="replace"),
            )
        return result

    def close(self) -> None:
        """Drop the connection, if the backend has one; the next command connects again."""


class DeadlineBackend(Deadlines, ParamikoBackend):
    """testinfra's paramiko backend, reading the node's ssh-config file, with deadlines."""

    def __init__(self, name: str, ssh_config: str) -> None:
        super().__init__(name, ssh_config=ssh_config, timeout=CONNECT_TIMEOUT_S)
        self._lock = threading.Lock()

    def ssh_client(self) -> paramiko.SSHClient:
        """The connection (testinfra's, made on first use)."""
        with self._lock:
            return self.client

    def close(self) -> None:
        with self._lock:
            client = vars(self).pop("client", None)  # testinfra caches it as a property
        if client is not None:
            client.close()


class Session:
    """A long-lived program on a node, asked one line at a time over one SSH channel: a
    question costs one round trip, not an SSH command and a program start. Every answer
    has a deadline; on any failure the channel is closed and the next ask opens a new one."""

    def __init__(self, node: Node, command: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.node = node
        self.command = command
        self.timeout_s = timeout_s
        self._chan: paramiko.Channel | None = None
        self._lines: Any = None

    def _open(self) -> paramiko.Channel:
        backend = self.node.host.backend
        if not isinstance(backend, DeadlineBackend):
            raise LabError(f"[{self.node.name}] {self.command}: not reached over SSH")
        transport = backend.ssh_client().get_transport()
        if transport is None or not transport.is_active():
            backend.close()
            transport = backend.ssh_client().get_transport()
            assert transport is not None
        chan = transport.open_session(timeout=CONNECT_TIMEOUT_S)
        chan.settimeout(self.timeout_s)
        chan.exec_command(f"sudo -n {self.command}")
        self._chan, self._lines = chan, chan.makefile("rb")
        return chan

    def ask(self, line: str) -> str:
        """Send one line, return the one line that answers it."""
        chan = self._chan if self._chan is not None and not self._chan.closed else self._open()
        try:
            chan.sendall(line.encode() + b"\n")
            answer = self._lines.readline()
        except TimeoutError as err:
            self.close()
            raise CommandTimeout(self.node.name, [self.command, line], self.timeout_s, "") from err
        except (OSError, EOFError, paramiko.SSHException) as err:
            self.close()
            raise LabError(f"[{self.node.name}] {self.command}: ssh failed: {err}") from err
        if not answer.endswith(b"\n"):
            stderr = chan.recv_stderr(MAX_STDERR_BYTES).decode(errors="replace").strip()
            self.close()
            raise LabError(f"[{self.node.name}] {self.command} ended: {stderr or 'no answer'}")
        return str(answer.decode(errors="replace").rstrip("\n"))

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()
        self._chan = self._lines = None


class Node:
    def __init__(self, name: str, ssh: SshConfig, host: testinfra.host.Host) -> None:
        self.name = name
        self.ssh = ssh
        self.host = host

    @classmethod
    def from_ssh_config(cls, name: str, path: str) -> Node:
        """A node reached as `vagrant ssh-config NAME` (saved at `path`) says."""
        with open(path, encoding="utf-8") as f:
            ssh = parse_ssh_config(f.read(), name)
        backend = DeadlineBackend(name, path)
        # Not testinfra.get_host: its cache would share one connection between Nodes.
        host = testinfra.host.Host(backend)
        backend.set_host(host)
        return cls(name, ssh, host)

    def run(self, command: str, timeout_s: float = DEFAULT_TIMEOUT_S, sudo: bool = True) -> Result:
        """Run a shell command on the node; returns the Result whatever its exit code."""
        started = time.monotonic()
        r = self.host.run(command, timeout_s=timeout_s, sudo=sudo)
        # decoded here, not by testinfra: a stray byte in a journal must not fail the call
        out, err = (b.decode(errors="replace") for b in (r.stdout_bytes, r.stderr_bytes))
        return Result(self.name, (command,), r.rc, out, err, time.monotonic() - started)

    def check(
        self, command: str, timeout_s: float = DEFAULT_TIMEOUT_S, sudo: bool = True
    ) -> Result:
        result = self.run(command, timeout_s, sudo)
        if not result.ok:
            raise CommandFailed(result)
        return result

    def put(self, local: str, remote: str) -> None:
        """Copy a file onto the node (as the ssh user), within PUT_TIMEOUT_S."""
        backend = self.host.backend
        if not isinstance(backend, DeadlineBackend):
            raise LabError(f"[{self.name}] cannot copy {local}: not reached over SSH")

        def copy() -> None:
            sftp = backend.ssh_client().open_sftp()
            try:
                sftp.get_channel().settimeout(DEFAULT_TIMEOUT_S)  # type: ignore[union-attr]
                sftp.put(local, remote)
            finally:
                sftp.close()

        what = f"[{self.name}] copy {os.path.basename(local)} to {remote}"
        try:
            bounded_call(copy, PUT_TIMEOUT_S, what, backend.close)
        except WaitTimeout as err:
            raise CommandTimeout(self.name, ["sftp put", local, remote], PUT_TIMEOUT_S, "") from err
        except (OSError, EOFError, paramiko.SSHException) as err:
            backend.close()
            raise LabError(f"{what}: ssh failed: {err}") from err

    def session(self, command: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Session:
        """A long-lived `command` (as root) asked one line at a time (Session)."""
        return Session(self, command, timeout_s)

    def close(self) -> None:
        if isinstance(self.host.backend, Deadlines):
            self.host.backend.close()
