"""What virtdlmd does with the domains of a node whose locks are lost: on_lockfailure.

libvirt passes each domain's <on_lockfailure> to the lock driver with every acquire and never
acts on it itself (FACTS §1, §5): dlm.so sends it on, the owner keeps the last one given
(virtdlm.owners), and this module applies it when virtdlm.health finds this node's locks lost,
as sanlock's libvirt_sanlock_helper does, through libvirt:

    poweroff, default   virDomainDestroy
    restart             virDomainDestroy; once the lockspace is healthy again (locks can be
                        had), virDomainCreate (a transient domain: virDomainCreateXML of the
                        XML it had)
    pause               virDomainSuspend
    ignore              nothing: the domain runs on without its locks (logged)

Each owner that holds at least one lock gets its action once per loss event: from the reading
that finds the locks lost to the first healthy one. A restart's second half waits for that
healthy reading in this daemon's life: with the kernel DLM a stopped or gone lockspace stays so
until the node reboots (virtdlm.backends.dlm_health), so there a restart ends as a poweroff,
and only a loss of quorum that heals brings the domain back. The actions run on threads of their own
(LibvirtActuator, a fresh connection to lockfailure_uri each), each under a deadline, and never
while the daemon's decision lock is held: a suspend makes libvirt call dlm.so's release, that
is virtdlmd, which must be free to answer (and answers at once: a release on a lockspace that
takes no calls is stranded, virtdlm.locker). Each action is logged in one line (domain, uuid,
action, when and why the locks were lost, outcome); `virtdlm status` shows the last
MAX_ACTIONS_KEPT. Without the libvirt module, or with libvirtd unreachable, the failure is
logged with what to do, and virtdlmd goes on serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from .health import GONE, LockHealth, clock
from .owners import Owner, OwnerKey
from .protocol import DEFAULT_ACTION

if TYPE_CHECKING:
    from .locker import Locker
    from .registry import OwnerRegistry
    from .worker import Worker

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ACTIONS_KEPT = 20  # shown by `virtdlm status`
LIBVIRT_CALL_TIMEOUT_S = 30.0  # one action's calls: connect, look up, destroy/suspend/create
ACTUATOR_THREADS = 4  # actions run side by side; a hung libvirtd holds at most this many

POWEROFF = "poweroff"
RESTART = "restart"
PAUSE = "pause"
IGNORE = "ignore"
RESTART_PENDING = "destroyed; to be started again once the lockspace is healthy"


class ActuatorError(Exception):
    """An action could not be applied; the message says why and what to do."""


@dataclass
class ActionRecord:
    """One action on one domain, as logged and shown by `virtdlm status`."""

    domain: str
    uuid: str
    action: str  # as the domain asked (protocol.ACTIONS)
    reason: str  # why this node's locks count as lost
    time: float  # when the loss was found (wall clock)
    outcome: str = "pending"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Applied:
    outcome: str
    restart: bool = False  # destroyed, to be started again once the lockspace is healthy
    xml: str | None = None  # a transient domain's definition, to start it again from


def _load_libvirt() -> tuple[ModuleType | None, str]:
    """libvirt-python, or why not (Debian's python3-libvirt on the nodes)."""
    try:
        module = importlib.import_module("libvirt")
    except ImportError as err:
        return None, (
            f"the libvirt Python module cannot be loaded ({err}), so on_lockfailure actions "
            "cannot be applied: install python3-libvirt, then restart virtdlmd"
        )
    module.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed
    return module, ""


class LibvirtActuator:
    """The libvirt calls of the actions, on a small thread pool, each action under a deadline.
    A call that outlives its deadline cannot be taken back: it goes on in its thread."""

    def __init__(self, uri: str, call_timeout_s: float = LIBVIRT_CALL_TIMEOUT_S) -> None:
        self.uri = uri
        self.call_timeout_s = call_timeout_s
        self._libvirt, self.unavailable = _load_libvirt()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            ACTUATOR_THREADS, thread_name_prefix="lockfailure"
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def act(self, action: str, uuid: str) -> Applied:
        if action == IGNORE:
            return Applied("ignored: the domain runs on without its locks")
        return await self._bounded(partial(self._act, action, uuid), f"{action} of {uuid}")

    async def start(self, uuid: str, xml: str | None) -> str:
        return await self._bounded(partial(self._start, uuid, xml), f"start of {uuid}")

    async def _bounded(self, fn: Callable[[], T], what: str) -> T:
        if self._libvirt is None:
            raise ActuatorError(self.unavailable)
        future = asyncio.wrap_future(self._executor.submit(fn))
        done, _ = await asyncio.wait({future}, timeout=self.call_timeout_s)
        if not done:
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
            raise ActuatorError(
                f"{self.uri} did not answer the {what} in {self.call_timeout_s:g} s; "
                "the call may still complete (is libvirtd hung? systemctl status libvirtd)"
            )
        return future.result()

    # -- on an actuator thread ---------------------------------------------------------------

    def _open(self) -> Any:
        lv = self._libvirt
        assert lv is not None
        try:
            return lv.open(self.uri)
        except lv.libvirtError as err:
            raise ActuatorError(
                f"cannot connect to {self.uri}: {err.get_error_message()}; is libvirtd "
                "running? (systemctl status libvirtd)"
            ) from err

    def _domain(self, conn: Any, uuid: str) -> Any:
        lv = self._libvirt
        assert lv is not None
        try:
            return conn.lookupByUUIDString(uuid)
        except lv.libvirtError as err:
            if err.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                raise ActuatorError(f"no domain with uuid {uuid} in {self.uri}") from err
            raise ActuatorError(
                f"looking up domain {uuid} in {self.uri}: {err.get_error_message()}"
            ) from err

    def _act(self, action: str, uuid: str) -> Applied:
        lv = self._libvirt
        assert lv is not None
        conn = self._open()
        try:
            dom = self._domain(conn, uuid)
            if not dom.isActive():
                return Applied("nothing to do: the domain is not running")
            if action == PAUSE:
                dom.suspend()
                return Applied("paused")
            xml = None if dom.isPersistent() else dom.XMLDesc(0)
            dom.destroy()
            if action == RESTART:
                return Applied(RESTART_PENDING, restart=True, xml=xml)
            if action == DEFAULT_ACTION:
                return Applied("destroyed (default: poweroff)")
            return Applied("destroyed")
        except lv.libvirtError as err:
            raise ActuatorError(f"{action} in {self.uri}: {err.get_error_message()}") from err
        finally:
            conn.close()

    def _start(self, uuid: str, xml: str | None) -> str:
        lv = self._libvirt
        assert lv is not None
        conn = self._open()
        try:
            if xml is not None:
                conn.createXML(xml, 0)
            else:
                dom = self._domain(conn, uuid)
                if dom.isActive():
                    return "found running again: not started"
                dom.create()
            return f"started again at {clock(time.time())}"
        except lv.libvirtError as err:
            raise ActuatorError(f"start in {self.uri}: {err.get_error_message()}") from err
        finally:
            conn.close()


@dataclass
class _LossEvent:
    """From the reading that finds the locks lost to the first healthy one."""

    reason: str
    time: float
    acted: set[OwnerKey] = field(default_factory=set)  # owners whose action is applied
    dropped: bool = False  # the lockspace went away: the records were dropped


class LockFailureHandler:
    """Listens to virtdlm.health (on the event loop) and applies on_lockfailure."""

    def __init__(
        self,
        registry: OwnerRegistry,
        locker: Locker,
        worker: Worker,
        actuator: LibvirtActuator,
    ) -> None:
        self._registry = registry
        self._locker = locker
        self._worker = worker
        self.actuator = actuator
        self.actions: deque[ActionRecord] = deque(maxlen=MAX_ACTIONS_KEPT)
        self._event: _LossEvent | None = None
        self._health: LockHealth | None = None
        self._restarts: list[tuple[ActionRecord, str | None]] = []  # destroyed, to start
        self._tasks: set[asyncio.Task[None]] = set()
        self._release_queued = False
        if actuator.unavailable:
            log.error("lock failure: %s", actuator.unavailable)

    def to_json(self) -> list[dict[str, Any]]:
        return [record.to_json() for record in self.actions]

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.actuator.close()

    # -- after each health reading -----------------------------------------------------------

    def on_health(self, health: LockHealth) -> None:
        self._health = health
        if health.lost:
            self._lost(health)
        elif self._event is not None and health.usable:
            log.info(
                "lockspace %s on %s is healthy again: the loss found at %s is over",
                health.lockspace,
                health.node,
                clock(self._event.time),
            )
            self._event = None
        if health.usable:
            self._release_stranded()
            self._restart_due()

    def _lost(self, health: LockHealth) -> None:
        event = self._event
        if event is None:
            event = self._event = _LossEvent(
                f"lockspace {health.lockspace} on {health.node}: {health.lost_reason}",
                time.time(),
            )
        for owner in self._registry:
            if owner.key not in event.acted and self._locker.held_by(owner):
                event.acted.add(owner.key)
                self._spawn(self._apply(self._record(owner, event)))
        if health.state == GONE and not event.dropped:
            event.dropped = True
            if self._locker.drop_lost():
                for owner in self._registry:
                    self._registry.save(owner)

    def _record(self, owner: Owner, event: _LossEvent) -> ActionRecord:
        record = ActionRecord(owner.name, owner.uuid, owner.action, event.reason, event.time)
        self.actions.append(record)
        return record

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- applying ------------------------------------------------------------------------------

    async def _apply(self, record: ActionRecord) -> None:
        try:
            applied = await self.actuator.act(record.action, record.uuid)
        except ActuatorError as err:
            record.outcome = f"failed: {err}"
        else:
            record.outcome = applied.outcome
            if applied.restart:
                self._restarts.append((record, applied.xml))
        self._log(record, logging.WARNING if record.action == IGNORE else logging.ERROR)
        self._restart_due()

    def _restart_due(self) -> None:
        """Start the domains a restart destroyed, once the lockspace is healthy."""
        if not self._restarts or self._health is None or not self._health.usable:
            return
        due, self._restarts = self._restarts, []
        for record, xml in due:
            self._spawn(self._restart(record, xml))

    async def _restart(self, record: ActionRecord, xml: str | None) -> None:
        try:
            started = await self.actuator.start(record.uuid, xml)
        except ActuatorError as err:
            record.outcome = f"destroyed; starting it again failed: {err}"
            self._log(record, logging.ERROR)
            return
        record.outcome = f"destroyed, then {started}"
        self._log(record, logging.WARNING)

    @staticmethod
    def _log(record: ActionRecord, level: int) -> None:
        log.log(
            level,
            "%s (uuid %s) on_lockfailure %s: %s; locks lost at %s: %s",
            record.domain,
            record.uuid,
            record.action,
            record.outcome,
            clock(record.time),
            record.reason,
        )

    # -- releases held back while the lockspace took no calls --------------------------------

    def _release_stranded(self) -> None:
        if self._release_queued or not self._locker.stranded_count:
            return
        self._release_queued = True
        self._worker.submit(self._send_stranded)

    def _send_stranded(self) -> None:
        """Worker thread: the lockspace runs again; send what was released meanwhile."""
        self._release_queued = False
        self._locker.release_stranded()
