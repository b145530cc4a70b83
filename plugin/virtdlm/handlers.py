"""What virtdlmd does with each request: one handler per op, behind one guard.

``dispatch`` is the only way in. It first checks the connection's state (a restricted
registration connection may send nothing more), then validates the frame as a request,
then runs ``HANDLERS[op]`` against the request's deadline (virtdlm.deadline): every wait of
a handler is bounded by what is left of it, so the answer, TIMEOUT at worst, comes before
the client gives up. It answers with the reply and whether to close the connection: a frame
that is not a valid request is refused and the connection closed; any other error is an
error reply on a connection that stays open.

While this node's lockspace takes no calls (virtdlm.health), register and acquire are refused
at once with LOCKSPACE_UNAVAILABLE, saying what is wrong and since when, instead of waiting
on a DLM call that would block; a release is answered at once too, its locks stranded until
the lockspace runs again (virtdlm.locker), without waiting for the decision lock, which an
acquire blocked in the DLM may hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import __version__, policy, protocol
from .deadline import Deadline
from .errors import (
    Denied,
    ErrorCode,
    InvalidRequest,
    ProtocolError,
    Restricted,
    ShuttingDown,
    VirtDlmError,
)
from .owners import Owner
from .protocol import OwnerSpec, Request

if TYPE_CHECKING:
    from .daemon import Daemon

Reply = dict[str, Any]


@dataclass
class Session:
    """One connection's state: the peer (SO_PEERCRED) and what it registered."""

    pid: int
    uid: int
    gid: int
    log: logging.LoggerAdapter[logging.Logger]
    registration: Owner | None = None  # the owner this connection registered
    restricted: bool = False  # registered with restrict: may send nothing more

    @property
    def registered(self) -> bool:
        return self.registration is not None


def _guard(session: Session) -> None:
    """The one check of per-connection state, made before any request is looked at."""
    if session.restricted:
        session.registration = None  # the connection closes; the pidfd keeps watching
        raise Restricted(
            "this registration connection is restricted: it may send no further requests"
        )


async def dispatch(d: Daemon, session: Session, message: dict[str, Any]) -> tuple[Reply, bool]:
    """Answer one decoded frame: (reply, close the connection after sending it)."""
    try:
        _guard(session)
        request = protocol.parse_request(message)
        if d.stopping:
            raise ShuttingDown("virtdlmd is stopping; retry once it is back")
        deadline = Deadline(_what(request), d.request_timeout_s)
        return await HANDLERS[request.op](d, session, request, deadline), False
    except (ProtocolError, InvalidRequest, Restricted) as err:
        session.log.warning("peer pid %d uid %d: %s", session.pid, session.uid, err)
        return protocol.error_reply(err), True
    except VirtDlmError as err:
        if err.code != ErrorCode.BUSY:
            session.log.warning("%s %s: %s", message.get("op"), _who(message), err)
        return protocol.error_reply(err), False


async def closed(d: Daemon, session: Session) -> None:
    """The connection ended: if it was an owner's registration, QEMU is gone."""
    owner = session.registration
    if owner is not None and not d.stopping:
        owner.registered = False
        d.registry.retire(owner, "registration connection closed")


@contextlib.asynccontextmanager
async def _deciding(d: Daemon, deadline: Deadline) -> AsyncIterator[None]:
    """Hold the decision lock, having waited for it no longer than the request's deadline."""
    try:
        async with asyncio.timeout(deadline.left()):
            await d.decide.acquire()
    except TimeoutError as err:
        raise deadline.expired(
            f"waited {deadline.budget_s:g} s for the decision lock, held by an earlier "
            "request whose backend call has not finished; the DLM may be blocked "
            "(check 'dlm_tool status')"
        ) from err
    try:
        yield
    finally:
        d.decide.release()


# -- one handler per op -------------------------------------------------------------------


async def _check_usable(d: Daemon) -> None:
    """Refuse a start at once while the lockspace takes no calls (virtdlm.health). A refusal
    rests on a fresh reading: the monitor's last one may be health_interval_s old, and the
    first start after a fence completed must not be refused for a fence that is over."""
    if d.health.usable:
        return
    await d.monitor.check()
    if not d.health.usable:
        raise d.health.refusal()


async def _register(d: Daemon, session: Session, request: Request, deadline: Deadline) -> Reply:
    spec = _owner_of(request)
    if spec.pid != session.pid:
        raise Denied(f"register: claimed pid {spec.pid} is not the caller's pid {session.pid}")
    await _check_usable(d)
    async with _deciding(d, deadline):
        owner = d.registry.owner_for(spec, create=True)
    assert owner is not None
    owner.action = request.action  # the last one given wins
    owner.registered = True
    session.registration = owner
    session.restricted = request.restrict
    return protocol.ok_reply()


async def _acquire(d: Daemon, session: Session, request: Request, deadline: Deadline) -> Reply:
    spec = _owner_of(request)
    policy.check_policy(d.config, request.resources)
    await _check_usable(d)
    wants = await policy.wants(d.config, request.resources, deadline)
    async with _deciding(d, deadline):
        await _check_usable(d)  # it may have changed while the disks were resolved
        owner = d.registry.owner_for(spec, create=True)
        assert owner is not None
        owner.action = request.action  # the last one given wins
        await d.worker.run_revocable(d.locker.acquire, owner, wants, deadline=deadline)
        d.registry.save(owner)
    return protocol.ok_reply()


async def _release(d: Daemon, session: Session, request: Request, deadline: Deadline) -> Reply:
    spec = _owner_of(request)
    if not d.health.usable:
        return await _strand(d, spec, request, deadline)
    async with _deciding(d, deadline):
        owner = d.registry.owner_for(spec, create=False)
        if owner is None:
            return protocol.ok_reply()
        held = d.locker.held_by(owner)
        names = await policy.release_names(d.config, held, request.resources, deadline)
        await d.worker.run(d.locker.release, owner, names, deadline=deadline)
        d.registry.save(owner)
    return protocol.ok_reply()


async def _strand(d: Daemon, spec: OwnerSpec, request: Request, deadline: Deadline) -> Reply:
    """A release while the lockspace takes no calls: answered at once, sent to the DLM once
    it runs again (Locker.strand); no decision lock, which a blocked acquire may hold."""
    owner = d.registry.owner_for(spec, create=False)
    if owner is None:
        return protocol.ok_reply()
    held = d.locker.held_by(owner)
    names = await policy.release_names(d.config, held, request.resources, deadline)
    d.locker.strand(owner, names)
    d.registry.save(owner)
    return protocol.ok_reply()


async def _inquire(d: Daemon, session: Session, request: Request, deadline: Deadline) -> Reply:
    return protocol.ok_reply(state="")


async def _status(d: Daemon, session: Session, request: Request, deadline: Deadline) -> Reply:
    backend = d.locker.backend
    status: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "backend": backend.name,
        "cluster": backend.cluster,
        "lockspace": backend.lockspace,
        "node_id": backend.node_id,
        "node_name": d.locker.node_name,
        "socket": d.config.socket_path,
        "owners": len(d.registry),
        "locks": d.locker.lock_count(),
        "uptime_s": round(time.monotonic() - d.started, 3),
    }
    if not backend.cluster:
        status["warning"] = "model backend: single-host test model, NOT a cluster lock"
    status["health"] = {**d.health.to_json(), "pending_releases": d.locker.stranded_count}
    status["lockfailure"] = {
        "uri": d.config.lockfailure_uri,
        "unavailable": d.lockfailure.actuator.unavailable,
        "actions": d.lockfailure.to_json(),
    }
    return protocol.ok_reply(status=status)


async def _locks(d: Daemon, session: Session, request: Request, deadline: Deadline) -> Reply:
    node = d.locker.node_name
    locks = [
        {
            "resource": held.resource,
            "kind": held.kind,
            "path": held.label,
            "mode": held.mode.name,
            "domain": held.owner.name,
            "uuid": held.owner.uuid,
            "pid": held.owner.pid,
            "node": node,
        }
        for held in d.locker.all_held()
    ]
    return protocol.ok_reply(locks=sorted(locks, key=lambda x: (x["path"], x["domain"])))


Handler = Callable[["Daemon", Session, Request, Deadline], Awaitable[Reply]]

HANDLERS: dict[str, Handler] = {
    "register": _register,
    "acquire": _acquire,
    "release": _release,
    "inquire": _inquire,
    "status": _status,
    "locks": _locks,
}
assert set(HANDLERS) == protocol.OPS, "every op of the protocol has exactly one handler"


def _owner_of(request: Request) -> OwnerSpec:
    assert request.owner is not None, "parse_request gives every owner op an owner"
    return request.owner


def _what(request: Request) -> str:
    """The request as its Timeout names it: "acquire for vm-1 (pid 4242)"."""
    owner = request.owner
    return request.op if owner is None else f"{request.op} for {owner.name} (pid {owner.pid})"


def _who(message: dict[str, Any]) -> str:
    owner = message.get("owner")
    if isinstance(owner, dict):
        return f"{owner.get('name')} pid {owner.get('pid')}"
    return ""
