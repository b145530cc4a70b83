"""The live recorder: what people do with virsh on the nodes, written as a scenario file.

`python -m lab.scenario record --out FILE` (make record) runs record(): a Recorder watches
libvirt's domain lifecycle events on every node (libvirt's default event loop, on a daemon
thread), prints each event that makes a step or a note (one line, with its node), and on
Ctrl-C writes the scenario and a one-line summary. What each event becomes is decided in
lab.scenario.tape; a VM's disks come from its XML, read on "defined" and "started".

Every recorded step is one that libvirt carried out, so the outcome of each is ok (the
file's steps expect ok). A step that libvirt refused (a lock the lock manager would not
give, an image QEMU had locked, ...) makes no event: refused attempts are not recorded,
and the recorder cannot know of them; add them by hand with their `expect:`. Neither
recorded: what lifecycle events do not report (reset, attach-disk, detach-disk) and what
is done to the nodes rather than to libvirt (kill-virtdlmd, cut, power-off, ...). VMs
already defined or running when the recording starts get a define or a start (and a
suspend) first, so that the file starts from the empty lab `make lab` leaves.

What an event cannot say is read from libvirt when it comes, and so is as good as the
moment: a VM's disks, and whether a save was libvirt's managed save (a `virsh start` given
before the managedsave's event came would make it read as a save to <vm>.save).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import libvirt

from ..nodes import NODE_NAMES
from ..virt.hypervisor import Hypervisor, LibvirtFailure
from ..wait import LabError
from .schema import Scenario, ScenarioError, dump, loads
from .tape import Entry, Event, Tape, disk_uses

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 20.0  # a node's libvirtd answering one call of the recorder
LOOP_STOP_TIMEOUT_S = 5.0  # the event loop thread ending once it is woken


class _EventLoop:
    """libvirt's default event loop on a daemon thread. libvirt takes it once per process
    and cannot give it back; the thread runs while a recorder needs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registered = False
        self._users = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def acquire(self) -> None:
        """Before a connection is opened: its events need the loop from the start."""
        with self._lock:
            if not self._registered:
                libvirt.virEventRegisterDefaultImpl()
                self._registered = True
            self._users += 1
            if self._thread is None:
                self._stopping = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stopping,), name="libvirt-events", daemon=True
                )
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            thread = self._thread
            if self._users or thread is None:
                return
            self._thread = None
            self._stopping.set()
        libvirt.virEventAddTimeout(0, _remove_timer, None)  # wakes the loop: it sees the flag
        thread.join(LOOP_STOP_TIMEOUT_S)
        if thread.is_alive():  # daemonic: it cannot keep the program from ending
            log.warning("libvirt-events did not stop in %.0f s", LOOP_STOP_TIMEOUT_S)

    @staticmethod
    def _run(stopping: threading.Event) -> None:
        while not stopping.is_set():
            if libvirt.virEventRunDefaultImpl() < 0:
                log.error("libvirt-events: the event loop failed; no more events")
                return


def _remove_timer(timer: int, _opaque: object) -> None:
    libvirt.virEventRemoveTimeout(timer)


EVENT_LOOP = _EventLoop()


class Recorder:
    """Records what happens to the domains of the nodes in `uris` ({node: libvirt URI})."""

    def __init__(
        self,
        uris: Mapping[str, str],
        mount_point: str,
        wait_after_s: float = 0.0,
        on_entry: Callable[[Entry], None] | None = None,
    ) -> None:
        unknown = [n for n in uris if n not in NODE_NAMES]
        if unknown or not uris:
            raise LabError(f"recorder: nodes {unknown or 'none'} are not {', '.join(NODE_NAMES)}")
        self.uris = dict(uris)
        self.mount_point = mount_point
        self.tape = Tape(wait_after_s)
        self.on_entry = on_entry or (lambda _entry: None)
        self._lock = threading.Lock()  # the tape, fed by the event loop and by start()
        self._hv: dict[str, Hypervisor] = {}
        self._watches: dict[str, int] = {}
        self._recording = False

    def start(self) -> None:
        """Watch every node, then record what already runs there."""
        EVENT_LOOP.acquire()
        self._recording = True
        try:
            for node, uri in self.uris.items():
                h = self._hv[node] = Hypervisor(uri, node, CALL_TIMEOUT_S)
                self._watches[node] = h.call(
                    "watch lifecycle events",
                    h.conn.domainEventRegisterAny,
                    None,
                    libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                    self._on_event,
                    node,
                )
            for node, h in self._hv.items():
                self._record_present(node, h)
        except BaseException:
            self._close()
            raise

    def stop(self) -> Scenario:
        """Stop watching; the scenario of what was recorded."""
        self._close()
        with self._lock:
            self.tape.finish()
            last = max(NODE_NAMES.index(n) for n in self.uris) + 1
            return self.tape.scenario(max(2, last))

    def _close(self) -> None:
        with self._lock:
            if not self._recording:
                return
            self._recording = False
        for node, h in self._hv.items():
            try:
                if node in self._watches:
                    h.call("stop watching", h.conn.domainEventDeregisterAny, self._watches[node])
                h.close()
            except LabError as err:  # the recording still counts: say so in the file
                log.warning("%s: closing the connection failed: %s", node, err)
                with self._lock:
                    self.tape.notes.append(f"[{node}] closing the connection failed: {err}")
        self._hv.clear()
        self._watches.clear()
        EVENT_LOOP.release()

    def _feed(self, ev: Event) -> None:
        with self._lock:
            if not self._recording:
                return
            entry = self.tape.feed(ev)
        log.debug("%s", entry.line())
        self.on_entry(entry)

    def _on_event(self, _conn: Any, dom: Any, event: int, detail: int, node: str) -> None:
        """libvirt's callback, on the event loop's thread: nothing may escape it."""
        try:
            self._feed(self._read(node, dom, event, detail, time.monotonic()))
        except Exception as err:  # libvirt would drop it silently: keep it in the file
            log.error("%s: an event was lost: %s", node, err)
            log.debug("%s: the lost event", node, exc_info=True)
            with self._lock:
                if self._recording:
                    self.tape.notes.append(f"[{node}] an event was lost: {err}")

    def _read(self, node: str, dom: Any, event: int, detail: int, at: float) -> Event:
        name, h = str(dom.name()), self._hv[node]
        disks, managed = None, False
        if event in (libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_STARTED):
            try:
                xml = h.call(f"xml of {name}", dom.XMLDesc, 0)
                disks = disk_uses(xml, self.mount_point)
            except LabError as err:  # Event.disks None: the tape notes it
                log.warning("%s: %s: %s", node, name, err)
        saved = (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED)
        if (event, detail) == saved:
            try:
                managed = bool(h.call(f"managed save of {name}", dom.hasManagedSaveImage, 0))
            except LibvirtFailure as err:  # a transient domain is gone once saved
                if err.code != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return Event(node, name, event, detail, at, disks, managed)

    def _record_present(self, node: str, h: Hypervisor) -> None:
        for dom in h.call("list domains", h.conn.listAllDomains, 0):
            name = str(dom.name())
            try:
                state, _reason = h.call(f"state of {name}", dom.state, 0)
                xml = h.call(f"xml of {name}", dom.XMLDesc, 0)
            except LibvirtFailure as err:
                if err.code == libvirt.VIR_ERR_NO_DOMAIN:  # gone meanwhile: its event says so
                    continue
                raise
            disks, now = disk_uses(xml, self.mount_point), time.monotonic()
            first = (
                (libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED)
                if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)
                else (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED)
            )
            self._feed(Event(node, name, *first, now, disks, initial=True))
            if state == libvirt.VIR_DOMAIN_PAUSED:
                paused = (
                    libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED,
                )
                self._feed(Event(node, name, *paused, now, initial=True))


# -- the command: python -m lab.scenario record -------------------------------------------------


def _say(line: str) -> None:
    print(line, flush=True)  # noqa: T201 (the recorder's output is what it records)


def record(
    out_path: str,
    uris: Mapping[str, str],
    mount_point: str,
    stop_event: threading.Event | None = None,
    wait_after_s: float = 0.0,
) -> Scenario:
    """Record until stop_event is set or Ctrl-C, then write the scenario to out_path."""

    def show(entry: Entry) -> None:
        if entry.steps or entry.note:  # duplicates and a migration's inner events stay quiet
            _say(f"{time.strftime('%H:%M:%S')} {entry.line()}")

    stop = stop_event or threading.Event()
    recorder = Recorder(uris, mount_point, wait_after_s, show)
    recorder.start()
    nodes = ", ".join(f"{n} ({u})" for n, u in uris.items())
    _say(f"recording {nodes}: work with virsh; Ctrl-C writes {out_path}")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how people end a recording
        stop.wait()
    scenario = recorder.stop()
    tape = recorder.tape
    header = "\n".join(
        [
            f"recorded on {time.strftime('%Y-%m-%d %H:%M:%S')} from {nodes}",
            "Each step is one libvirt carried out (expect: ok). Refused attempts make no event",
            "and are not here: add them by hand with their expect:.",
            *(["", "Notes:"] + tape.notes if tape.notes else []),
        ]
    )
    text = dump(scenario, header)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        loads(text, out_path)
        valid = ""
    except ScenarioError as err:
        valid = f"; NOT a valid scenario, edit it: {err}"
    _say(
        f"wrote {out_path}: {len(tape.steps)} steps, {len(scenario.vms)} VMs "
        f"from {tape.events} events, {len(tape.notes)} notes{valid}"
    )
    return scenario
