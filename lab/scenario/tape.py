"""The recorder's decisions over plain values: a domain's XML as disks, events as steps.

lab.scenario.record watches the nodes and feeds each lifecycle event to a Tape, which keeps
what it needs to know (is the VM running or paused on that node, has it a managed save
there, which half of a migration has come) and answers with the steps the event makes:

    defined (added)                   define (none when it arrives by migration)
    started (booted)                  start
    started (restored)                restore (file <vm>.save); start after a managedsave
    started (migrated) on B and       one step on A: migrate to B, whichever half comes
      stopped (migrated) on A           first (`disks:` when B's XML has other disks)
    suspended (paused)                suspend
    resumed (unpaused)                resume
    stopped (destroyed)               destroy
    stopped (shutdown / crashed)      destroy: how the replay stops it (its note says so)
    stopped (failed)                  kill-qemu: QEMU went away without libvirt asking
    stopped (saved)                   save (file <vm>.save), or managedsave when libvirt
                                        then has a managed save image of the VM
    undefined (removed)               undefine

Consecutive duplicates (resumed after started or restored, a start of a VM that runs there
already, a stop of one that does not) make no step, nor do the events a migration makes
besides its two halves (suspended and resumed "migrated", the destination's definition).
Events no action replays (snapshots, libvirt pausing a VM on an I/O error, a guest panic,
a failed incoming migration) make a note. Libvirt's events carry no save file's path:
save and restore use <vm>.save, where the replay saves on the share. With
wait_after_s > 0, a pause longer than that between two steps becomes a `wait` step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from ..nodes import WRITER_BOOT_IMAGE
from ..suite.matrix import SHARED_DISK
from .run import disk_modes
from .schema import DiskUse, LabNeeds, Scenario, Step, Vm

WAIT_DECIMALS = 1  # a recorded wait's seconds are rounded to this

# Each event's name and its details' names, in libvirt's enum order (virDomainEvent*Type).
EVENT_NAMES: dict[int, tuple[str, tuple[str, ...]]] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("defined", ("added", "updated", "renamed", "from snapshot")),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("undefined", ("removed", "renamed")),
    libvirt.VIR_DOMAIN_EVENT_STARTED: (
        "started",
        ("booted", "migrated", "restored", "from snapshot", "woken up"),
    ),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: (
        "suspended",
        (
            "paused",
            "migrated",
            "I/O error",
            "watchdog",
            "restored",
            "from snapshot",
            "API error",
            "post-copy",
            "post-copy failed",
        ),
    ),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: (
        "resumed",
        ("unpaused", "migrated", "from snapshot", "post-copy", "post-copy failed"),
    ),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: (
        "stopped",
        ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot"),
    ),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: (
        "shutting down",
        ("finished", "by the guest", "by the host"),
    ),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("pm-suspended", ("to memory", "to disk")),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("crashed", ("panicked", "crash loaded")),
}
RUNNING, PAUSED = "running", "paused"


def disk_path(path: str, mount_point: str) -> str:
    """A disk's path as a scenario names it (schema.DiskUse): relative to the share, partN
    of the shared block device, else as it is."""
    share = mount_point.rstrip("/") + "/"
    if path.startswith(share) and len(path) > len(share):
        return path[len(share) :]
    part = path.removeprefix(f"{SHARED_DISK}-")
    if part != path and part.startswith("part") and part[4:].isdigit():
        return part
    return path


def disk_uses(
    xml: str, mount_point: str, writer_boot: str = WRITER_BOOT_IMAGE
) -> tuple[DiskUse, ...]:
    """A domain's disks as the scenario's VM uses them, the writer guest's boot disk left out
    (lab.virt.domain puts it first, read-only)."""
    modes = list(disk_modes(xml).items())
    boot = os.path.basename(writer_boot)
    if modes and modes[0][1] == "ro" and os.path.basename(modes[0][0]) == boot:
        modes = modes[1:]
    return tuple(DiskUse(mode, path=disk_path(path, mount_point)) for path, mode in modes)


@dataclass(frozen=True)
class Event:
    """One lifecycle event as it came, with what the recorder read of the domain then."""

    node: str
    vm: str
    event: int  # libvirt.VIR_DOMAIN_EVENT_*
    detail: int  # its detail: VIR_DOMAIN_EVENT_STARTED_BOOTED, ...
    at: float  # time.monotonic() when it came
    disks: tuple[DiskUse, ...] | None = None  # from its XML ("defined", "started"); None: unread
    managed: bool = False  # "stopped (saved)": libvirt then has a managed save image of it
    initial: bool = False  # made up from the VM's state when the recording started

    def describe(self) -> str:
        name, details = EVENT_NAMES.get(self.event, (f"event {self.event}", ()))
        detail = details[self.detail] if 0 <= self.detail < len(details) else str(self.detail)
        return f"{name} ({detail}{', before the recording' if self.initial else ''})"


@dataclass(frozen=True)
class Entry:
    """What the recorder made of one event: steps (often none) and a note for people."""

    event: Event
    steps: tuple[Step, ...] = ()
    note: str = ""

    def line(self) -> str:
        out = f"[{self.event.node}] {self.event.vm} {self.event.describe()}"
        if self.steps:
            out += " -> " + "; ".join(s.describe() for s in self.steps)
        return out + (f" ({self.note})" if self.note else "")


class Tape:
    """Events in, steps out: the recorder's every decision, over plain values.

    State per VM and node: running or paused (absent: not running there), a managed save
    there, and a migration of which one half has come."""

    def __init__(self, wait_after_s: float = 0.0) -> None:
        self.wait_after_s = wait_after_s
        self.steps: list[Step] = []
        self.disks: dict[str, tuple[DiskUse, ...]] = {}  # each VM's, from the first XML read
        self.notes: list[str] = []
        self.events = 0
        self._state: dict[tuple[str, str], str] = {}
        self._managed: set[tuple[str, str]] = set()
        self._incoming: dict[str, tuple[str, tuple[DiskUse, ...] | None]] = {}  # vm -> (to, disks)
        self._outgoing: dict[str, str] = {}  # vm -> the node it left before it arrived
        self._last_step_at: float | None = None

    def feed(self, ev: Event) -> Entry:
        self.events += 1
        handlers: dict[int, Callable[[Event], tuple[list[Step], str]]] = {
            libvirt.VIR_DOMAIN_EVENT_DEFINED: self._defined,
            libvirt.VIR_DOMAIN_EVENT_UNDEFINED: self._undefined,
            libvirt.VIR_DOMAIN_EVENT_STARTED: self._started,
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED: self._suspended,
            libvirt.VIR_DOMAIN_EVENT_RESUMED: self._resumed,
            libvirt.VIR_DOMAIN_EVENT_STOPPED: self._stopped,
            libvirt.VIR_DOMAIN_EVENT_CRASHED: lambda e: ([], "the guest crashed: not a step"),
        }
        handler = handlers.get(ev.event)
        steps, note = handler(ev) if handler else ([], "")
        if steps and self.wait_after_s > 0 and self._last_step_at is not None:
            gap = ev.at - self._last_step_at
            if gap > self.wait_after_s:
                seconds = round(gap, WAIT_DECIMALS)
                steps.insert(0, Step(steps[0].node, "wait", seconds=seconds))
        if steps:
            self._last_step_at = ev.at
        self.steps += steps
        if note:
            self.notes.append(f"[{ev.node}] {ev.vm} {ev.describe()}: {note}")
        return Entry(ev, tuple(steps), note)

    def finish(self) -> None:
        """Note the migrations of which only one half came (the other node not recorded)."""
        for vm, src in sorted(self._outgoing.items()):
            self.notes.append(f"[{src}] {vm} left by migration to a node not recorded: no step")
        for vm, (dst, _disks) in sorted(self._incoming.items()):
            self.notes.append(f"[{dst}] {vm} came by migration from a node not recorded: no step")
        self._outgoing.clear()
        self._incoming.clear()

    def scenario(self, nodes: int = 2) -> Scenario:
        used = dict.fromkeys(s.vm for s in self.steps if s.vm)  # in the order they come
        vms = {name: Vm(name, self.disks.get(name, ())) for name in used}
        return Scenario(LabNeeds(nodes=nodes), vms, tuple(self.steps))

    # Each handler: the steps an event makes and a note for people ("" when it is plain).
    def _learn(self, ev: Event) -> str:
        if ev.disks is None:
            return "" if ev.vm in self.disks else "its XML could not be read: no disks"
        known = self.disks.setdefault(ev.vm, ev.disks)
        return "" if known == ev.disks else "other disks than before: the file keeps the first"

    def _defined(self, ev: Event) -> tuple[list[Step], str]:
        if ev.detail == libvirt.VIR_DOMAIN_EVENT_DEFINED_UPDATED:
            return [], self._learn(ev)  # says so if its disks changed
        if ev.detail != libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED:
            return [], "not a step"
        if (ev.vm, ev.node) in self._state:  # made persistent where it runs (migration, create)
            return [], ""
        return [Step(ev.node, "define", ev.vm)], self._learn(ev)

    def _undefined(self, ev: Event) -> tuple[list[Step], str]:
        if ev.detail != libvirt.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED:
            return [], "not a step"
        self._managed.discard((ev.vm, ev.node))
        return [Step(ev.node, "undefine", ev.vm)], ""

    def _started(self, ev: Event) -> tuple[list[Step], str]:
        key = (ev.vm, ev.node)
        if ev.detail == libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED:
            self._state[key] = RUNNING
            if ev.vm in self._outgoing:  # the source's half came first
                return [self._migrate(ev.vm, self._outgoing.pop(ev.vm), ev.node, ev.disks)], ""
            self._incoming[ev.vm] = (ev.node, ev.disks)
            return [], ""
        if key in self._state:
            return [], ""  # a duplicate: it runs here already
        self._state[key] = RUNNING
        if ev.detail not in (
            libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED,
            libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED,
        ):
            return [], "not a step"
        if key in self._managed:  # virsh start resumes a managed save
            self._managed.discard(key)
            return [Step(ev.node, "start", ev.vm)], self._learn(ev) or "from its managed save"
        if ev.detail == libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED:
            return [Step(ev.node, "restore", ev.vm, file=f"{ev.vm}.save")], self._learn(ev)
        return [Step(ev.node, "start", ev.vm)], self._learn(ev)

    def _suspended(self, ev: Event) -> tuple[list[Step], str]:
        key = (ev.vm, ev.node)
        if ev.detail in (
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED,
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY,
        ):
            return [], ""  # a migration's
        if self._state.get(key) == PAUSED:
            return [], ""
        self._state[key] = PAUSED
        if ev.detail != libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED:
            return [], "libvirt paused it: not a step"
        return [Step(ev.node, "suspend", ev.vm)], ""

    def _resumed(self, ev: Event) -> tuple[list[Step], str]:
        key = (ev.vm, ev.node)
        was = self._state.get(key)
        if was is not None:
            self._state[key] = RUNNING
        if ev.detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT:
            return [], "not a step"
        if ev.detail != libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED:
            return [], ""  # a migration's
        if was != PAUSED:
            return [], ""  # a duplicate: it runs already
        return [Step(ev.node, "resume", ev.vm)], ""

    def _stopped(self, ev: Event) -> tuple[list[Step], str]:
        key, detail = (ev.vm, ev.node), ev.detail
        incoming = self._incoming.get(ev.vm)
        if incoming is not None and incoming[0] == ev.node:  # the destination gave up
            del self._incoming[ev.vm]
            self._state.pop(key, None)
            return [], "a migration here failed: not a step"
        was = self._state.pop(key, None)
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED:
            if incoming is not None:
                del self._incoming[ev.vm]
                return [self._migrate(ev.vm, ev.node, *incoming)], ""
            self._outgoing[ev.vm] = ev.node
            return [], ""
        if was is None:
            return [], ""  # it did not run here (a start that failed half way): nothing changed
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED:
            return [Step(ev.node, "destroy", ev.vm)], ""
        if detail in (
            libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
            libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
        ):
            return [Step(ev.node, "destroy", ev.vm)], "replayed as destroy"
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED:
            return [Step(ev.node, "kill-qemu", ev.vm)], "QEMU went away: replayed as kill-qemu"
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED and ev.managed:
            self._managed.add(key)
            return [Step(ev.node, "managedsave", ev.vm)], ""
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED:
            return [Step(ev.node, "save", ev.vm, file=f"{ev.vm}.save")], ""
        return [], "not a step"

    def _migrate(self, vm: str, src: str, dst: str, disks: tuple[DiskUse, ...] | None) -> Step:
        other = disks if disks is not None and disks != self.disks.get(vm, disks) else None
        return Step(src, "migrate", vm, to=dst, disks=other)
