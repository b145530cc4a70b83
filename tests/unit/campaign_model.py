"""The pure model of the model-level campaign (test_model_campaign.py): which owner holds
which disk in which mode, what an acquire must get (granted, or refused naming a holder the
daemon can know), and which disks have two writers. No processes, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from virtdlm.errors import Holder

from .procs import FakeQemu

Want = tuple[str, str]  # (disk, mode): mode EX, PR, or RO (a readonly disk: no lock)


@dataclass(eq=False)
class Vm:
    """An owner as the model sees it: its node, whether its QEMU runs, what it holds (after
    its QEMU died while its daemon was down: orphans, until that daemon starts again)."""

    name: str
    node: str
    qemu: FakeQemu | None = None
    alive: bool = True
    held: dict[str, str] = field(default_factory=dict)  # disk -> EX or PR

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Refusal:
    disk: str
    holders: frozenset[Holder | None]  # the daemon may name any one of these


def refusal(vm: Vm, wants: Sequence[Want], vms: Iterable[Vm]) -> Refusal | None:
    """The refusal `vm` must get asking for `wants` (None: granted, all of them).

    Wants are taken in order; the first that conflicts is refused. The daemon names a holder
    on its own node if there is one (any: each conflicts); else a new lock reads the lock
    value block, which names the other node's EX holder, or nobody ("", "", PR) when only
    shared holders are there; a refused convert (PR to EX) names nobody (None).
    """
    for name, mode in wants:
        held = vm.held.get(name)
        if mode == "RO" or held == mode:
            continue
        others = [o for o in vms if o is not vm and name in o.held]
        if not any(mode == "EX" or o.held[name] == "EX" for o in others):
            continue
        local = {Holder(o.name, o.node, o.held[name]) for o in others if o.node == vm.node}
        if local:
            return Refusal(name, frozenset(local))
        if held is not None:
            return Refusal(name, frozenset({None}))
        writers = {Holder(o.name, o.node, "EX") for o in others if o.held[name] == "EX"}
        return Refusal(name, frozenset(writers or {Holder("", "", "PR")}))
    return None


def grant(vm: Vm, wants: Sequence[Want]) -> None:
    vm.held.update((name, mode) for name, mode in wants if mode != "RO")


def one_after_another(asks: Sequence[tuple[Vm, list[Want]]], vms: list[Vm]) -> list[Refusal | None]:
    """What each ask gets (a Refusal, or None: granted) when they come in this order; the
    model is left as it was."""
    saved = [dict(vm.held) for vm in vms]
    try:
        out: list[Refusal | None] = []
        for vm, wants in asks:
            out.append(refusal(vm, wants, vms))
            if out[-1] is None:
                grant(vm, wants)
        return out
    finally:
        for vm, held in zip(vms, saved, strict=True):
            vm.held = held


def holders_of(vms: Iterable[Vm]) -> dict[str, list[tuple[str, str, str]]]:
    """disk -> (node, domain, mode) of every lock the model says is granted."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for vm in vms:
        for name, mode in vm.held.items():
            out.setdefault(name, []).append((vm.node, vm.name, mode))
    return out


def writer_conflicts(by_disk: dict[str, list[tuple[str, str, str]]]) -> dict[str, Any]:
    """The disks with two writers, or a writer beside anyone else."""
    return {
        name: holders
        for name, holders in by_disk.items()
        if any(mode == "EX" for _n, _d, mode in holders) and len(holders) > 1
    }
