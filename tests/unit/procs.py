"""Real processes for unit tests: a model server, a daemon, stand-ins for QEMU, and a cluster
of them (ModelCluster: one model server, a daemon per node).

Everything started here is stopped by pid at teardown; nothing outlives a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid as uuid_mod
from dataclasses import dataclass, field
from typing import Any

from lab.wait import wait_for
from virtdlm.client import Client
from virtdlm.protocol import OwnerSpec, Request, ResourceSpec, resource_message

PY = sys.executable
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
FAKE_QEMU = os.path.join(os.path.dirname(__file__), "fake_qemu.py")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.path.join(root, "plugin") + os.pathsep + root
    return env


def _reap(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def _conf_value(value: object) -> str:
    """A value as qemu-dlm.conf writes it: "string", 1.5, or an integer (booleans: 0/1)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    assert isinstance(value, int), value
    return str(int(value))


def _socket_answers(path: str) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


@dataclass
class ModelServerProc:
    socket: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, directory: str) -> ModelServerProc:
        path = os.path.join(directory, "model.sock")
        with open(os.path.join(directory, "model.log"), "wb") as log:
            proc = subprocess.Popen(
                [PY, "-m", "virtdlm.backends.model_server", "--socket", path],
                env=_env(),
                stderr=log,
            )
        wait_for(
            lambda: proc.poll() is not None or _socket_answers(path),
            START_TIMEOUT_S,
            what=f"model server socket {path}",
        )
        assert proc.poll() is None, "model server exited at start"
        return cls(path, proc)

    def stop(self) -> None:
        _reap(self.proc)

    def kill9(self) -> None:
        """The quickest end (stop() waits for the server's poll interval); every session
        and lock goes with it."""
        _reap(self.proc, signal.SIGKILL)


@dataclass
class DaemonProc:
    directory: str
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    runs: int = 0

    @classmethod
    def on_model(cls, parent: str, model_socket: str, node: int, **overrides: Any) -> DaemonProc:
        """virtdlmd (not started) as cluster node N of a model server: node 1 is node-a, 2
        node-b; its socket, state and logs in <parent>/n<N>. Keywords override its config."""
        directory = os.path.join(parent, f"n{node}")
        os.makedirs(directory, exist_ok=True)
        config: dict[str, Any] = {
            "backend": "model",
            "model_socket": model_socket,
            "model_node_id": node,
            "node_name": f"node-{chr(ord('a') + node - 1)}",
            "socket_path": os.path.join(directory, "d.sock"),
            "state_dir": os.path.join(directory, "state"),
        }
        config.update(overrides)
        return cls(directory, config)

    @property
    def socket(self) -> str:
        return str(self.config["socket_path"])

    def write_config(self) -> str:
        path = os.path.join(self.directory, "qemu-dlm.conf")
        with open(path, "w", encoding="utf-8") as f:
            for key, value in self.config.items():
                f.write(f"{key} = {_conf_value(value)}\n")
        return path

    def start(self) -> DaemonProc:
        self.runs += 1
        self.log_path = os.path.join(self.directory, f"virtdlmd.{self.runs}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "virtdlm.daemon",
                    "--config",
                    self.write_config(),
                    "--log-level",
                    "DEBUG",
                ],
                env=_env(),
                stderr=log,
            )
        proc = self.proc
        wait_for(
            lambda: proc.poll() is not None or self.answers(),
            START_TIMEOUT_S,
            what=f"virtdlmd socket {self.socket}",
        )
        assert proc.poll() is None, f"virtdlmd exited at start: {self.log()}"
        return self

    def answers(self) -> bool:
        try:
            with Client(self.socket, timeout_s=2) as c:
                return bool(c.send(Request("status"))["ok"])
        except Exception:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc is not None:
            _reap(self.proc)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def logs(self) -> dict[str, str]:
        """The log of every run so far (a restart starts a new one), by path."""
        out = {}
        for run in range(1, self.runs + 1):
            path = os.path.join(self.directory, f"virtdlmd.{run}.log")
            with open(path, encoding="utf-8", errors="replace") as f:
                out[path] = f.read()
        return out

    def send(self, request: Request) -> dict[str, Any]:
        """Send one request on a fresh connection; the reply as it came (ok or not)."""
        with Client(self.socket) as c:
            return c.send(request)

    def locks(self) -> list[dict[str, Any]]:
        reply = self.send(Request("locks"))
        assert reply["ok"], reply
        return list(reply["locks"])


@dataclass
class FakeQemu:
    """A process that registers itself like libvirt's pre-exec child, then idles like QEMU."""

    uuid: str
    name: str
    proc: subprocess.Popen[bytes]
    disks: list[ResourceSpec] = field(default_factory=list)
    action: str = "default"  # the domain's on_lockfailure, sent with register and acquire

    @classmethod
    def start(
        cls,
        socket_path: str,
        name: str,
        disks: list[ResourceSpec],
        register: bool = True,
        restrict: bool = True,
        action: str = "default",
        uuid: str | None = None,
    ) -> FakeQemu:
        uid = uuid or str(uuid_mod.uuid4())
        proc = subprocess.Popen(
            [
                PY,
                FAKE_QEMU,
                socket_path,
                uid,
                name,
                json.dumps([resource_message(d) for d in disks]),
                "register" if register else "idle",
                "restrict" if restrict else "open",
                action,
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if line != "ready":
            _reap(proc, signal.SIGKILL)
            raise AssertionError(f"fake qemu {name}: {line} {proc.stderr.read().decode()}")
        return cls(uid, name, proc, disks, action)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def owner(self) -> OwnerSpec:
        return OwnerSpec(uuid=self.uuid, name=self.name, id=1, pid=self.pid)

    def acquire_request(self, disks: list[ResourceSpec] | None = None) -> Request:
        """acquire of its disks (or of `disks`) for this QEMU."""
        disks = self.disks if disks is None else disks
        return Request("acquire", self.owner, tuple(disks), action=self.action)

    def release_request(self, disks: list[ResourceSpec] | None = None) -> Request:
        """release of its disks (or of `disks`; [] = everything it holds)."""
        return Request("release", self.owner, tuple(self.disks if disks is None else disks))

    def kill(self) -> None:
        _reap(self.proc, signal.SIGKILL)


@dataclass
class ModelCluster:
    """A model server and one virtdlmd per node on it (node-a, node-b, ...) in one directory,
    and the fake QEMUs started on them; close() ends every one of them with kill -9."""

    directory: str
    server: ModelServerProc | None = None
    daemons: dict[str, DaemonProc] = field(default_factory=dict)  # by node name
    qemus: list[FakeQemu] = field(default_factory=list)

    @classmethod
    def start(cls, directory: str, nodes: int = 2) -> ModelCluster:
        cluster = cls(directory)
        try:
            cluster.server = ModelServerProc.start(directory)
            for node in range(1, nodes + 1):
                daemon = DaemonProc.on_model(directory, cluster.server.socket, node)
                cluster.daemons[str(daemon.config["node_name"])] = daemon
                daemon.start()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def start_qemu(self, node: str, name: str, disks: list[ResourceSpec] | None = None) -> FakeQemu:
        """A fake QEMU registered with `node`'s virtdlmd (AssertionError if refused)."""
        qemu = FakeQemu.start(self.daemons[node].socket, name, disks or [])
        self.qemus.append(qemu)
        return qemu

    def close(self) -> None:
        for qemu in self.qemus:
            qemu.kill()
        for daemon in self.daemons.values():  # what they hold ends with the server
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.kill9()
        if self.server is not None:
            self.server.kill9()
