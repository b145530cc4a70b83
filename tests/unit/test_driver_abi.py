"""dlm.so without virtdlmd: its ABI, its argument checks and the exact requests it sends.

The driver is loaded in this process through driver_abi.DriverHandle, as libvirt loads it.
A fake daemon (a thread speaking the framing of docs/protocol.md) records each request and
answers from a script, so the wire form, the fd handed to QEMU and the error mapping are
checked here. Refusals in this file all come from the driver layer, or from the fake daemon
standing in for virtdlmd.

Longer than the house's ~400 lines on purpose: one table per entry point (drvInit .. drvInquire)
over one harness, read top to bottom in libvirt's call order; split it by entry point if it
grows further.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from lab.command import check, run
from virtdlm import config, protocol
from virtdlm.errors import ErrorCode

from . import driver_abi as abi
from . import driver_source
from .procs import DaemonProc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UUID = "6a1f0c4e-3b5d-4f6a-9c1e-2d3b4c5d6e7f"
NAME = "vm-1"
DOMAIN_ID = 7
DEFAULT_SOCKET = config.DEFAULT_SOCKET_PATH
IO_TIMEOUT_S = 5.0
SUBPROCESS_TIMEOUT_S = 60.0
NOT_RUNNING = "virtdlmd is not running"
BUSY_MESSAGE = "disk /x is locked exclusively by vm-1 on node-a"
V = protocol.PROTOCOL_VERSION
MAX_FRAME = protocol.MAX_FRAME_BYTES
MAX_PATH = protocol.MAX_PATH_BYTES
MAX_NAME = protocol.MAX_NAME_BYTES
MAX_RESOURCES = protocol.MAX_RESOURCES_PER_REQUEST
OK = protocol.ok_reply()


def refusal(code: int, message: str, **extra: Any) -> dict[str, Any]:
    """An error reply as virtdlmd sends it (protocol.error_reply)."""
    name = ErrorCode(code).name if code in {int(c) for c in ErrorCode} else "UNKNOWN"
    return {"v": V, "ok": False, "code": code, "error": name, "message": message, **extra}


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def busy() -> dict[str, Any]:
    holder = {"domain": "vm-1", "node": "node-a", "mode": "EX"}
    return refusal(ErrorCode.BUSY, BUSY_MESSAGE, resource="/x", holder=holder)


def disk(path: str, readonly: bool = False, shared: bool = False) -> dict[str, Any]:
    return {"type": "disk", "path": path, "readonly": readonly, "shared": shared}


def owner(pid: int, id: int = DOMAIN_ID) -> dict[str, Any]:
    return {"uuid": UUID, "name": NAME, "id": id, "pid": pid}


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlm_so(request: pytest.FixtureRequest) -> str:
    path = str(request.config.getoption("--driver"))
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing: build it with 'make plugin'")
    return path


@pytest.fixture
def driver(dlm_so: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[abi.DriverHandle]:
    monkeypatch.delenv("VIRTDLM_SOCKET", raising=False)
    handle = abi.DriverHandle(dlm_so)
    yield handle
    if handle.has_private_data:
        handle.free()


def write_config(directory: str, text: str) -> str:
    path = os.path.join(directory, "qemu-dlm.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def ready(driver: abi.DriverHandle, socket_path: str, directory: str) -> abi.DriverHandle:
    """init with a config naming socket_path, then new with the five owner parameters."""
    config = write_config(directory, f'socket_path = "{socket_path}"\n')
    assert driver.init(config) == 0
    assert driver.new(UUID, NAME, DOMAIN_ID, os.getpid()) == 0
    return driver


class FakeDaemon:
    """A stand-in for virtdlmd: records each request frame and answers from a script.

    Replies are dicts (sent as JSON) or raw bytes (sent as they are, for broken frames).
    Connections are kept open so that tests can see whether the driver closed them.
    """

    def __init__(self, path: str, replies: list[dict[str, Any] | bytes]) -> None:
        self.path = path
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.connections: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self.listener.settimeout(IO_TIMEOUT_S)
        self.thread = threading.Thread(target=self._serve, name="fake-virtdlmd", daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError(f"client closed after {len(data)} of {size} bytes")
            data += chunk
        return data

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed by stop(), or nobody came within IO_TIMEOUT_S
            conn.settimeout(IO_TIMEOUT_S)
            self.connections.append(conn)
            (length,) = struct.unpack(">I", self._read(conn, 4))
            self.requests.append(self._read(conn, length))
            reply = self.replies.pop(0) if self.replies else OK
            if isinstance(reply, dict):
                conn.sendall(frame(json.dumps(reply, ensure_ascii=False).encode()))
            else:
                conn.sendall(reply)
                conn.shutdown(socket.SHUT_WR)  # a broken frame: nothing more will come

    def request(self, index: int = -1) -> dict[str, Any]:
        message = json.loads(self.requests[index])
        assert isinstance(message, dict)
        return message

    def closed_by_client(self, index: int = -1) -> bool:
        conn = self.connections[index]
        conn.settimeout(IO_TIMEOUT_S)
        return conn.recv(1) == b""

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of _serve
        self.listener.close()
        self.thread.join(IO_TIMEOUT_S)
        for conn in self.connections:
            conn.close()


@pytest.fixture
def fake_daemon(short_dir: str) -> Iterator[Callable[..., FakeDaemon]]:
    started: list[FakeDaemon] = []

    def start(*replies: dict[str, Any] | bytes) -> FakeDaemon:
        daemon = FakeDaemon(os.path.join(short_dir, f"fake{len(started)}.sock"), list(replies))
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


# -- the exported table ----------------------------------------------------------------------


def test_driver_table_has_the_abi_version_and_every_slot(driver: abi.DriverHandle) -> None:
    table = driver.table
    assert table.version == abi.LOCK_MANAGER_VERSION
    assert table.flags == 0, "no USES_STATE: every lock state lives in virtdlmd"
    assert [name for name in abi.FUNCTION_SLOTS if not getattr(table, name)] == []


def test_only_the_driver_table_is_exported(dlm_so: str) -> None:
    if not shutil.which("nm"):
        pytest.skip("nm (binutils) is not installed")
    symbols = check(["nm", "-D", "--defined-only", dlm_so]).stdout.split()
    assert symbols[1::3] == ["D"] and symbols[2::3] == [abi.DRIVER_SYMBOL]


# -- drvInit ---------------------------------------------------------------------------------

INIT_CASES = [
    # id, config text (None: no file; "<dir>": a directory), env, version, flags, rc, stderr
    ("no file", None, None, abi.LOCK_MANAGER_VERSION, 0, 0, ""),
    ("empty file", "", None, abi.LOCK_MANAGER_VERSION, 0, 0, ""),
    ("other keys", 'backend = "model"\nmodel_node_id = 2\n', None, abi.LOCK_MANAGER_VERSION,
     0, 0, ""),
    ("bad version", None, None, 2000000, 0, -1, "ABI version 2000000 is not supported"),
    ("unknown flags", None, None, abi.LOCK_MANAGER_VERSION, 1, -1, "unsupported flags (0x1)"),
    ("unreadable", "<dir>", None, abi.LOCK_MANAGER_VERSION, 0, -1, "Is a directory"),
    ("unquoted", "socket_path = /run/x.sock\n", None, abi.LOCK_MANAGER_VERSION, 0, -1,
     ":1: socket_path: expected"),
    ("no equals sign", 'socket_path "/run/x.sock"\n', None, abi.LOCK_MANAGER_VERSION, 0, -1,
     ":1: socket_path: expected"),
    ("relative", 'socket_path = "x.sock"\n', None, abi.LOCK_MANAGER_VERSION, 0, -1,
     "must be an absolute path"),
    ("too long", f'socket_path = "/{"a" * 107}"\n', None, abi.LOCK_MANAGER_VERSION, 0, -1,
     "longer than a unix socket allows"),
    ("relative env", None, "x.sock", abi.LOCK_MANAGER_VERSION, 0, -1,
     "$VIRTDLM_SOCKET: socket_path 'x.sock' must be an absolute path"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "env", "version", "flags", "rc", "stderr"),
    [case[1:] for case in INIT_CASES],
    ids=[case[0] for case in INIT_CASES],
)
def test_init(
    driver: abi.DriverHandle,
    short_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    config: str | None,
    env: str | None,
    version: int,
    flags: int,
    rc: int,
    stderr: str,
) -> None:
    path = os.path.join(short_dir, "absent.conf")
    if config == "<dir>":
        path = short_dir
    elif config is not None:
        path = write_config(short_dir, config)
    if env is not None:
        monkeypatch.setenv("VIRTDLM_SOCKET", env)
    assert driver.init(path, version, flags) == rc
    err = capfd.readouterr().err
    assert stderr in err and (rc == 0) == (err == "")
    if config == "<dir>":
        assert f"cannot read {short_dir}: Is a directory" in err


SOCKET_CASES = [
    # id, config text ({d} = a temp dir), VIRTDLM_SOCKET, the socket dlm.so connects to
    ("default", None, None, DEFAULT_SOCKET),
    ("config", 'socket_path = "{d}/a.sock"\n', None, "{d}/a.sock"),
    ("comments and other keys",
     '# socket_path = "/nope"\nlockspace_name = "x"\n  socket_path="{d}/b.sock" # here\n',
     None, "{d}/b.sock"),
    ("escaped quote", 'socket_path = "{d}/q\\"uote.sock"\n', None, '{d}/q"uote.sock'),
    ("a longer key is not ours", 'socket_path_old = "/nope"\n', None, DEFAULT_SOCKET),
    ("env overrides config", 'socket_path = "{d}/a.sock"\n', "{d}/env.sock", "{d}/env.sock"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [case[1:] for case in SOCKET_CASES],
    ids=[case[0] for case in SOCKET_CASES],
)
def test_socket_path_comes_from_config_then_env(
    driver: abi.DriverHandle,
    short_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    config: str | None,
    env: str | None,
    expected: str,
) -> None:
    if expected == DEFAULT_SOCKET and os.path.exists(DEFAULT_SOCKET):
        pytest.skip(f"{DEFAULT_SOCKET} exists: a virtdlmd runs on this host")
    path = write_config(short_dir, config.format(d=short_dir)) if config else None
    if env is not None:
        monkeypatch.setenv("VIRTDLM_SOCKET", env.format(d=short_dir))
    assert driver.init(path) == 0
    assert driver.new(UUID, NAME, DOMAIN_ID, os.getpid()) == 0
    assert driver.acquire() == (-1, -1)
    sock = expected.format(d=short_dir)
    assert f"dlm: {NOT_RUNNING} (socket {sock}: No such file or directory)\n" in (
        capfd.readouterr().err
    )


# -- drvNew and drvAddResource ---------------------------------------------------------------


def _without(key: str) -> list[abi.ParamSpec]:
    return [p for p in abi.owner_params(UUID, NAME, DOMAIN_ID, 42) if p.key != key]


NEW_CASES = [
    # id, params (None: the five libvirt passes), object type, flags, rc, stderr
    ("five params", None, abi.OBJECT_TYPE_DOMAIN, 0, 0, ""),
    ("started", None, abi.OBJECT_TYPE_DOMAIN, abi.NEW_STARTED, 0, ""),
    ("uri NULL", abi.owner_params(UUID, NAME, -1, 42, uri=None), 0, 0, 0, ""),
    ("unknown flag", None, abi.OBJECT_TYPE_DOMAIN, 2, -1, "unsupported flags (0x2)"),
    ("not a domain", None, 1, 0, -1, "unsupported object type 1"),
    ("no pid", _without("pid"), 0, 0, -1, "no uuid, name or pid"),
    ("no uuid", _without("uuid"), 0, 0, -1, "no uuid, name or pid"),
    ("unknown key", [*_without("uri"), abi.ParamSpec("color", abi.PARAM_UINT, 1)], 0, 0, -1,
     "unexpected or repeated domain parameter 'color'"),
    ("repeated name", [*_without("uri"), abi.ParamSpec("name", abi.PARAM_STRING, "b")], 0, 0,
     -1, "parameter 'name'"),
    ("name as UINT", [*_without("name"), abi.ParamSpec("name", abi.PARAM_UINT, 1)], 0, 0, -1,
     "parameter 'name' of type 4"),
    ("name too long",
     [*_without("name"), abi.ParamSpec("name", abi.PARAM_STRING, "n" * (MAX_NAME + 1))],
     0, 0, -1, f"over the limit of {MAX_NAME}"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "object_type", "flags", "rc", "stderr"),
    [case[1:] for case in NEW_CASES],
    ids=[case[0] for case in NEW_CASES],
)
def test_new(
    driver: abi.DriverHandle,
    capfd: pytest.CaptureFixture[str],
    params: list[abi.ParamSpec] | None,
    object_type: int,
    flags: int,
    rc: int,
    stderr: str,
) -> None:
    assert driver.init(None) == 0
    assert driver.new(UUID, NAME, DOMAIN_ID, 42, flags, params, object_type) == rc
    assert driver.has_private_data == (rc == 0), "a failed drvNew leaves nothing behind"
    err = capfd.readouterr().err
    assert stderr in err and (rc == 0) == (err == "")


RESOURCE_CASES = [
    # id, resource type, name, params, flags, rc, stderr
    ("disk rw", abi.RESOURCE_TYPE_DISK, "/srv/one.qcow2", [], 0, 0, ""),
    ("disk ro shared", abi.RESOURCE_TYPE_DISK, "/srv/one.qcow2", [], 3, 0, ""),
    ("disk unknown flag", abi.RESOURCE_TYPE_DISK, "/srv/one.qcow2", [], 4, -1,
     "unsupported flags (0x4)"),
    ("disk with params", abi.RESOURCE_TYPE_DISK, "/srv/one.qcow2",
     [abi.ParamSpec("offset", abi.PARAM_ULONG, 0)], 0, -1, "unexpected 1 parameters"),
    ("disk path at the limit", abi.RESOURCE_TYPE_DISK, "/" + "a" * (MAX_PATH - 1), [], 0, 0, ""),
    ("disk path over it", abi.RESOURCE_TYPE_DISK, "/" + "a" * MAX_PATH, [], 0, -1,
     f"is {MAX_PATH + 1} bytes, over the limit of {MAX_PATH}"),
    ("disk NULL path", abi.RESOURCE_TYPE_DISK, None, [], 0, -1, "disk path is missing"),
    ("lease", abi.RESOURCE_TYPE_LEASE, "k1", abi.lease_params("/l", 1024, "ls"), 0, 0, ""),
    ("lease no lockspace", abi.RESOURCE_TYPE_LEASE, "k1", abi.lease_params("/l", 0, None), 0,
     0, ""),
    ("lease key over the limit", abi.RESOURCE_TYPE_LEASE, "k" * (MAX_NAME + 1),
     abi.lease_params("/l", 0, "ls"), 0, -1, f"lease key {'k' * 64}... is {MAX_NAME + 1} bytes"),
    ("lease lockspace over the limit", abi.RESOURCE_TYPE_LEASE, "k1",
     abi.lease_params("/l", 0, "s" * (MAX_NAME + 1)), 0, -1,
     f"is {MAX_NAME + 1} bytes, over the limit of {MAX_NAME}"),
    ("lease path over the limit", abi.RESOURCE_TYPE_LEASE, "k1",
     abi.lease_params("/" + "p" * MAX_PATH, 0, "ls"), 0, -1,
     f"is {MAX_PATH + 1} bytes, over the limit of {MAX_PATH}"),
    ("lease flag", abi.RESOURCE_TYPE_LEASE, "k1", abi.lease_params("/l", 0, "ls"), 1, -1,
     "unsupported flags (0x1)"),
    ("lease unknown param", abi.RESOURCE_TYPE_LEASE, "k1",
     [abi.ParamSpec("size", abi.PARAM_ULONG, 1)], 0, -1, "parameter 'size' of type 5 for lease k1"),
    ("unknown type", 2, "/srv/one.qcow2", [], 0, -1, "unsupported resource type 2"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "name", "params", "flags", "rc", "stderr"),
    [case[1:] for case in RESOURCE_CASES],
    ids=[case[0] for case in RESOURCE_CASES],
)
def test_add_resource(
    driver: abi.DriverHandle,
    capfd: pytest.CaptureFixture[str],
    kind: int,
    name: str | None,
    params: list[abi.ParamSpec],
    flags: int,
    rc: int,
    stderr: str,
) -> None:
    assert driver.init(None) == 0
    assert driver.new(UUID, NAME, DOMAIN_ID, 42) == 0
    assert driver.add_resource(kind, name, params, flags) == rc
    err = capfd.readouterr().err
    assert stderr in err and (rc == 0) == (err == "")


def test_at_most_the_protocols_resources_per_request(
    driver: abi.DriverHandle, capfd: pytest.CaptureFixture[str]
) -> None:
    assert driver.init(None) == 0
    assert driver.new(UUID, NAME, DOMAIN_ID, 42) == 0
    assert [driver.add_disk(f"/srv/{i}.img") for i in range(MAX_RESOURCES)] == [0] * MAX_RESOURCES
    assert driver.add_disk("/srv/one-more.img") == -1
    assert f"domain {NAME} has more than {MAX_RESOURCES} resources" in capfd.readouterr().err


# -- calls without a daemon ------------------------------------------------------------------


def test_acquire_without_a_daemon_fails_and_names_the_socket(
    driver: abi.DriverHandle, short_dir: str, capfd: pytest.CaptureFixture[str]
) -> None:
    sock = os.path.join(short_dir, "nobody.sock")
    ready(driver, sock, short_dir)
    assert driver.add_lease("k1", "/srv/leases", 512, "libvirt") == 0
    assert driver.add_disk("/srv/one.qcow2") == 0
    assert driver.add_disk("/srv/share.raw", shared=True) == 0
    assert driver.add_disk("/srv/cd.iso", readonly=True) == 0
    assert driver.add_disk("/srv/x.img", flags=8) == -1
    assert driver.acquire() == (-1, -1)
    assert driver.acquire(abi.ACQUIRE_REGISTER_ONLY | abi.ACQUIRE_RESTRICT) == (-1, -1)
    err = capfd.readouterr().err.splitlines()
    assert err[0] == "dlm: unsupported flags (0x8) in function vdlDiskResource"
    assert err[1:] == [f"dlm: {NOT_RUNNING} (socket {sock}: No such file or directory)"] * 2
    driver.free()
    assert not driver.has_private_data


@pytest.mark.parametrize(
    ("call", "flags", "stderr"),
    [
        ("acquire", 4, "unsupported flags (0x4) in function vdlAcquire"),
        ("release", 1, "unsupported flags (0x1) in function vdlRelease"),
        ("inquire", 1, "unsupported flags (0x1) in function vdlInquire"),
    ],
)
def test_unknown_call_flags_are_refused_before_any_connection(
    driver: abi.DriverHandle,
    short_dir: str,
    capfd: pytest.CaptureFixture[str],
    call: str,
    flags: int,
    stderr: str,
) -> None:
    ready(driver, os.path.join(short_dir, "nobody.sock"), short_dir)
    result = getattr(driver, call)(flags)
    assert result[0] == -1
    assert capfd.readouterr().err == f"dlm: {stderr}\n"


# -- the requests on the wire ----------------------------------------------------------------


def test_register_sends_the_owner_and_hands_over_an_inheritable_socket(
    driver: abi.DriverHandle, short_dir: str, fake_daemon: Callable[..., FakeDaemon]
) -> None:
    daemon = fake_daemon(OK)
    ready(driver, daemon.path, short_dir)
    assert driver.add_lease("k1", "/srv/leases", 512, None) == 0
    assert driver.add_disk("/srv/one.qcow2") == 0
    assert driver.add_disk("/srv/cd.iso", readonly=True, shared=True) == 0
    rc, fd = driver.acquire(abi.ACQUIRE_REGISTER_ONLY | abi.ACQUIRE_RESTRICT)
    assert rc == 0 and fd >= 0
    try:
        assert daemon.request() == {
            "v": V,
            "op": "register",
            "owner": owner(os.getpid()),
            "resources": [
                {
                    "type": "lease",
                    "key": "k1",
                    "lockspace": "",
                    "path": "/srv/leases",
                    "offset": 512,
                },
                disk("/srv/one.qcow2"),
                disk("/srv/cd.iso", readonly=True, shared=True),
            ],  # fmt: skip
            "restrict": True,
            "action": "default",
        }
        assert stat.S_ISSOCK(os.fstat(fd).st_mode)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC == 0, "QEMU must inherit it"
        with socket.socket(fileno=os.dup(fd)) as inherited:
            assert inherited.getpeername() == daemon.path
        daemon.connections[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            daemon.connections[0].recv(1)  # still open: its EOF is QEMU's death
    finally:
        os.close(fd)
    assert daemon.closed_by_client()


def test_register_without_restrict(
    driver: abi.DriverHandle, short_dir: str, fake_daemon: Callable[..., FakeDaemon]
) -> None:
    daemon = fake_daemon(OK)
    ready(driver, daemon.path, short_dir)
    rc, fd = driver.acquire(abi.ACQUIRE_REGISTER_ONLY)
    os.close(fd)
    assert rc == 0 and daemon.request()["restrict"] is False


@pytest.mark.parametrize(
    ("call", "op", "state"),
    [("acquire", "acquire", None), ("release", "release", None), ("inquire", "inquire", None)],
)
def test_libvirtd_calls_send_one_request_and_close(
    driver: abi.DriverHandle,
    short_dir: str,
    fake_daemon: Callable[..., FakeDaemon],
    call: str,
    op: str,
    state: str | None,
) -> None:
    daemon = fake_daemon(OK)
    ready(driver, daemon.path, short_dir)
    assert driver.add_disk("/srv/share.raw", shared=True) == 0
    assert getattr(driver, call)() == (0, -1 if call == "acquire" else state)
    assert daemon.request() == {
        "v": V, "op": op, "owner": owner(os.getpid()),
        "resources": [disk("/srv/share.raw", shared=True)],
        **({"action": "default"} if op == "acquire" else {}),
    }  # fmt: skip
    assert daemon.closed_by_client()


ACTION_CASES = [
    # id, drvAcquire action, what "action" the daemon gets (None: refused before any call)
    ("default", abi.ACTION_DEFAULT, "default"),
    ("poweroff", abi.ACTION_POWEROFF, "poweroff"),
    ("restart", abi.ACTION_RESTART, "restart"),
    ("pause", abi.ACTION_PAUSE, "pause"),
    ("ignore", abi.ACTION_IGNORE, "ignore"),
    ("one past ignore", abi.ACTION_IGNORE + 1, None),
    ("negative", -1, None),
]  # fmt: skip


@pytest.mark.parametrize("register", [True, False], ids=["register", "acquire"])
@pytest.mark.parametrize(
    ("action", "sent"), [case[1:] for case in ACTION_CASES], ids=[case[0] for case in ACTION_CASES]
)
def test_on_lockfailure_goes_to_the_daemon_by_name(
    driver: abi.DriverHandle,
    short_dir: str,
    fake_daemon: Callable[..., FakeDaemon],
    capfd: pytest.CaptureFixture[str],
    register: bool,
    action: int,
    sent: str | None,
) -> None:
    """libvirt passes the domain's on_lockfailure both at the pre-exec register and at the
    acquire; the driver names it on the wire, and refuses a number libvirt does not define."""
    daemon = fake_daemon(OK)
    ready(driver, daemon.path, short_dir)
    flags = abi.ACQUIRE_REGISTER_ONLY | abi.ACQUIRE_RESTRICT if register else 0
    rc, fd = driver.acquire(flags, action=action)
    if fd >= 0:
        os.close(fd)
    err = capfd.readouterr().err
    if sent is None:
        assert (rc, fd) == (-1, -1)
        assert err == (
            f"dlm: unsupported lock failure action {action} in function vdlAcquire (libvirt's "
            "on_lockfailure is 0..4: default, poweroff, restart, pause, ignore)\n"
        )
        assert daemon.requests == [], "refused before any connection"
        return
    assert rc == 0 and err == ""
    assert daemon.request()["action"] == sent
    assert daemon.request()["op"] == ("register" if register else "acquire")


@pytest.mark.parametrize(
    ("flags", "op"),
    [(abi.ACQUIRE_REGISTER_ONLY | abi.ACQUIRE_RESTRICT, "register"), (0, "acquire")],
    ids=["register", "acquire"],
)
def test_an_older_virtdlmd_that_refuses_the_action_is_named_as_such(
    driver: abi.DriverHandle,
    short_dir: str,
    fake_daemon: Callable[..., FakeDaemon],
    capfd: pytest.CaptureFixture[str],
    flags: int,
    op: str,
) -> None:
    """What a virtdlmd from before on_lockfailure answers (protocol.parse_request's words)."""
    old = refusal(ErrorCode.INVALID_REQUEST, f"{op}: unknown field(s) action")
    daemon = fake_daemon(old)
    ready(driver, daemon.path, short_dir)
    assert driver.acquire(flags, action=abi.ACTION_PAUSE) == (-1, -1)
    assert capfd.readouterr().err == (
        "dlm: virtdlmd is older than this driver: it does not know on_lockfailure "
        f'("action": "pause" in {op}); restart virtdlmd from the same build as dlm.so '
        f"(socket {daemon.path})\n"
    )


def test_strings_are_escaped(
    driver: abi.DriverHandle, short_dir: str, fake_daemon: Callable[..., FakeDaemon]
) -> None:
    daemon = fake_daemon(OK)
    config = write_config(short_dir, f'socket_path = "{daemon.path}"\n')
    assert driver.init(config) == 0
    name = 'vm "q" \\ é'
    assert driver.new(UUID, name, -1, os.getpid()) == 0
    path = '/srv/a"b\\c\x01\td.img'
    assert driver.add_disk(path) == 0
    assert driver.acquire() == (0, -1)
    raw = daemon.requests[-1]
    assert b'"/srv/a\\"b\\\\c\\u0001\\u0009d.img"' in raw
    assert 'vm \\"q\\" \\\\ é'.encode() in raw
    message = daemon.request()
    assert message["resources"] == [disk(path)]
    assert message["owner"] == {"uuid": UUID, "name": name, "id": -1, "pid": os.getpid()}


REPLY_CASES = [
    # id, call, reply, rc, result (fd/state), stderr
    ("nested fields skipped", "acquire",
     {**OK, "status": {"a": [1, {"b": "}"}], "c": None}, "x": -1.5e3}, 0, -1, ""),
    ("busy", "acquire", busy(), -1, -1, f"dlm: {BUSY_MESSAGE}\n"),
    ("busy at register", "register", busy(), -1, -1, f"dlm: {BUSY_MESSAGE}\n"),
    ("another unknown field", "acquire",
     refusal(ErrorCode.INVALID_REQUEST, "acquire: unknown field(s) actions"), -1, -1,
     "dlm: acquire: unknown field(s) actions\n"),
    ("escapes in message", "release",
     refusal(ErrorCode.BACKEND, 'a\\b "c"\nd\u00e9\u20ac\u0001'), -1, None,
     'dlm: a\\b "c"\nd\u00e9\u20ac\x01\n'),
    ("non-ASCII escape", "acquire",
     frame(b'{"v":1,"ok":false,"code":7,"message":"caf\\u00e9 \\u0041"}'), -1, -1,
     "dlm: caf? A\n"),
    ("code of 10 digits", "acquire", frame(b'{"v":1,"ok":false,"code":9999999999}'), -1, -1,
     "malformed reply to acquire"),
    ("no message", "acquire", refusal(ErrorCode.BACKEND, ""), -1, -1,
     "dlm: virtdlmd refused acquire with code 7 and no message\n"),
    ("state", "inquire", {**OK, "state": "dlm:vm-1,EX;x=1"}, 0,
     "dlm:vm-1,EX;x=1", ""),
    ("empty state", "inquire", {**OK, "state": ""}, 0, None, ""),
    ("unsafe state", "inquire", {**OK, "state": "<x/>"}, -1, None,
     "a lock state with characters outside"),
    ("no version", "acquire", {"ok": True}, -1, -1, f'without "v": {V} and "ok"'),
    ("other version", "acquire", {"v": V + 1, "ok": True}, -1, -1, f'without "v": {V} and "ok"'),
    ("not JSON", "acquire", frame(b"nope!"), -1, -1,
     "malformed reply to acquire (at byte 0 of 5)"),
    ("trailing garbage", "acquire", frame(b'{"v":1,"ok":true} junk'), -1, -1,
     "malformed reply to acquire (at byte 18 of 22)"),
    ("bad escape", "acquire", frame(b'{"v":1,"ok":false,"message":"a\\q"}'), -1, -1,
     "malformed reply to acquire (at byte 31 of 34)"),
    ("oversized frame", "acquire", struct.pack(">I", MAX_FRAME + 1), -1, -1,
     f"with a frame of {MAX_FRAME + 1} bytes (allowed: 1..{MAX_FRAME})"),
    ("empty frame", "acquire", struct.pack(">I", 0), -1, -1, "with a frame of 0 bytes"),
    ("truncated", "acquire", struct.pack(">I", 50) + b'{"v":1', -1, -1,
     "cannot read the reply of acquire to virtdlmd"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "reply", "rc", "result", "stderr"),
    [case[1:] for case in REPLY_CASES],
    ids=[case[0] for case in REPLY_CASES],
)
def test_replies(
    driver: abi.DriverHandle,
    short_dir: str,
    fake_daemon: Callable[..., FakeDaemon],
    capfd: pytest.CaptureFixture[str],
    call: str,
    reply: dict[str, Any] | bytes,
    rc: int,
    result: int | str | None,
    stderr: str,
) -> None:
    daemon = fake_daemon(reply)
    ready(driver, daemon.path, short_dir)
    assert driver.add_disk("/x") == 0
    if call == "register":
        outcome = driver.acquire(abi.ACQUIRE_REGISTER_ONLY | abi.ACQUIRE_RESTRICT)
    else:
        outcome = getattr(driver, call)()
    assert outcome == (rc, result)
    err = capfd.readouterr().err
    assert stderr in err and (rc == 0) == (err == "")
    assert err.count("\n") <= stderr.count("\n") + 1, "each error is reported once"


# -- against a real virtdlmd (model backend) ------------------------------------------------

OTHER_UUID = "0b5e1f7a-8c2d-4e3f-9a1b-7c6d5e4f3a2b"


def test_a_real_virtdlmd_reads_what_the_driver_sends(
    driver: abi.DriverHandle,
    daemon: DaemonProc,
    images: dict[str, str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """register, acquire, inquire, a conflict and release, as libvirt would make them, with
    virtdlmd's own config file: the two sides agree on the wire, not just on paper."""
    one = images["one.qcow2"]
    assert driver.init(daemon.write_config()) == 0
    assert driver.new(UUID, NAME, DOMAIN_ID, os.getpid(), abi.NEW_STARTED) == 0
    assert driver.add_disk(one) == 0
    rc, fd = driver.acquire(abi.ACQUIRE_REGISTER_ONLY)  # in libvirt, the pre-exec child
    assert rc == 0 and fd >= 0
    driver.free()
    try:
        assert driver.new(UUID, NAME, DOMAIN_ID, os.getpid()) == 0
        assert driver.add_disk(one) == 0
        assert driver.acquire(action=abi.ACTION_RESTART) == (0, -1)  # before the CPUs start
        with open(os.path.join(daemon.config["state_dir"], "owners", f"{UUID}-{os.getpid()}.json"),
                  encoding="utf-8") as f:  # fmt: skip
            assert json.load(f)["action"] == "restart", "virtdlmd keeps the owner's action"
        assert driver.inquire() == (0, None)
        driver.free()
        with subprocess.Popen(["sleep", "60"]) as other:  # a second QEMU, same disk
            try:
                assert driver.new(OTHER_UUID, "vm-2", 8, other.pid) == 0
                assert driver.add_disk(one, shared=True) == 0
                assert driver.acquire() == (-1, -1)
                driver.free()
            finally:
                other.kill()
        err = capfd.readouterr().err
        assert err.startswith(f"dlm: disk {one} is locked") and NAME in err
        assert err.count("\n") == 1, err
        assert driver.new(UUID, NAME, DOMAIN_ID, os.getpid()) == 0
        assert driver.add_disk(one) == 0
        assert driver.release() == (0, None)
    finally:
        os.close(fd)  # QEMU's exit, as virtdlmd sees it


# -- the error mapping, through a stand-in for libvirt's virReportErrorHelper -----------------

FAKE_LIBVIRT_C = r"""
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
void virReportErrorHelper(int domcode, int errcode, const char *filename,
                          const char *funcname, size_t linenr, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "helper domcode=%d code=%d file=%s func=%s line=%zu msg=%s\n",
            domcode, errcode, filename, funcname, linenr, msg);
}
"""

DRIVE_SCRIPT = r"""
import ctypes, os, sys
ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW | os.RTLD_GLOBAL)
from tests.unit.driver_abi import ACQUIRE_REGISTER_ONLY, DriverHandle
d = DriverHandle(sys.argv[2])
assert d.init(None) == 0
assert d.new("6a1f0c4e-3b5d-4f6a-9c1e-2d3b4c5d6e7f", "vm-1", 1, os.getpid()) == 0
assert d.add_disk("/x") == 0
for _ in range(int(sys.argv[3])):
    assert d.acquire() == (-1, -1)
assert d.acquire(ACQUIRE_REGISTER_ONLY) == (-1, -1)
"""

# daemon code -> libvirt error, as docs/protocol.md's table says (test_driver_drift.py checks
# that the driver's own table, ErrorCode and libvirt's numbers say the same)
ERROR_MAP = [
    (ErrorCode(code), getattr(libvirt, libvirt_name))
    for code, (_, libvirt_name, _) in sorted(driver_source.documented_error_map().items())
] + [(99, libvirt.VIR_ERR_INTERNAL_ERROR)]  # a code newer than this driver


@pytest.fixture(scope="module")
def reported_errors(dlm_so: str) -> list[str]:
    """stderr lines of a process where virReportErrorHelper exists, one refusal per row."""
    if not shutil.which("cc"):
        pytest.skip("no C compiler to build a stand-in for virReportErrorHelper")
    directory = tempfile.mkdtemp(prefix="vdl-")
    daemon = None
    try:
        source = os.path.join(directory, "fake_libvirt.c")
        with open(source, "w", encoding="utf-8") as f:
            f.write(FAKE_LIBVIRT_C)
        fake = os.path.join(directory, "fake_libvirt.so")
        check(["cc", "-shared", "-fPIC", "-o", fake, source])
        replies: list[dict[str, Any] | bytes] = [
            refusal(code, f"refusal with code {int(code)}") for code, _ in ERROR_MAP
        ]
        daemon = FakeDaemon(os.path.join(directory, "d.sock"), [*replies, busy()])
        env = {**os.environ, "PYTHONPATH": REPO, "VIRTDLM_SOCKET": daemon.path}
        argv = [sys.executable, "-c", DRIVE_SCRIPT, fake, dlm_so, str(len(ERROR_MAP))]
        result = run(argv, timeout_s=SUBPROCESS_TIMEOUT_S, env=env)
        assert result.ok, result.describe()
        return result.stderr.splitlines()
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_error_map_covers_every_daemon_code() -> None:
    assert {int(code) for code, _ in ERROR_MAP} - {99} == {int(c) for c in ErrorCode}


@pytest.mark.parametrize(
    ("index", "code", "libvirt_code"),
    [(i, int(code), virt) for i, (code, virt) in enumerate(ERROR_MAP)],
    ids=[getattr(code, "name", str(code)) for code, _ in ERROR_MAP],
)
def test_daemon_codes_map_to_libvirt_errors(
    reported_errors: list[str], index: int, code: int, libvirt_code: int
) -> None:
    line = reported_errors[index]
    assert line.startswith(f"helper domcode={libvirt.VIR_FROM_LOCKING} code={libvirt_code} file=")
    assert line.endswith(f"msg=refusal with code {code}")


def test_the_child_reports_on_stderr_even_when_libvirt_is_loaded(
    reported_errors: list[str],
) -> None:
    assert reported_errors[len(ERROR_MAP) :] == [f"dlm: {BUSY_MESSAGE}"]


# -- the child's line reaches libvirt's log before the child exits ---------------------------

CHILD_SCRIPT = r"""
import os, sys
from tests.unit.driver_abi import ACQUIRE_REGISTER_ONLY, DriverHandle
d = DriverHandle(sys.argv[1])
assert d.init(None) == 0
assert d.new("6a1f0c4e-3b5d-4f6a-9c1e-2d3b4c5d6e7f", "vm-1", 1, os.getpid()) == 0
assert d.add_disk("/x") == 0
assert d.acquire(ACQUIRE_REGISTER_ONLY) == (-1, -1)
print("returned", flush=True)
"""
LOG_READER_LATE_S = 0.5  # how long "virtlogd" leaves the line unread (the driver waits 1 s)


def test_the_child_returns_only_once_its_error_line_was_read_from_the_pipe(
    dlm_so: str, short_dir: str
) -> None:
    """libvirt reads the child's reason from the domain log after the child exits; with
    virtlogd the child's stderr is a pipe, so the child must not return before it is read."""
    env = {**os.environ, "PYTHONPATH": REPO, "VIRTDLM_SOCKET": os.path.join(short_dir, "no.sock")}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, dlm_so],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        try:
            readable, _, _ = select.select([child.stderr], [], [], SUBPROCESS_TIMEOUT_S)
            assert readable, "the child wrote no error line"
            time.sleep(LOG_READER_LATE_S)
            assert child.poll() is None, "the child returned with its error line unread"
            assert child.stderr.readline().startswith(f"dlm: {NOT_RUNNING}")
            assert child.wait(timeout=SUBPROCESS_TIMEOUT_S) == 0
            assert child.stdout.read() == "returned\n"
        finally:
            child.kill()
