"""This node's lock health: what the daemon makes of its backend's probe, and the monitor.

A DLM tells its users of no lock loss (FACTS §5): a lockspace the kernel stopped (dlm_controld
died) or left, a node without quorum, a fence that has not happened yet, all show only as lock
calls that block or fail. So the backend gives a probe (LockBackend.health_probe) that reads
the sources that do tell, and never goes through the daemon's worker thread: a DLM call on a
stopped lockspace blocks for ever, which is the very thing to notice.

    LockHealth      the daemon's view: the worst condition now, since when, whether this
                    node's locks count as lost, and the error that refuses a start
    HealthMonitor   reads the probe every health_interval_s on a thread of its own and tells
                    its listeners (virtdlm.lockfailure) after each reading

States, worst first: gone, stopped, not quorate, fencing, ok. This node's locks are *lost*
while the lockspace is gone or stopped, and once quorum has been lost for longer than
quorum_grace_s. While the state is not ok, register and acquire are refused at once with
LockspaceUnavailable (a DLM call would block), and releases are kept back from the DLM until it
runs again (virtdlm.locker.strand). Each change is logged once, when it happens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backends.base import LOCKSPACE_GONE, LOCKSPACE_STOPPED, HealthProbe, HealthReading
from .errors import LockspaceUnavailable

log = logging.getLogger(__name__)

OK = "ok"
GONE = LOCKSPACE_GONE
STOPPED = LOCKSPACE_STOPPED
NOT_QUORATE = "not quorate"
FENCING = "fencing"
PROBE_TIMEOUT_S = 15.0  # a reading longer than this keeps the last one (the libdlm probe runs
# two tools of TOOL_TIMEOUT_S = 5 s each)

# every refusal while the lockspace cannot be used says this (lab.virt.refusal finds it)
REFUSED_UNTIL = "starts are refused until"
# per state: what to say after "lockspace L on N", until when starts are refused, what to check
_PHRASES = {
    GONE: (
        "is gone: {detail}",
        "this node is in the lockspace again",
        "`dlm_tool ls`, then restart virtdlmd to join it",
    ),
    STOPPED: ("is stopped: {detail}", "the DLM recovers", "`systemctl status dlm`"),
    NOT_QUORATE: ("cannot be used: {detail}", "quorum returns", "`corosync-quorumtool -s`"),
    FENCING: ("is {detail}", "the fencing is done", "`dlm_tool status`"),
}


def clock(wall: float | None) -> str:
    """A wall-clock time as people read it in a message: 15:42:07 (local time)."""
    return "?" if wall is None else time.strftime("%H:%M:%S", time.localtime(wall))


@dataclass(frozen=True)
class LockHealth:
    """This node's lock health after one reading (wall-clock times, time.time())."""

    lockspace: str
    node: str
    state: str = OK  # OK, GONE, STOPPED, NOT_QUORATE or FENCING
    detail: str = ""  # why, from the probe
    since: float | None = None  # when this state began
    quorate: bool | None = None  # None: unknown
    quorum_detail: str = ""
    lost: bool = False  # this node's locks count as lost
    lost_reason: str = ""
    checked: float | None = None  # the reading's time

    @property
    def usable(self) -> bool:
        """Lock calls may be made: nothing known would make them block or fail."""
        return self.state == OK

    def describe(self) -> str:
        """E.g. "lockspace libvirt on node-a is stopped: dlm_controld is not running (since
        15:42:07)"."""
        where = f"lockspace {self.lockspace} on {self.node}"
        if self.usable:
            return f"{where} is healthy"
        what = _PHRASES[self.state][0].format(detail=self.detail)
        return f"{where} {what} (since {clock(self.since)})"

    def refusal(self) -> LockspaceUnavailable:
        """The error that refuses a start while the lockspace cannot be used."""
        _what, until, check = _PHRASES[self.state]
        return LockspaceUnavailable(f"{self.describe()}; {REFUSED_UNTIL} {until}: check {check}")

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "detail": self.detail,
            "since": self.since,
            "quorate": self.quorate,
            "quorum_detail": self.quorum_detail,
            "lost": self.lost,
            "lost_reason": self.lost_reason,
            "checked": self.checked,
        }


Listener = Callable[[LockHealth], None]


class HealthMonitor:
    """Reads the probe every interval_s on its own thread; keeps the LockHealth."""

    def __init__(
        self,
        probe: HealthProbe,
        lockspace: str,
        node: str,
        interval_s: float,
        quorum_grace_s: float,
    ) -> None:
        self.probe = probe
        self.interval_s = interval_s
        self.quorum_grace_s = quorum_grace_s
        self.health = LockHealth(lockspace, node)
        self.listeners: list[Listener] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="health")
        self._reading: asyncio.Future[HealthReading] | None = None  # one at a time
        self._slow_logged = False
        self._not_quorate: tuple[float, float] | None = None  # (wall, monotonic) it began
        self._task: asyncio.Task[None] | None = None

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.probe.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> LockHealth:
        """Take one reading (or keep the last one if the probe is slow), tell the listeners."""
        reading = await self._read()
        if reading is not None:
            self._update(reading, time.time(), time.monotonic())
        for listener in self.listeners:
            try:
                listener(self.health)
            except Exception:  # a listener's bug must not stop the monitoring
                log.exception("lock health listener %r failed", listener)
        return self.health

    async def _read(self) -> HealthReading | None:
        """One reading at a time: callers that come while one runs (the loop, and a request
        that wants a fresh reading before it refuses) all wait for that one."""
        if self._reading is None:
            self._reading = asyncio.wrap_future(self._executor.submit(self.probe.read))
        reading = self._reading
        done, _ = await asyncio.wait({reading}, timeout=PROBE_TIMEOUT_S)
        if not done:
            if not self._slow_logged:
                self._slow_logged = True
                log.warning(
                    "%s: the health probe has not answered for %g s; the last reading stands",
                    self.health.lockspace,
                    PROBE_TIMEOUT_S,
                )
            return None
        if self._reading is reading:  # the first of its waiters to wake takes it down
            self._reading, self._slow_logged = None, False
        try:
            return reading.result()
        except Exception as err:  # the probe's own failure: keep the last reading
            log.error("%s: the health probe failed: %s", self.health.lockspace, err)
            log.debug("health probe", exc_info=err)
            return None

    # -- what a reading means ----------------------------------------------------------------

    def _update(self, r: HealthReading, wall: float, mono: float) -> None:
        old = self.health
        if r.quorate is False:
            if self._not_quorate is None:
                self._not_quorate = (wall, mono)
        else:
            self._not_quorate = None
        state, detail, since = self._state(r)
        if state == old.state and since is None:
            since = old.since  # the same condition goes on
        elif since is None and state != OK:
            since = wall
        lost, reason = False, ""
        if state in (GONE, STOPPED):
            lost, reason = True, f"{state}: {detail}"
        elif self._not_quorate is not None and mono - self._not_quorate[1] >= self.quorum_grace_s:
            lost = True
            reason = (
                f"{old.node} has not been quorate since {clock(self._not_quorate[0])} "
                f"(more than quorum_grace_s = {self.quorum_grace_s:g} s)"
            )
        self.health = LockHealth(
            old.lockspace,
            old.node,
            state,
            detail,
            since if state != OK else None,
            r.quorate,
            r.quorum_detail,
            lost,
            reason,
            wall,
        )
        self._log_changes(old, self.health)

    def _state(self, r: HealthReading) -> tuple[str, str, float | None]:
        """The worst condition of a reading: (state, detail, since if the source knows)."""
        if r.lockspace in (GONE, STOPPED):
            return r.lockspace, r.lockspace_detail or r.lockspace, r.lockspace_since
        if r.quorate is False:
            node = self.health.node
            detail = f"{node} is not quorate" + (f" ({r.quorum_detail})" if r.quorum_detail else "")
            return NOT_QUORATE, detail, self._not_quorate[0] if self._not_quorate else None
        if r.fencing:
            return FENCING, r.fencing, r.fencing_since
        return OK, "", None

    @staticmethod
    def _log_changes(old: LockHealth, new: LockHealth) -> None:
        if new.state != old.state or (new.detail != old.detail and not new.usable):
            if new.usable:
                log.info("%s again (was %s)", new.describe(), old.state)
            else:
                log.warning("%s; starts are refused", new.describe())
        if new.lost and not old.lost:
            log.error(
                "lockspace %s on %s: this node's locks are lost: %s",
                new.lockspace,
                new.node,
                new.lost_reason,
            )
        unknown_now = old.quorate is not None or new.quorum_detail != old.quorum_detail
        if new.quorate is None and unknown_now:
            log.warning(
                "lockspace %s on %s: quorum is unknown (%s); a loss of quorum cannot be seen",
                new.lockspace,
                new.node,
                new.quorum_detail,
            )
