"""virtdlmd's core: the unix socket server, owners' lifetimes, and restart recovery.

Lifecycle: start (open the backend on the worker thread, adopt what the state records,
purge the rest, listen) -> serve -> stop (stop listening, close connections, cancel tasks,
close the backend handle). Locks are never released on the way down: they stay granted as
orphans and the next start adopts them.

Every lock decision runs under one asyncio lock, and every backend call on one worker
thread, so decisions are serial and the backend is single-threaded as libdlm needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import __version__, protocol
from .backends.base import LockBackend, Mode
from .config import Config
from .errors import (
    Denied,
    ErrorCode,
    InvalidRequest,
    NoSuchProcess,
    PolicyError,
    ProtocolError,
    Restricted,
    ShuttingDown,
    Timeout,
    VirtDlmError,
)
from .identity import disk_identities, disk_resource_name, lease_resource_name
from .locker import Locker, Want
from .owners import Owner, StateStore, process_alive, process_start_time
from .protocol import DiskSpec, LeaseSpec, Request, ResourceSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_CLIENTS = 1024
IDLE_TIMEOUT_S = 60.0
FRAME_TIMEOUT_S = 5.0
BACKEND_CALL_TIMEOUT_S = 60.0
IDENTITY_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 5.0
_PEERCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


SD_LISTEN_FDS_START = 3


def activation_socket() -> socket.socket | None:
    """The listening socket systemd passed (virtdlmd.socket), if started that way."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    os.set_inheritable(sock.fileno(), False)
    return sock


def peer_allowed(uid: int, gid: int, allowed_gid: int | None) -> bool:
    if uid in (0, os.getuid()):
        return True
    if allowed_gid is None:
        return False
    if gid == allowed_gid:
        return True
    try:
        import pwd

        user = pwd.getpwuid(uid).pw_name
        return allowed_gid in os.getgrouplist(user, gid)
    except KeyError:
        return False


class Daemon:
    def __init__(self, config: Config, backend_factory: Callable[[], LockBackend]) -> None:
        self.config = config
        self._backend_factory = backend_factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlm-worker")
        self._decide = asyncio.Lock()
        self._owners: dict[tuple[str, int], Owner] = {}
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._activated = False
        self._started = time.monotonic()
        self.locker: Locker | None = None
        self.store = StateStore(config.state_dir)
        self.allowed_gid = config.allowed_gid()

    # -- worker thread --------------------------------------------------------------------

    async def _work(self, fn: Callable[..., T], *args: Any) -> T:
        """Run backend work: on the worker thread, or inline for a backend that never
        blocks (the in-process model), which saves two thread switches per request."""
        if self.locker is not None and not self.locker.backend.blocking:
            return fn(*args)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        try:
            async with asyncio.timeout(BACKEND_CALL_TIMEOUT_S):
                return await future
        except TimeoutError as err:
            raise Timeout(
                f"{self.config.lockspace_name}: backend call {getattr(fn, '__name__', fn)} did "
                f"not finish in {BACKEND_CALL_TIMEOUT_S:.0f} s; check 'dlm_tool status'"
            ) from err

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        backend = await self._work(self._backend_factory)
        self.locker = Locker(backend, self.config.effective_node_name)
        await self._recover()
        activated = activation_socket()
        if activated is not None:
            self._activated = True
            self._server = await asyncio.start_unix_server(
                self._on_connect, sock=activated, limit=protocol.MAX_FRAME_BYTES
            )
        else:
            sock_dir = os.path.dirname(self.config.socket_path)
            os.makedirs(sock_dir, mode=0o755, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.socket_path)
            old = os.umask(0o177)  # the socket is born 0600: never chmod after bind
            try:
                self._server = await asyncio.start_unix_server(
                    self._on_connect,
                    path=self.config.socket_path,
                    limit=protocol.MAX_FRAME_BYTES,
                )
            finally:
                os.umask(old)
        if not backend.cluster:
            log.warning(
                "backend %s is a single-host model, NOT a cluster lock: use it for "
                "tests and trials only",
                backend.name,
            )
        log.info(
            "serving on %s: backend %s, lockspace %s, node %s (id %d)",
            self.config.socket_path,
            backend.name,
            backend.lockspace,
            self.locker.node_name,
            backend.node_id,
        )

    async def serve_forever(self) -> None:
        assert self._server is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._server.serve_forever()

    async def stop(self) -> None:
        """Stop listening, drop connections, keep every lock (they become orphans)."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        # End each connection by aborting its transport: its read sees EOF and its task
        # finishes by itself (cancelling tasks started by start_unix_server makes asyncio
        # log a spurious CancelledError). Stragglers are cancelled after a deadline.
        for writer in list(self._conns.values()):
            writer.transport.abort()
        if self._conns:
            _done, late = await asyncio.wait(list(self._conns), timeout=DRAIN_TIMEOUT_S)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        loop = asyncio.get_running_loop()
        for owner in self._owners.values():
            if owner.pidfd >= 0:
                loop.remove_reader(owner.pidfd)
                os.close(owner.pidfd)
                owner.pidfd = -1
        if self.locker is not None:
            await self._work(self.locker.backend.close)
        self._executor.shutdown(wait=True)
        if not self._activated:  # systemd owns an activated socket's path
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.socket_path)
        log.info(
            "stopped; %d locks of %d owners stay held for the next start",
            self.locker.lock_count() if self.locker else 0,
            len(self._owners),
        )

    async def _recover(self) -> None:
        """Adopt the locks of recorded owners whose QEMU still runs; purge the rest."""
        assert self.locker is not None
        for owner in self.store.load():
            if not process_alive(owner.pid, owner.start_time):
                log.info(
                    "owner %s is gone since the last run; its %d locks will be purged",
                    owner.describe(),
                    len(owner.locks),
                )
                self.store.forget(owner)
                continue
            lost = await self._work(self.locker.adopt, owner)
            if lost:
                log.error(
                    "owner %s lost %s while virtdlmd was down", owner.describe(), ", ".join(lost)
                )
            self._owners[owner.key] = owner
            self.store.save(owner)
            self._watch(owner)
            log.info(
                "owner %s re-adopted with %d locks; watched by pidfd",
                owner.describe(),
                len(owner.locks),
            )
        if self.config.purge_orphans:
            await self._work(self.locker.purge)

    # -- owners ---------------------------------------------------------------------------

    def _watch(self, owner: Owner) -> None:
        """Watch the QEMU pid with a pidfd: readable once it exits."""
        try:
            owner.pidfd = os.pidfd_open(owner.pid)
        except ProcessLookupError:
            asyncio.get_running_loop().create_task(self._owner_gone(owner, "process exited"))
            return
        if process_start_time(owner.pid) != owner.start_time:
            os.close(owner.pidfd)
            owner.pidfd = -1
            asyncio.get_running_loop().create_task(self._owner_gone(owner, "pid was reused"))
            return
        asyncio.get_running_loop().add_reader(
            owner.pidfd, lambda: asyncio.ensure_future(self._owner_gone(owner, "process exited"))
        )

    def _unwatch(self, owner: Owner) -> None:
        if owner.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(owner.pidfd)
            os.close(owner.pidfd)
            owner.pidfd = -1

    async def _owner_gone(self, owner: Owner, why: str) -> None:
        async with self._decide:
            await self._retire(owner, why)

    async def _retire(self, owner: Owner, why: str) -> None:
        """Release everything the owner holds; the caller holds the decision lock."""
        if owner.gone or self._stopping:
            return
        owner.gone = True
        self._unwatch(owner)
        assert self.locker is not None
        count = await self._work(self.locker.release, owner, None)
        self._owners.pop(owner.key, None)
        self.store.forget(owner)
        log.info("owner %s gone (%s): released %d locks", owner.describe(), why, count)

    async def _owner_for(self, spec: protocol.OwnerSpec, create: bool) -> Owner | None:
        """The live owner for (uuid, pid); a reused pid retires the old owner first."""
        owner = self._owners.get((spec.uuid, spec.pid))
        start = process_start_time(spec.pid)
        if owner is not None and owner.start_time != start:
            await self._retire(owner, "pid was reused")
            owner = None
        if owner is not None or not create:
            return owner
        if start is None:
            raise NoSuchProcess(f"domain {spec.name}: pid {spec.pid} is not running")
        owner = Owner(spec.uuid, spec.name, spec.pid, start)
        self._owners[owner.key] = owner
        self._watch(owner)
        log.info("owner %s registered", owner.describe())
        return owner

    # -- requests -------------------------------------------------------------------------

    def _check_policy(self, request: Request) -> None:
        has_lease = any(isinstance(r, LeaseSpec) for r in request.resources)
        rw_disks = [
            r
            for r in request.resources
            if isinstance(r, DiskSpec) and not r.readonly and not r.shared
        ]
        if (
            rw_disks
            and not has_lease
            and not self.config.auto_disk_leases
            and self.config.lease_required
        ):
            raise PolicyError(
                f"disk {rw_disks[0].path} is read/write and exclusive but the domain has no "
                "<lease>, and require_lease_for_disks = 1 (qemu-dlm.conf)"
            )

    async def _wants(self, resources: tuple[ResourceSpec, ...]) -> list[Want]:
        """Map resources to the locks they need (readonly disks need none)."""
        wants: list[Want] = []
        disks = [
            r
            for r in resources
            if isinstance(r, DiskSpec) and not r.readonly and self.config.auto_disk_leases
        ]
        idents: list[str] = []
        if disks:
            loop = asyncio.get_running_loop()
            paths = [d.path for d in disks]
            try:
                async with asyncio.timeout(IDENTITY_TIMEOUT_S):
                    idents = await loop.run_in_executor(None, disk_identities, paths)
            except TimeoutError as err:
                raise Timeout(
                    f"disks {', '.join(paths)}: resolving their identity took over "
                    f"{IDENTITY_TIMEOUT_S:.0f} s (hung storage?)"
                ) from err
        for d, ident in zip(disks, idents, strict=True):
            mode = Mode.PR if d.shared else Mode.EX
            wants.append(Want(disk_resource_name(ident), "disk", d.path, mode))
        for r in resources:
            if isinstance(r, LeaseSpec):
                name = lease_resource_name(r.lockspace, r.key)
                wants.append(Want(name, "lease", _lease_label(r), Mode.EX))
        return wants

    async def handle(self, request: Request, peer_pid: int, conn: _Conn) -> dict[str, Any]:
        if self._stopping:
            raise ShuttingDown("virtdlmd is stopping; retry once it is back")
        if request.op == "status":
            return protocol.ok_reply(status=self.status())
        if request.op == "locks":
            return protocol.ok_reply(locks=self.locks())
        assert request.owner is not None and self.locker is not None
        spec = request.owner
        if request.op == "register":
            if spec.pid != peer_pid:
                raise Denied(f"register: claimed pid {spec.pid} is not the caller's pid {peer_pid}")
            async with self._decide:
                owner = await self._owner_for(spec, create=True)
            assert owner is not None
            owner.registered = True
            conn.registration = owner
            conn.restricted = request.restrict
            return protocol.ok_reply()
        if request.op == "inquire":
            return protocol.ok_reply(state="")
        if request.op == "acquire":
            self._check_policy(request)
            wants = await self._wants(request.resources)
        async with self._decide:
            owner = await self._owner_for(spec, create=request.op == "acquire")
            if owner is None:
                return protocol.ok_reply()
            if request.op == "acquire":
                await self._work(self.locker.acquire, owner, wants)
            else:
                names = await self._release_names(owner, request.resources)
                await self._work(self.locker.release, owner, names)
            self.store.save(owner)
        return protocol.ok_reply()

    async def _release_names(
        self, owner: Owner, resources: tuple[ResourceSpec, ...]
    ) -> list[str] | None:
        """The held resources a release names: by the path libvirt gave at acquire, else by
        identity (another path to the same image). None = everything."""
        if not resources:
            return None
        by_label = {held.label: name for name, held in owner.locks.items()}
        names, unknown = set(), []
        for r in resources:
            label = r.path if isinstance(r, DiskSpec) else _lease_label(r)
            if label in by_label:
                names.add(by_label[label])
            else:
                unknown.append(r)
        names.update(w.resource for w in await self._wants(tuple(unknown)))
        return sorted(names)

    def status(self) -> dict[str, Any]:
        assert self.locker is not None
        backend = self.locker.backend
        status: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "backend": backend.name,
            "cluster": backend.cluster,
            "lockspace": backend.lockspace,
            "node_id": backend.node_id,
            "node_name": self.locker.node_name,
            "socket": self.config.socket_path,
            "owners": len(self._owners),
            "locks": self.locker.lock_count(),
            "uptime_s": round(time.monotonic() - self._started, 3),
        }
        if not backend.cluster:
            status["warning"] = "model backend: single-host test model, NOT a cluster lock"
        return status

    def locks(self) -> list[dict[str, Any]]:
        assert self.locker is not None
        out = []
        for owner in self._owners.values():
            for held in owner.locks.values():
                out.append(
                    {
                        "resource": held.resource,
                        "kind": held.kind,
                        "path": held.label,
                        "mode": held.mode.name,
                        "domain": owner.name,
                        "uuid": owner.uuid,
                        "pid": owner.pid,
                        "node": self.locker.node_name,
                    }
                )
        return sorted(out, key=lambda x: (x["path"], x["domain"]))

    # -- connections ----------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            await _Conn(self, reader, writer).run()
        finally:
            self._conns.pop(task, None)

    @property
    def connection_count(self) -> int:
        return len(self._conns)


class _Conn:
    """One client connection: authenticated once, then request/reply until EOF."""

    def __init__(
        self, daemon: Daemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.daemon = daemon
        self.reader = reader
        self.writer = writer
        self.registration: Owner | None = None
        self.restricted = False
        sock = writer.get_extra_info("socket")
        self.pid, self.uid, self.gid = peer_credentials(sock)
        self.log = logging.LoggerAdapter(log, {"peer": f"pid={self.pid} uid={self.uid}"})

    async def run(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            self.log.debug("connection from pid %d uid %d dropped: %s", self.pid, self.uid, err)
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            owner = self.registration
            if owner is not None and not self.daemon._stopping:
                owner.registered = False
                await self.daemon._owner_gone(owner, "registration connection closed")

    async def _send(self, reply: dict[str, Any]) -> None:
        self.writer.write(protocol.encode_frame(reply))
        await self.writer.drain()

    async def _refuse(self, err: VirtDlmError) -> None:
        self.log.warning("peer pid %d uid %d: %s", self.pid, self.uid, err)
        with contextlib.suppress(ConnectionError):
            await self._send(protocol.error_reply(err))

    async def _read_frame(self) -> dict[str, Any] | None:
        idle = None if self.registration is not None else IDLE_TIMEOUT_S
        try:
            async with asyncio.timeout(idle):
                header = await self.reader.read(protocol.HEADER.size)
                while header and len(header) < protocol.HEADER.size:
                    more = await self.reader.read(protocol.HEADER.size - len(header))
                    if not more:
                        break
                    header += more
        except TimeoutError:
            return None
        if not header:
            return None
        length = protocol.frame_length(header)
        try:
            async with asyncio.timeout(FRAME_TIMEOUT_S):
                body = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError as err:
            raise ProtocolError(f"truncated frame: {len(err.partial)} of {length} bytes") from err
        except TimeoutError as err:
            raise ProtocolError(
                f"frame body of {length} bytes not received in {FRAME_TIMEOUT_S:.0f} s"
            ) from err
        return protocol.decode_body(body)

    async def _serve(self) -> None:
        d = self.daemon
        if not peer_allowed(self.uid, self.gid, d.allowed_gid):
            await self._refuse(
                Denied(
                    f"uid {self.uid} may not use virtdlmd (root only"
                    f"{', or group ' + d.config.allowed_group if d.config.allowed_group else ''})"
                )
            )
            return
        if d.connection_count > MAX_CLIENTS:
            await self._refuse(ShuttingDown(f"too many clients ({MAX_CLIENTS}); retry later"))
            return
        while True:
            try:
                message = await self._read_frame()
            except ProtocolError as err:
                await self._refuse(err)
                return
            if message is None:
                return
            if self.restricted:
                await self._refuse(
                    Restricted(
                        "this registration connection is restricted: "
                        "it may send no further requests"
                    )
                )
                self.registration = None  # the pidfd keeps watching the owner
                return
            try:
                request = protocol.parse_request(message)
                reply = await d.handle(request, self.pid, self)
            except (ProtocolError, InvalidRequest) as err:
                await self._refuse(err)
                return
            except VirtDlmError as err:
                if err.code != ErrorCode.BUSY:
                    self.log.warning("%s %s: %s", message.get("op"), _who(message), err)
                reply = protocol.error_reply(err)
            await self._send(reply)


def _lease_label(lease: LeaseSpec) -> str:
    return f"{lease.lockspace}/{lease.key}" if lease.lockspace else lease.key


def _who(message: dict[str, Any]) -> str:
    owner = message.get("owner")
    if isinstance(owner, dict):
        return f"{owner.get('name')} pid {owner.get('pid')}"
    return ""
