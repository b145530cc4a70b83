"""Fixtures of the unit tier: short temp dirs, a model server, daemons, fake QEMUs, and an
in-process node with the libvirt test driver for lock-health tests (health_node.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import libvirt
import pytest

from virtdlm.backends.model import ModelDlm
from virtdlm.config import Config
from virtdlm.protocol import DiskSpec, ResourceSpec

from .daemon_thread import DaemonThread
from .health_node import HEALTH_INTERVAL_S, NODE_ID, QUORUM_GRACE_S, TEST_URI, Node
from .procs import DaemonProc, FakeQemu, ModelServerProc


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A temp dir with a short path (unix socket paths are limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="vdl-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def model_server(short_dir: str) -> Iterator[ModelServerProc]:
    server = ModelServerProc.start(short_dir)
    yield server
    server.stop()


@pytest.fixture
def make_daemon(
    short_dir: str, model_server: ModelServerProc
) -> Iterator[Callable[..., DaemonProc]]:
    """Start virtdlmd processes on the shared model server; node N plays cluster node N."""
    started: list[DaemonProc] = []

    def make(node: int = 1, **overrides: Any) -> DaemonProc:
        daemon = DaemonProc.on_model(short_dir, model_server.socket, node, **overrides).start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProc]) -> DaemonProc:
    return make_daemon(1)


@pytest.fixture
def make_qemu() -> Iterator[Callable[..., FakeQemu]]:
    started: list[FakeQemu] = []

    def make(socket_path: str, name: str, disks: list[ResourceSpec], **kw: Any) -> FakeQemu:
        q = FakeQemu.start(socket_path, name, disks, **kw)
        started.append(q)
        return q

    yield make
    for q in started:
        q.kill()


@pytest.fixture
def images(short_dir: str) -> dict[str, str]:
    """The thesis's disk images, as empty files: one.qcow2, two.qcow2, share.raw."""
    out = {}
    for name in ("one.qcow2", "two.qcow2", "share.raw"):
        path = os.path.join(short_dir, name)
        open(path, "wb").close()
        out[name] = path
    return out


def disk(path: str, readonly: bool = False, shared: bool = False) -> DiskSpec:
    return DiskSpec(path=path, readonly=readonly, shared=shared)


@pytest.fixture
def virt() -> Iterator[Any]:
    """The test's connection to test:///default; while it is open, the driver's state lives."""
    conn = libvirt.open(TEST_URI)
    yield conn
    for dom in conn.listAllDomains():
        if dom.name().startswith("vm-"):
            persistent = dom.isPersistent()  # a transient domain is gone once destroyed
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
    conn.close()


@pytest.fixture
def make_node(short_dir: str, virt: Any) -> Iterator[Callable[..., Node]]:
    """virtdlmd in this process as node-a of a fresh model DLM (health_node.py); keyword
    arguments override its Config."""
    started: list[Node] = []

    def make(**overrides: Any) -> Node:
        config = Config(
            backend="model",
            node_name="node-a",
            socket_path=os.path.join(short_dir, "d.sock"),
            state_dir=os.path.join(short_dir, "state"),
            health_interval_s=HEALTH_INTERVAL_S,
            quorum_grace_s=QUORUM_GRACE_S,
            lockfailure_uri=TEST_URI,
        )
        dlm = ModelDlm()
        vdl = DaemonThread(replace(config, **overrides), dlm.session(NODE_ID))
        node = Node(vdl.start(), dlm, virt)
        started.append(node)
        return node

    yield make
    for node in started:
        node.fault()  # healthy: no call of the daemon's stays blocked in the model
        node.vdl.stop()
