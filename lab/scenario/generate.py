"""Seeded random scenarios for a fault campaign: a weighted grammar over a few VMs that fight
over a few disks, on the NFS share and on the shared block device.

The same seed gives the same scenario (one ``random.Random(seed)``, never the global one), so
a campaign's finding is named by its seed until the shrinker (lab.scenario.shrink) makes it
small. Each step is drawn from the moves that make sense in a simple model of the lab (which
VM runs or is paused or saved where, which node is off or cut, where virtdlmd is kept down):
start a stopped VM, migrate or suspend a running one, restore a saved one on any node, kill
QEMU or virtdlmd, and now and then start a VM whose disk another node's VM writes, or two
such starts at once. The model is a guess, not a prediction: a distributed run does not
repeat itself, so every step expects ``any`` and the audits judge what really happened.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..nodes import NODE_NAMES
from .schema import (
    ANY,
    DIRECTIONS,
    LOCK_MANAGERS,
    DiskUse,
    Item,
    LabNeeds,
    Scenario,
    Step,
    Together,
    Vm,
)

# The VMs a campaign draws from. c1 and c2 both want the NFS file one.qcow2 read-write; c3
# and c4 both want partition 1 of the shared block device read-write; c2 reads two.qcow2,
# which c3 writes (a conflict across the two storages); c1 and c4 share share.raw and c3 and
# c4 share part2, which must never be refused. These are the only disks the lab has.
VMS: dict[str, Vm] = {
    vm.name: vm
    for vm in (
        Vm("c1", (DiskUse("rw", path="one.qcow2"), DiskUse("shareable", path="share.raw"))),
        Vm("c2", (DiskUse("rw", path="one.qcow2"), DiskUse("ro", path="two.qcow2"))),
        Vm(
            "c3",
            (
                DiskUse("rw", path="part1"),
                DiskUse("rw", path="two.qcow2"),
                DiskUse("shareable", path="part2"),
            ),
        ),
        Vm(
            "c4",
            (
                DiskUse("rw", path="part1"),
                DiskUse("shareable", path="share.raw"),
                DiskUse("shareable", path="part2"),
            ),
        ),
    )
}

# How often each move is drawn, relative to the others, among the moves the model allows at
# that point (a move with nothing to act on is not drawn). Starts dominate so that disks are
# held most of the time and the faults meet locks to lose or adopt. "start-conflict" starts a
# stopped VM on a node other than the one where a running VM writes its disk: a refusal is
# what should happen, and it is the point. "together" races two steps on two nodes: a start,
# stop, migration, suspension or save of one VM and the start of a VM that fights it for a
# disk. The heavy faults and their recoveries are drawn only with heavy=True: each takes
# minutes in the lab.
WEIGHTS: dict[str, int] = {
    "start": 12,
    "start-conflict": 5,
    "together": 2,
    "migrate": 6,
    "destroy": 5,
    "suspend": 3,
    "resume": 3,
    "save": 2,
    "restore": 3,
    "reset": 1,
    "kill-qemu": 2,
    "kill-virtdlmd": 2,
    "restart-libvirtd": 1,
    "power-off": 1,
    "cut": 1,
    "stop-virtdlmd": 1,
    "power-on": 3,
    "heal": 3,
    "start-virtdlmd": 3,
}
# Each heavy fault and the recovery it owes: the same node, later in the same scenario.
HEAVY: dict[str, str] = {"power-off": "power-on", "cut": "heal", "stop-virtdlmd": "start-virtdlmd"}
RECOVERIES = tuple(HEAVY.values())
# The first step of a race: it takes or lets go of the disks the second step's VM wants.
RACERS = ("start", "destroy", "migrate", "suspend", "save", "kill-qemu")
RUNNING, PAUSED, SAVED = "running", "paused", "saved"  # a VM not in the model's map is off


def conflicting(a: Vm, b: Vm) -> bool:
    """Whether two VMs cannot both run: a disk they both use that one of them writes."""
    return any(
        x.path == y.path and x.disk == y.disk and "rw" in (x.mode, y.mode)
        for x in a.disks
        for y in b.disks
    )


def _step(
    node: str, do: str, vm: str = "", to: str = "", file: str = "", direction: str = "both"
) -> Step:
    return Step(node, do, vm, to=to, file=file, direction=direction, expect=ANY)


@dataclass
class _Model:
    """What the lab is thought to be after the steps so far. A step that should be refused
    (a disk another VM holds, virtdlmd down) is assumed refused, a race is assumed to go in
    the order its steps are written, and a lost node's VMs are assumed gone."""

    nodes: tuple[str, ...]
    vms: dict[str, Vm]
    state: dict[str, str] = field(default_factory=dict)  # vm -> RUNNING | PAUSED | SAVED
    where: dict[str, str] = field(default_factory=dict)  # vm -> the node it runs or waits on
    off: set[str] = field(default_factory=set)
    cut: set[str] = field(default_factory=set)
    daemon_down: set[str] = field(default_factory=set)

    def up(self) -> list[str]:
        return [n for n in self.nodes if n not in self.off | self.cut]

    def in_state(self, *states: str) -> list[str]:
        return [vm for vm in self.vms if self.state.get(vm, "") in states]

    def stopped(self) -> list[str]:
        return [vm for vm in self.vms if self.state.get(vm) in (None, SAVED)]

    def holders(self, vm: str) -> list[str]:
        """The running VMs that hold a disk this VM needs (a paused VM has let go of its
        locks)."""
        return [
            other
            for other in self.in_state(RUNNING)
            if other != vm and conflicting(self.vms[vm], self.vms[other])
        ]

    def can_acquire(self, vm: str, node: str) -> bool:
        return node not in self.daemon_down and not self.holders(vm)

    def pending(self) -> int:
        """How many recoveries the heavy faults so far still owe."""
        return len(self.off) + len(self.cut) + len(self.daemon_down)

    def lose(self, node: str) -> None:
        for vm in [vm for vm, n in self.where.items() if n == node]:
            self.stop(vm)

    def stop(self, vm: str, state: str = "") -> None:
        self.where.pop(vm, None)
        if state:
            self.state[vm] = state
        else:
            self.state.pop(vm, None)

    def run(self, vm: str, node: str) -> None:
        self.state[vm], self.where[vm] = RUNNING, node

    def apply(self, step: Step) -> None:
        do, vm, node = step.do, step.vm, step.node
        if do in ("start", "restore", "resume") and self.can_acquire(vm, node):
            self.run(vm, node)
        elif do == "migrate" and step.to not in self.daemon_down:
            self.run(vm, step.to)
        elif do in ("destroy", "kill-qemu"):
            self.stop(vm)
        elif do == "save":
            self.stop(vm, SAVED)
        elif do == "suspend":
            self.state[vm] = PAUSED
        elif do in ("power-off", "cut"):
            (self.off if do == "power-off" else self.cut).add(node)
            self.lose(node)
        elif do in ("power-on", "heal"):
            (self.off if do == "power-on" else self.cut).discard(node)
        elif do == "stop-virtdlmd":
            self.daemon_down.add(node)
        elif do == "start-virtdlmd":
            self.daemon_down.discard(node)

    def apply_item(self, item: Item) -> None:
        for step in item.steps if isinstance(item, Together) else (item,):
            self.apply(step)


# -- the moves: every item each could add now ---------------------------------------------------


def _start(m: _Model) -> list[Item]:
    return [_step(n, "start", vm) for vm in m.stopped() if not m.holders(vm) for n in m.up()]


def _start_conflict(m: _Model) -> list[Item]:
    out: list[Item] = []
    for vm in m.stopped():
        held_on = {m.where[h] for h in m.holders(vm)}
        out += [_step(n, "start", vm) for n in m.up() if held_on - {n}]
    return out


def _on_vms(do: str, *states: str) -> Callable[[_Model], list[Item]]:
    def move(m: _Model) -> list[Item]:
        return [
            _step(m.where[vm], do, vm, file=f"{vm}.save" if do == "save" else "")
            for vm in m.in_state(*states)
        ]

    return move


def _migrate(m: _Model) -> list[Item]:
    return [
        _step(m.where[vm], "migrate", vm, to=to)
        for vm in m.in_state(RUNNING)
        for to in m.up()
        if to != m.where[vm]
    ]


def _restore(m: _Model) -> list[Item]:
    return [_step(n, "restore", vm, file=f"{vm}.save") for vm in m.in_state(SAVED) for n in m.up()]


def _on_nodes(do: str, daemon_up: bool = False) -> Callable[[_Model], list[Item]]:
    def move(m: _Model) -> list[Item]:
        return [_step(n, do) for n in m.up() if not (daemon_up and n in m.daemon_down)]

    return move


def _together(m: _Model) -> list[Item]:
    out: list[Item] = []
    for first in (s for name in RACERS for s in MOVES[name](m)):
        assert isinstance(first, Step)  # the racers' moves give single steps
        rivals = [
            vm for vm in m.stopped() if vm != first.vm and conflicting(m.vms[vm], m.vms[first.vm])
        ]
        out += [
            Together((first, _step(n, "start", vm)))
            for vm in rivals
            for n in m.up()
            if n != first.node
        ]
    return out


def _lose_node(do: str) -> Callable[[_Model], list[Item]]:
    """Power off or cut one node whose virtdlmd runs, while every node is whole: the lab
    keeps quorum only while one node at most is lost."""

    def move(m: _Model) -> list[Item]:
        if m.off or m.cut:
            return []
        nodes = [n for n in m.up() if n not in m.daemon_down]
        if do == "cut":
            return [_step(n, do, direction=d) for n in nodes for d in DIRECTIONS]
        return [_step(n, do) for n in nodes]

    return move


MOVES: dict[str, Callable[[_Model], list[Item]]] = {
    "start": _start,
    "start-conflict": _start_conflict,
    "together": _together,
    "migrate": _migrate,
    "destroy": _on_vms("destroy", RUNNING, PAUSED),
    "suspend": _on_vms("suspend", RUNNING),
    "resume": _on_vms("resume", PAUSED),
    "save": _on_vms("save", RUNNING, PAUSED),
    "restore": _restore,
    "reset": _on_vms("reset", RUNNING),
    "kill-qemu": _on_vms("kill-qemu", RUNNING),
    "kill-virtdlmd": _on_nodes("kill-virtdlmd", daemon_up=True),
    "restart-libvirtd": _on_nodes("restart-libvirtd"),
    "power-off": _lose_node("power-off"),
    "cut": _lose_node("cut"),
    "stop-virtdlmd": _on_nodes("stop-virtdlmd", daemon_up=True),
    "power-on": lambda m: [_step(n, "power-on") for n in m.nodes if n in m.off],
    "heal": lambda m: [_step(n, "heal") for n in m.nodes if n in m.cut],
    "start-virtdlmd": lambda m: [_step(n, "start-virtdlmd") for n in m.nodes if n in m.daemon_down],
}


def allowed_moves(pending: int, left: int, heavy: bool) -> list[str]:
    """The moves that may be drawn with `left` items to go, `pending` of them owed to
    recoveries: only recoveries once the rest is owed, and a heavy fault only while there is
    room for it and its recovery."""
    if left <= pending:
        return list(RECOVERIES)
    light = [name for name in WEIGHTS if name not in HEAVY and name not in RECOVERIES]
    if not heavy:
        return light
    faults = list(HEAVY) if left >= pending + 2 else []
    return light + list(RECOVERIES) + faults


def _draw(rng: random.Random, m: _Model, names: list[str]) -> Item:
    # restart-libvirtd (or, when only recoveries are allowed, a recovery) always has a node.
    options = [(name, items) for name in names if (items := MOVES[name](m))]
    weights = [WEIGHTS[name] for name, _ in options]
    _name, items = rng.choices(options, weights=weights)[0]
    return rng.choice(items)


def generate(
    seed: int,
    steps: int,
    lock_manager: str = "dlm",
    nodes: tuple[str, ...] = NODE_NAMES[:2],
    heavy: bool = False,
) -> Scenario:
    """A scenario of `steps` items (a together group counts once) drawn from WEIGHTS with
    random.Random(seed). With heavy=True it also powers nodes off, cuts them and keeps
    virtdlmd down, each undone later on the same node, and it ends with every node on, whole
    and running virtdlmd, so the next scenario starts from a lab like the one before."""
    if steps < 0:
        raise ValueError(f"a campaign needs a number of steps >= 0, not {steps}")
    if lock_manager not in LOCK_MANAGERS:
        raise ValueError(f"lock manager {lock_manager!r} is not one of {', '.join(LOCK_MANAGERS)}")
    if len(nodes) < 2 or nodes != NODE_NAMES[: len(nodes)]:
        raise ValueError(f"nodes {nodes} are not the lab's first nodes ({', '.join(NODE_NAMES)})")
    rng = random.Random(seed)
    model = _Model(nodes, VMS)
    items: list[Item] = []
    for left in range(steps, 0, -1):
        item = _draw(rng, model, allowed_moves(model.pending(), left, heavy))
        model.apply_item(item)
        items.append(item)
    lab = LabNeeds(storage="nfs", lock_manager=lock_manager, nodes=len(nodes))
    source = f"<campaign seed {seed}, {steps} steps>"
    return Scenario(lab, dict(VMS), (), source).with_steps(items)
