"""Fixtures of the unit tier: short temp dirs, a model server, daemons, fake QEMUs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from virtdlm.protocol import DiskSpec, ResourceSpec

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
        directory = os.path.join(short_dir, f"n{node}")
        os.makedirs(directory, exist_ok=True)
        config: dict[str, Any] = {
            "backend": "model",
            "model_socket": model_server.socket,
            "model_node_id": node,
            "node_name": f"node-{chr(ord('a') + node - 1)}",
            "socket_path": os.path.join(directory, "d.sock"),
            "state_dir": os.path.join(directory, "state"),
        }
        config.update(overrides)
        daemon = DaemonProc(directory, config).start()
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
