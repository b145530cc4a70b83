"""The scenario file: its schema, in this one place, and the parser that checks it.

A scenario is what the kit runs, replays, records and shrinks (docs/scenarios.md):

    version: 1
    lab: {storage: nfs, lock_manager: dlm}
    vms:
      vm-1:
        disks: [{disk: one, mode: rw}, {disk: share, mode: shareable}]
      vm-2:
        disks: [{disk: one, mode: rw}]
    steps:
      - {on: node-a, do: start, vm: vm-1}
      - {on: node-a, do: migrate, vm: vm-1, to: node-b}
      - {on: node-a, do: start, vm: vm-2, expect: lock-manager, code: 87, holder: vm-1@node-b}
      - together:
          - {on: node-b, do: destroy, vm: vm-1}
          - {on: node-a, do: start, vm: vm-2, expect: any}

A bad file raises ScenarioError naming the file, the line and what is wrong; the command line
turns it into exit status 2 (lab.scenario.__main__). Files written by hand, by the recorder
and by a campaign are the same shape: ``dump`` writes what ``load`` reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ..nodes import NODE_NAMES

VERSION = 1
TOP_KEYS = ("version", "lab", "vms", "steps")
STORAGES = ("nfs", "block")
LOCK_MANAGERS = ("dlm", "nop")
MODES = ("rw", "ro", "shareable")
LOCKFAILURE = ("poweroff", "restart", "pause", "ignore")
DIRECTIONS = ("both", "inbound", "outbound")
# A thesis disk by its part in the tables, on the scenario's storage (lab.suite.matrix).
THESIS_DISKS = ("one", "two", "share")
# What a step may be expected to come to: ok, a refusing layer (lab.virt.refusal), or any.
ANY = "any"
EXPECTS = ("ok", "lock-manager", "qemu-image-lock", "lock-daemon-down", "other", ANY)
STEP_KEYS = ("on", "do", "expect", "code", "holder", "timeout")


@dataclass(frozen=True)
class Action:
    """An action a step may do: the arguments it needs and may take besides on/do/expect."""

    name: str
    summary: str
    needs: tuple[str, ...] = ()
    takes: tuple[str, ...] = ()
    fault: bool = False  # a fault the campaign injects (counted as such in its progress)


# Every action a step can do; lab.scenario.actions runs each, docs/scenarios.md lists them.
ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("define", "define the VM (persistent), do not start it", ("vm",)),
        Action("start", "define the VM from the file and start it", ("vm",)),
        Action("destroy", "stop the VM at once (virsh destroy)", ("vm",)),
        Action("undefine", "remove the VM's definition and managed save", ("vm",)),
        Action("suspend", "pause the VM (libvirt releases its locks)", ("vm",)),
        Action("resume", "resume a paused VM (libvirt acquires its locks again)", ("vm",)),
        Action("reset", "hard reset of the guest: the same QEMU goes on", ("vm",)),
        Action(
            "migrate",
            "live peer-to-peer migration to another node; `disks:` gives the destination "
            "XML's disks (default: the VM's own)",
            ("vm", "to"),
            ("disks",),
        ),
        Action("save", "save the VM's memory to a file on the share; it stops", ("vm",), ("file",)),
        Action("restore", "restore a VM saved with save", ("vm",), ("file",)),
        Action("managedsave", "libvirt's managed save; the next start resumes it", ("vm",)),
        Action("attach-disk", "hot-plug a disk into the running VM", ("vm", "disk")),
        Action("detach-disk", "hot-unplug a disk from the running VM", ("vm", "disk")),
        Action("kill-qemu", "kill -9 the VM's QEMU", ("vm",), fault=True),
        Action("kill-virtdlmd", "kill -9 virtdlmd; systemd's socket starts it again", fault=True),
        Action("stop-virtdlmd", "kill -9 virtdlmd and keep it down", fault=True),
        Action("start-virtdlmd", "start virtdlmd (it adopts the running VMs' locks)"),
        Action("restart-libvirtd", "systemctl restart libvirtd", fault=True),
        Action("power-off", "power the node off at once, from the host", fault=True),
        Action("power-on", "power the node on and wait until the cluster is whole again"),
        Action("cut", "cut the node's cluster link (nftables)", (), ("direction",), fault=True),
        Action("heal", "remove the node's cut"),
        Action("wait", "sleep", ("seconds",)),
    )
}


class ScenarioError(Exception):
    """A scenario file that cannot be run: file, line and what is wrong."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class DiskUse:
    """A disk as a VM uses it: a thesis disk on the scenario's storage (`disk: one`) or a
    path (`path:`: relative = a file on the NFS share or a partition `partN` of the shared
    block device; absolute = as it is), and how the VM opens it."""

    mode: str
    disk: str = ""
    path: str = ""

    def to_yaml(self) -> dict[str, str]:
        key = {"disk": self.disk} if self.disk else {"path": self.path}
        return {**key, "mode": self.mode}


@dataclass(frozen=True)
class Lease:
    lockspace: str
    key: str


@dataclass(frozen=True)
class Vm:
    name: str
    disks: tuple[DiskUse, ...]
    leases: tuple[Lease, ...] = ()
    on_lockfailure: str = ""

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"disks": [d.to_yaml() for d in self.disks]}
        if self.leases:
            out["leases"] = [{"lockspace": x.lockspace, "key": x.key} for x in self.leases]
        if self.on_lockfailure:
            out["on_lockfailure"] = self.on_lockfailure
        return out


@dataclass(frozen=True)
class Step:
    node: str
    do: str
    vm: str = ""
    to: str = ""
    disk: DiskUse | None = None  # attach-disk / detach-disk
    disks: tuple[DiskUse, ...] | None = None  # migrate: the destination XML's disks
    file: str = ""  # save / restore: a file name on the share (default <vm>.save)
    seconds: float = 0.0  # wait
    direction: str = "both"  # cut
    expect: str = "ok"
    code: int | None = None
    holder: str = ""  # "vm@node" a lock-manager refusal must name
    timeout: float | None = None  # this step's deadline in seconds (None: the action's)
    line: int = 0  # where the step is in its file (0: not from a file)

    @property
    def action(self) -> Action:
        return ACTIONS[self.do]

    def describe(self) -> str:
        what = " ".join(x for x in (self.do, self.vm) if x)
        if self.to:
            what += f" to {self.to}"
        if self.disk is not None:
            what += f" {self.disk.disk or self.disk.path}"
        if self.do == "wait":
            what += f" {self.seconds:g} s"
        if self.do == "cut" and self.direction != "both":
            what += f" {self.direction}"
        return f"[{self.node}] {what}"

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"on": self.node, "do": self.do}
        if self.vm:
            out["vm"] = self.vm
        if self.to:
            out["to"] = self.to
        if self.disk is not None:
            out["disk"] = self.disk.to_yaml()
        if self.disks is not None:
            out["disks"] = [d.to_yaml() for d in self.disks]
        if self.file:
            out["file"] = self.file
        if self.do == "wait":
            out["seconds"] = self.seconds
        if self.do == "cut" and self.direction != "both":
            out["direction"] = self.direction
        if self.expect != "ok":
            out["expect"] = self.expect
        if self.code is not None:
            out["code"] = self.code
        if self.holder:
            out["holder"] = self.holder
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


@dataclass(frozen=True)
class Together:
    """Steps started at once, each on its own thread: races written down."""

    steps: tuple[Step, ...]
    line: int = 0

    def describe(self) -> str:
        return "together: " + " | ".join(s.describe() for s in self.steps)

    def to_yaml(self) -> dict[str, Any]:
        return {"together": [s.to_yaml() for s in self.steps]}


Item = Step | Together


@dataclass(frozen=True)
class LabNeeds:
    storage: str = "nfs"
    lock_manager: str = "dlm"
    fencing: bool | None = None  # None: as the lab is set up
    nodes: int = 2

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"storage": self.storage, "lock_manager": self.lock_manager}
        if self.fencing is not None:
            out["fencing"] = self.fencing
        if self.nodes != 2:
            out["nodes"] = self.nodes
        return out


@dataclass(frozen=True)
class Scenario:
    lab: LabNeeds
    vms: dict[str, Vm]
    steps: tuple[Item, ...]
    source: str = "<scenario>"

    @property
    def nodes(self) -> tuple[str, ...]:
        return NODE_NAMES[: self.lab.nodes]

    def flat(self) -> Iterator[Step]:
        """Every step, a together group's in its order."""
        for item in self.steps:
            yield from item.steps if isinstance(item, Together) else (item,)

    def with_steps(self, steps: tuple[Item, ...] | list[Item]) -> Scenario:
        """This scenario with other steps, and only the VMs they use (for the shrinker)."""
        items = tuple(steps)
        used = {
            s.vm for item in items for s in (item.steps if isinstance(item, Together) else (item,))
        }
        vms = {name: vm for name, vm in self.vms.items() if name in used}
        return Scenario(self.lab, vms, items, self.source)

    def to_yaml(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "lab": self.lab.to_yaml(),
            "vms": {name: vm.to_yaml() for name, vm in self.vms.items()},
            "steps": [item.to_yaml() for item in self.steps],
        }


def dump(scenario: Scenario, header: str = "") -> str:
    """The scenario as a file: what `load` reads back (one flow-style line per step)."""
    data = scenario.to_yaml()
    head = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    lab = yaml.safe_dump({"version": data["version"], "lab": data["lab"]}, sort_keys=False)
    vms = yaml.safe_dump({"vms": data["vms"]}, sort_keys=False, default_flow_style=None, width=100)
    lines = ["steps:"] if data["steps"] else ["steps: []"]
    for item in data["steps"]:
        if "together" in item:
            lines.append("  - together:")
            lines += [f"      - {_flow(s)}" for s in item["together"]]
        else:
            lines.append(f"  - {_flow(item)}")
    return head + lab + vms + "\n".join(lines) + "\n"


def _flow(mapping: Mapping[str, Any]) -> str:
    # YAML 1.1 reads a bare `on` as true, so the dumper quotes it; this parser reads keys as
    # written, and people write `on:` bare, so the files do too.
    return _flow_text(mapping).replace("{'on': ", "{on: ", 1)


def _flow_text(mapping: Mapping[str, Any]) -> str:
    return yaml.safe_dump(
        dict(mapping), default_flow_style=True, width=10_000, sort_keys=False
    ).strip()


# -- the parser ---------------------------------------------------------------------------------


def load(path: str) -> Scenario:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ScenarioError(path, None, f"cannot read the file: {err.strerror}") from err
    return loads(text, path)


def loads(text: str, source: str = "<scenario>") -> Scenario:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise ScenarioError(source, line, f"not valid YAML: {problem}") from err
    return _Parser(source).scenario(root)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node | None, message: str) -> ScenarioError:
        line = node.start_mark.line + 1 if node is not None else None
        return ScenarioError(self.source, line, message)

    # Node readers: each checks the YAML type and says where it is wrong.
    def mapping(self, node: yaml.Node | None, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping (key: value)")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.fail(key, f"{what}: a key must be a plain name")
            if key.value in out:
                raise self.fail(key, f"{what}: {key.value!r} is given twice")
            out[key.value] = (key, value)
        return out

    def keys(
        self, items: dict[str, tuple[yaml.Node, yaml.Node]], allowed: tuple[str, ...], what: str
    ) -> None:
        for name, (key, _value) in items.items():
            if name not in allowed:
                raise self.fail(key, f"{what}: unknown key {name!r} (known: {', '.join(allowed)})")

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        return yaml.safe_load(yaml.serialize(node))

    def text(self, node: yaml.Node, what: str, choices: tuple[str, ...] = ()) -> str:
        value = self.scalar(node, what)
        if not isinstance(value, str) or not value:
            raise self.fail(node, f"{what} must be a non-empty string, not {value!r}")
        if choices and value not in choices:
            raise self.fail(node, f"{what}: {value!r} is not one of {', '.join(choices)}")
        return value

    def number(self, node: yaml.Node, what: str, integer: bool = False) -> float:
        value = self.scalar(node, what)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
            kind = "a whole number" if integer else "a number"
            raise self.fail(node, f"{what} must be {kind} >= 0, not {value!r}")
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool:
        value = self.scalar(node, what)
        if not isinstance(value, bool):
            raise self.fail(node, f"{what} must be true or false, not {value!r}")
        return value

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    # The document.
    def scenario(self, root: yaml.Node | None) -> Scenario:
        if root is None:
            raise ScenarioError(self.source, None, "the file is empty")
        top = self.mapping(root, "the scenario")
        self.keys(top, TOP_KEYS, "the scenario")
        for name in TOP_KEYS:
            if name not in top:
                raise self.fail(
                    root, f"the scenario has no {name!r} (it needs {', '.join(TOP_KEYS)})"
                )
        version_node = top["version"][1]
        if self.scalar(version_node, "version") != VERSION:
            raise self.fail(version_node, f"version must be {VERSION}")
        lab = self.lab(top["lab"][1])
        vms = self.vms(top["vms"][1])
        nodes = NODE_NAMES[: lab.nodes]
        steps = tuple(
            self.item(node, i + 1, nodes, vms)
            for i, node in enumerate(self.sequence(top["steps"][1], "steps"))
        )
        return Scenario(lab, vms, steps, self.source)

    def lab(self, node: yaml.Node) -> LabNeeds:
        items = self.mapping(node, "lab")
        self.keys(items, ("storage", "lock_manager", "fencing", "nodes"), "lab")
        values: dict[str, Any] = {}
        if "storage" in items:
            values["storage"] = self.text(items["storage"][1], "lab.storage", STORAGES)
        if "lock_manager" in items:
            values["lock_manager"] = self.text(
                items["lock_manager"][1], "lab.lock_manager", LOCK_MANAGERS
            )
        if "fencing" in items:
            values["fencing"] = self.boolean(items["fencing"][1], "lab.fencing")
        if "nodes" in items:
            count = int(self.number(items["nodes"][1], "lab.nodes", integer=True))
            if not 2 <= count <= len(NODE_NAMES):
                raise self.fail(items["nodes"][1], f"lab.nodes must be 2..{len(NODE_NAMES)}")
            values["nodes"] = count
        return LabNeeds(**values)

    def vms(self, node: yaml.Node) -> dict[str, Vm]:
        out = {}
        for name, (key, value) in self.mapping(node, "vms").items():
            if not _good_name(name):
                raise self.fail(key, f"VM name {name!r}: use letters, digits, '-', '_' or '.'")
            out[name] = self.vm(name, value)
        return out

    def vm(self, name: str, node: yaml.Node) -> Vm:
        what = f"VM {name}"
        items = self.mapping(node, what)
        self.keys(items, ("disks", "leases", "on_lockfailure"), what)
        if "disks" not in items:
            raise self.fail(node, f"{what} has no 'disks' (a list; [] for none)")
        disks = tuple(
            self.disk(d, f"{what}, disk {i + 1}")
            for i, d in enumerate(self.sequence(items["disks"][1], f"{what}: disks"))
        )
        leases = []
        if "leases" in items:
            for i, lease_node in enumerate(self.sequence(items["leases"][1], f"{what}: leases")):
                lw = f"{what}, lease {i + 1}"
                lease = self.mapping(lease_node, lw)
                self.keys(lease, ("lockspace", "key"), lw)
                for k in ("lockspace", "key"):
                    if k not in lease:
                        raise self.fail(lease_node, f"{lw} has no {k!r}")
                leases.append(
                    Lease(
                        self.text(lease["lockspace"][1], f"{lw}: lockspace"),
                        self.text(lease["key"][1], f"{lw}: key"),
                    )
                )
        lockfailure = ""
        if "on_lockfailure" in items:
            lockfailure = self.text(
                items["on_lockfailure"][1], f"{what}: on_lockfailure", LOCKFAILURE
            )
        return Vm(name, disks, tuple(leases), lockfailure)

    def disk(self, node: yaml.Node, what: str) -> DiskUse:
        items = self.mapping(node, what)
        self.keys(items, ("disk", "path", "mode"), what)
        if ("disk" in items) == ("path" in items):
            raise self.fail(
                node, f"{what}: give either 'disk' ({', '.join(THESIS_DISKS)}) or 'path'"
            )
        if "mode" not in items:
            raise self.fail(node, f"{what} has no 'mode' ({', '.join(MODES)})")
        mode = self.text(items["mode"][1], f"{what}: mode", MODES)
        if "disk" in items:
            return DiskUse(mode, disk=self.text(items["disk"][1], f"{what}: disk", THESIS_DISKS))
        path = self.text(items["path"][1], f"{what}: path")
        if ".." in path.split("/") or any(c.isspace() for c in path):
            raise self.fail(items["path"][1], f"{what}: path {path!r} may not hold '..' or spaces")
        return DiskUse(mode, path=path)

    def item(self, node: yaml.Node, index: int, nodes: tuple[str, ...], vms: dict[str, Vm]) -> Item:
        items = self.mapping(node, f"step {index}")
        if "together" in items:
            if len(items) != 1:
                raise self.fail(node, f"step {index}: 'together' stands alone in its step")
            group = self.sequence(items["together"][1], f"step {index}: together")
            if len(group) < 2:
                raise self.fail(node, f"step {index}: 'together' needs at least two steps")
            steps = tuple(
                self.step(s, f"step {index}.{j + 1}", nodes, vms) for j, s in enumerate(group)
            )
            return Together(steps, node.start_mark.line + 1)
        return self.step(node, f"step {index}", nodes, vms)

    def step(self, node: yaml.Node, what: str, nodes: tuple[str, ...], vms: dict[str, Vm]) -> Step:
        items = self.mapping(node, what)
        if "do" not in items:
            raise self.fail(node, f"{what} has no 'do' (one of: {', '.join(ACTIONS)})")
        do = self.text(items["do"][1], f"{what}: do")
        if do not in ACTIONS:
            raise self.fail(
                items["do"][1], f"{what}: unknown action {do!r} (known: {', '.join(ACTIONS)})"
            )
        action = ACTIONS[do]
        allowed = STEP_KEYS + action.needs + action.takes
        self.keys(items, allowed, f"{what} ({do})")
        if "on" not in items:
            raise self.fail(node, f"{what} has no 'on' (a node: {', '.join(nodes)})")
        for need in action.needs:
            if need not in items:
                raise self.fail(node, f"{what}: {do} needs {need!r}")
        on_node = self.text(items["on"][1], f"{what}: on")
        if on_node not in nodes:
            raise self.fail(
                items["on"][1], f"{what}: node {on_node!r} is not in this lab ({', '.join(nodes)})"
            )
        values: dict[str, Any] = {"node": on_node, "do": do, "line": node.start_mark.line + 1}
        if "vm" in items:
            vm = self.text(items["vm"][1], f"{what}: vm")
            if vm not in vms:
                raise self.fail(items["vm"][1], f"{what}: VM {vm!r} is not declared under vms")
            values["vm"] = vm
        if "to" in items:
            to = self.text(items["to"][1], f"{what}: to")
            if to not in nodes or to == on_node:
                raise self.fail(
                    items["to"][1], f"{what}: 'to' must be another node of this lab, not {to!r}"
                )
            values["to"] = to
        if "disk" in items:
            values["disk"] = self.disk(items["disk"][1], f"{what}: disk")
        if "disks" in items:
            values["disks"] = tuple(
                self.disk(d, f"{what}: disks {i + 1}")
                for i, d in enumerate(self.sequence(items["disks"][1], f"{what}: disks"))
            )
        if "file" in items:
            file = self.text(items["file"][1], f"{what}: file")
            if "/" in file:
                raise self.fail(
                    items["file"][1], f"{what}: file is a name on the share, not a path"
                )
            values["file"] = file
        if "seconds" in items:
            values["seconds"] = float(self.number(items["seconds"][1], f"{what}: seconds"))
        if "direction" in items:
            values["direction"] = self.text(items["direction"][1], f"{what}: direction", DIRECTIONS)
        if "expect" in items:
            values["expect"] = self.text(items["expect"][1], f"{what}: expect", EXPECTS)
        if "code" in items:
            values["code"] = int(self.number(items["code"][1], f"{what}: code", integer=True))
        if "holder" in items:
            holder = self.text(items["holder"][1], f"{what}: holder")
            if holder.count("@") != 1:
                raise self.fail(items["holder"][1], f"{what}: holder is 'vm@node', not {holder!r}")
            values["holder"] = holder
        if "timeout" in items:
            values["timeout"] = float(self.number(items["timeout"][1], f"{what}: timeout"))
        if values.get("expect") in ("ok", ANY, None) and ("code" in values or "holder" in values):
            raise self.fail(
                node, f"{what}: 'code' and 'holder' belong to a refusal (expect: a layer)"
            )
        return Step(**values)


def _good_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)


def resolve_path(disk: DiskUse, storage: str, mount_point: str, shared_disk: str) -> str:
    """The path a node opens for this disk use (see DiskUse)."""
    from ..suite.matrix import BLOCK, nfs_storage  # the thesis disks' one home

    if disk.disk:
        store = BLOCK if storage == "block" else nfs_storage(mount_point)
        return store.path(disk.disk)
    if os.path.isabs(disk.path):
        return disk.path
    if disk.path.startswith("part") and disk.path[4:].isdigit():
        return f"{shared_disk}-{disk.path}"
    return f"{mount_point.rstrip('/')}/{disk.path}"
