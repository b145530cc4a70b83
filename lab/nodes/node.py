"""One lab node reached over SSH (paramiko): run commands with deadlines, copy files in.

Every remote command runs under coreutils `timeout` on the node *and* a channel deadline
here, so neither a hung virsh nor a dead node can hang the test run. Results are the same
record lab.command returns.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

import paramiko

from ..command import CommandFailed, CommandTimeout, Result
from ..wait import LabError

DEFAULT_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 15.0
GRACE_S = 5.0  # the channel waits this much longer than the remote `timeout`


@dataclass(frozen=True)
class SshConfig:
    host: str
    port: int
    user: str
    identity: str


def parse_ssh_config(text: str) -> SshConfig:
    """Parse `vagrant ssh-config NODE` output (captured text in, record out)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            values.setdefault(parts[0].lower(), parts[1].strip().strip('"'))
    try:
        return SshConfig(
            values["hostname"],
            int(values.get("port", "22")),
            values.get("user", "vagrant"),
            values["identityfile"],
        )
    except KeyError as err:
        raise LabError(f"vagrant ssh-config lacks {err.args[0]}: {text[:300]!r}") from err


class Node:
    def __init__(self, name: str, ssh: SshConfig) -> None:
        self.name = name
        self.ssh = ssh
        self._client: paramiko.SSHClient | None = None

    def _connect(self) -> paramiko.SSHClient:
        transport = self._client.get_transport() if self._client is not None else None
        if self._client is not None and transport is not None and transport.is_active():
            return self._client
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # lab VMs, fresh keys
        try:
            client.connect(
                self.ssh.host,
                self.ssh.port,
                self.ssh.user,
                key_filename=self.ssh.identity,
                timeout=CONNECT_TIMEOUT_S,
                banner_timeout=CONNECT_TIMEOUT_S,
                auth_timeout=CONNECT_TIMEOUT_S,
                allow_agent=False,
                look_for_keys=False,
            )
        except (OSError, paramiko.SSHException) as err:
            raise LabError(
                f"[{self.name}] ssh {self.ssh.user}@{self.ssh.host}:{self.ssh.port}: {err}"
            ) from err
        self._client = client
        return client

    def run(self, command: str, timeout_s: float = DEFAULT_TIMEOUT_S, sudo: bool = True) -> Result:
        """Run a shell command on the node; returns the Result whatever its exit code."""
        wrapped = f"timeout -k 5 {int(timeout_s)} sh -c {shlex.quote(command)}"
        if sudo:
            wrapped = f"sudo -n {wrapped}"
        started = time.monotonic()
        client = self._connect()
        try:
            _stdin, stdout, stderr = client.exec_command(wrapped, timeout=timeout_s + GRACE_S)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            rc = stdout.channel.recv_exit_status()
        except TimeoutError as exc:
            self.close()
            raise CommandTimeout(self.name, [command], timeout_s, "") from exc
        except (OSError, paramiko.SSHException) as exc:
            self.close()
            raise LabError(f"[{self.name}] {command}: ssh failed: {exc}") from exc
        result = Result(self.name, (command,), rc, out, err, time.monotonic() - started)
        if rc == 124:  # coreutils timeout
            raise CommandTimeout(self.name, [command], timeout_s, out + err)
        return result

    def check(
        self, command: str, timeout_s: float = DEFAULT_TIMEOUT_S, sudo: bool = True
    ) -> Result:
        result = self.run(command, timeout_s, sudo)
        if not result.ok:
            raise CommandFailed(result)
        return result

    def put(self, local: str, remote: str) -> None:
        sftp = self._connect().open_sftp()
        try:
            sftp.get_channel().settimeout(DEFAULT_TIMEOUT_S)  # type: ignore[union-attr]
            sftp.put(local, remote)
        finally:
            sftp.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
