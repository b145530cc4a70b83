"""A backend call that outlives its request's deadline keeps nothing (issue 12, item 5).

In the lab the DLM blocked while a lost node awaited fencing; an acquire gave up, libvirt
killed that QEMU, and minutes later the DLM granted the acquire anyway: the disk stayed
locked exclusively by a process that no longer existed. Here virtdlmd runs in this process,
on its own event loop thread (daemon_thread.py), over a model DLM whose calls wait at a gate
the test closes and opens (a DLM awaiting fencing holds every call the same way). The
daemon's deadline is cut to REQUEST_TIMEOUT_S so that each test takes a second or two.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lab.wait import wait_for
from virtdlm.backends.base import LockFlags, Mode
from virtdlm.backends.model import ModelDlm, ModelHealthProbe
from virtdlm.config import Config
from virtdlm.errors import BackendError

from .conftest import disk
from .daemon_thread import DaemonThread
from .procs import FakeQemu

REQUEST_TIMEOUT_S = 1.0  # the daemon's deadline here (25 s in production)
PENDING_DEADLINE_S = 5.0  # long enough to kill QEMU while its acquire is still pending
GATE_LIMIT_S = 15.0  # a call held at the gate fails if the test never opens it
HELD_WITHIN_S = 2.0  # a request reaches the closed gate within this
REPLY_SLACK_S = 2.0  # a reply comes within the deadline plus this
SETTLE_S = 3.0  # once the gate opens, a late call has ended within this


class GatedBackend:
    """A model DLM session whose calls wait while the gate is closed."""

    name = "model"
    cluster = False
    blocking = True  # calls run on the daemon's worker thread, as libdlm's do

    def __init__(self, dlm: ModelDlm) -> None:
        self._session = dlm.session(1)
        self.lockspace = dlm.lockspace
        self.node_id = 1
        self._open = threading.Event()
        self._open.set()
        self.held = threading.Event()  # set once a call waits at the closed gate

    def close_gate(self) -> None:
        self.held.clear()
        self._open.clear()

    def open_gate(self) -> None:
        self._open.set()

    def _pass(self, what: str) -> None:
        if not self._open.is_set():
            self.held.set()
            if not self._open.wait(GATE_LIMIT_S):
                raise BackendError(f"{what}: held at the gate for {GATE_LIMIT_S:.0f} s")

    def lock(
        self, resource: str, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> tuple[int, bytes | None]:
        self._pass(f"lock {resource}")
        return self._session.lock(resource, mode, flags, lvb)

    def convert(
        self, lkid: int, mode: Mode, flags: LockFlags, lvb: bytes | None = None
    ) -> bytes | None:
        self._pass(f"convert {lkid}")
        return self._session.convert(lkid, mode, flags, lvb)

    def unlock(self, lkid: int) -> None:
        self._pass(f"unlock {lkid}")
        self._session.unlock(lkid)

    def adopt(self, resource: str, mode: Mode, flags: LockFlags) -> int:
        self._pass(f"adopt {resource}")
        return self._session.adopt(resource, mode, flags)

    def purge(self) -> None:
        self._pass("purge")
        self._session.purge()

    def close(self) -> None:
        self._session.close()

    def health_probe(self) -> ModelHealthProbe:
        return self._session.health_probe()


class GatedDaemonThread(DaemonThread):
    """virtdlmd in this process over a GatedBackend on a fresh model DLM."""

    def __init__(self, directory: str, request_timeout_s: float) -> None:
        self.dlm = ModelDlm()
        self.gated = GatedBackend(self.dlm)
        config = Config(
            backend="model",
            node_name="node-a",
            socket_path=os.path.join(directory, "d.sock"),
            state_dir=os.path.join(directory, "state"),
        )
        super().__init__(config, self.gated, request_timeout_s)

    def stop(self) -> None:
        self.gated.open_gate()
        super().stop()

    def nothing_held(self) -> bool:
        """No lock in the model DLM, none in virtdlmd's record (nor in a call held at the
        closed gate: wait for that call to end first)."""
        return self.dlm.snapshot() == [] and self.status()["locks"] == 0


@pytest.fixture
def make_vdl(short_dir: str) -> Iterator[Callable[[float], GatedDaemonThread]]:
    started: list[GatedDaemonThread] = []

    def make(request_timeout_s: float = REQUEST_TIMEOUT_S) -> GatedDaemonThread:
        vdl = GatedDaemonThread(short_dir, request_timeout_s)
        vdl.start()
        started.append(vdl)
        return vdl

    yield make
    for vdl in started:
        vdl.stop()


def _late_line(vm: FakeQemu, why: str, path: str) -> str:
    return f"acquire completed after {why} for {vm.name} (pid {vm.pid}): released ({path})"


def _logged(caplog: pytest.LogCaptureFixture, line: str) -> int:
    """How many of the daemon's log messages hold `line`."""
    return sum(line in message for message in caplog.messages)


def _wait_logged(caplog: pytest.LogCaptureFixture, line: str) -> None:
    """Wait for the daemon to log `line` (the calls held at the gate have then ended)."""
    __tracebackhide__ = True
    wait_for(lambda: _logged(caplog, line), SETTLE_S, 0.01, f"log line {line!r}")


def _assert_code(reply: dict[str, Any], code: int, name: str, *facts: str) -> None:
    __tracebackhide__ = True
    assert (reply["ok"], reply.get("code"), reply.get("error")) == (False, code, name), reply
    for fact in facts:
        assert fact in reply["message"], reply


# -- a late grant is released at once, and counted nowhere --------------------------------------


@pytest.mark.parametrize(
    ("deadline_s", "qemu_dies", "code", "name", "why", "owners"),
    [
        pytest.param(
            REQUEST_TIMEOUT_S, "never", 8, "TIMEOUT", "its deadline", 1, id="deadline-passed"
        ),
        pytest.param(
            REQUEST_TIMEOUT_S,
            "after the reply",
            8,
            "TIMEOUT",
            "its deadline",
            0,
            id="deadline-passed-then-qemu-killed (the lab's case)",
        ),
        pytest.param(
            PENDING_DEADLINE_S,
            "while pending",
            11,
            "NO_SUCH_PROCESS",
            "its owner exited",
            0,
            id="qemu-killed-while-its-acquire-is-pending",
        ),
    ],
)
def test_an_acquire_that_ends_late_keeps_nothing(
    make_vdl: Callable[[float], GatedDaemonThread],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    deadline_s: float,
    qemu_dies: str,
    code: int,
    name: str,
    why: str,
    owners: int,
) -> None:
    caplog.set_level(logging.INFO)
    vdl = make_vdl(deadline_s)
    one = images["one.qcow2"]
    vm1 = make_qemu(vdl.socket, "vm-1", [disk(one)])
    vdl.backend.close_gate()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(vdl.send, vm1.acquire_request())
        assert vdl.backend.held.wait(HELD_WITHIN_S), "the acquire never reached the DLM"
        if qemu_dies == "while pending":
            vm1.kill()
            wait_for(lambda: vdl.status()["owners"] == 0, SETTLE_S, 0.01, "vm-1 retired")
            vdl.backend.open_gate()
        reply = pending.result(deadline_s + REPLY_SLACK_S)
    if qemu_dies == "after the reply":
        vm1.kill()
        wait_for(lambda: vdl.status()["owners"] == 0, SETTLE_S, 0.01, "vm-1 retired")
    if code == 8:
        _assert_code(
            reply,
            code,
            name,
            f"acquire for vm-1 (pid {vm1.pid}): backend call acquire did not finish in "
            f"{deadline_s:g} s (running for",
            "whatever it still gets is released at once",
        )
    else:
        _assert_code(reply, code, name, f"pid {vm1.pid} exited while its acquire was pending")
    vdl.backend.open_gate()
    _wait_logged(caplog, _late_line(vm1, why, one))
    assert vdl.nothing_held()
    assert _logged(caplog, _late_line(vm1, why, one)) == 1
    assert vdl.status()["owners"] == owners
    assert not any("granted" in message for message in caplog.messages)
    vm2 = make_qemu(vdl.socket, "vm-2", [disk(one)])
    assert vdl.send(vm2.acquire_request())["ok"]  # nobody else holds the disk
    assert [lock[3] for lock in vdl.dlm.snapshot()] == ["EX"]


# -- the calls queued behind a held one ------------------------------------------------------------


def test_an_acquire_queued_behind_a_held_call_is_dropped_once_its_deadline_passes(
    make_vdl: Callable[[float], GatedDaemonThread],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    vdl = make_vdl(REQUEST_TIMEOUT_S)
    one, two = images["one.qcow2"], images["two.qcow2"]
    vm1 = make_qemu(vdl.socket, "vm-1", [disk(one)])
    vm2 = make_qemu(vdl.socket, "vm-2", [disk(two)])
    vdl.backend.close_gate()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(vdl.send, vm1.acquire_request())
        assert vdl.backend.held.wait(HELD_WITHIN_S), "the acquire never reached the DLM"
        # Half a deadline later: vm-2's request waits for the decision lock until vm-1's
        # times out, then its call queues behind vm-1's, still held at the gate.
        time.sleep(REQUEST_TIMEOUT_S / 2)
        second = pool.submit(vdl.send, vm2.acquire_request())
        replies = [f.result(REQUEST_TIMEOUT_S * 2 + REPLY_SLACK_S) for f in (first, second)]
    _assert_code(replies[0], 8, "TIMEOUT", "backend call acquire did not finish", "running for")
    _assert_code(
        replies[1],
        8,
        "TIMEOUT",
        f"acquire for vm-2 (pid {vm2.pid}): backend call acquire did not finish in "
        f"{REQUEST_TIMEOUT_S:g} s (not begun, queued behind 1 earlier calls; acquire running for",
    )
    vdl.backend.open_gate()
    _wait_logged(caplog, f"acquire for vm-2 (pid {vm2.pid}) dropped: its request timed out")
    assert vdl.nothing_held()
    assert _logged(caplog, _late_line(vm1, "its deadline", one)) == 1
    assert vdl.status()["owners"] == 2
    assert vdl.send(vm1.acquire_request())["ok"]  # both may try again, and get their disks
    assert vdl.send(vm2.acquire_request())["ok"]


def test_a_release_queued_behind_a_held_acquire_is_not_lost(
    make_vdl: Callable[[float], GatedDaemonThread],
    make_qemu: Callable[..., FakeQemu],
    images: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    vdl = make_vdl(REQUEST_TIMEOUT_S)
    one, two = images["one.qcow2"], images["two.qcow2"]
    vm1 = make_qemu(vdl.socket, "vm-1", [disk(one), disk(two)])
    assert vdl.send(vm1.acquire_request([disk(two)]))["ok"]
    vdl.backend.close_gate()
    _assert_code(vdl.send(vm1.acquire_request([disk(one)])), 8, "TIMEOUT", "running for")
    _assert_code(
        vdl.send(vm1.release_request([])),
        8,
        "TIMEOUT",
        f"release for vm-1 (pid {vm1.pid}): backend call release did not finish in "
        f"{REQUEST_TIMEOUT_S:g} s (not begun, queued behind 1 earlier calls",
        "it still runs once the backend answers",
    )
    vdl.backend.open_gate()
    _wait_logged(caplog, f"release EX for vm-1 (pid {vm1.pid}) ({two})")
    assert vdl.nothing_held()
    assert _logged(caplog, _late_line(vm1, "its deadline", one)) == 1
    vm2 = make_qemu(vdl.socket, "vm-2", [disk(two)])
    assert vdl.send(vm2.acquire_request())["ok"]
