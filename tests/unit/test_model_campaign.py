"""The fast tier's campaign (issue 14, point 8): two virtdlmd on one model server as node-a
and node-b, driven by hypothesis's stateful testing against a pure model of who holds what.

Rules: start a VM on a node (a fake QEMU, tests/unit/fake_qemu.py, registers and one or two
disks are acquired for it, each exclusively (EX), shared (PR) or readonly (no lock); a refused
QEMU is killed, as libvirt does); start a VM on each node at the same moment for one disk;
acquire more for a running owner; release some or all; kill -9 an owner; stop a daemon
(kill -9 or SIGTERM) and start it again. A request to a stopped daemon must fail to connect;
a killed owner's locks must be gone within RELEASE_DEADLINE_S while its daemon runs (and it
is refused any more), and stay held as orphans while its daemon is down; a start adopts the
locks of owners still running and purges the rest (docs/protocol.md, README "How it works").
A refused acquire must be BUSY on the disk the model says, naming a holder the daemon can
know (``refusal``). After every rule the audits (AUDITS) run over what the running daemons
report (`locks`): it is what the model says; never two writers of a disk, nor a writer
beside a reader; every lock's owner runs; the daemons run when they should; no ERROR or
Traceback in their logs.

A failure prints the shrunk program (``state = ModelCampaign()`` and one line per rule: plain
Python over this module, which runs again as it is) and a ``@reproduce_failure(...)`` line:
put that decorator on ModelCampaign to run the same example again under pytest. Only a
failure of start_together may not come again (it depends on who wins): hypothesis then calls
it flaky and shows the assertion, with both asks and replies; run that rule in a loop.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine as conjecture_engine
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lab.wait import wait_for
from virtdlm.client import REPLY_TIMEOUT_S
from virtdlm.errors import DaemonUnavailable, Holder

from .campaign_model import (
    Refusal,
    Vm,
    Want,
    grant,
    holders_of,
    one_after_another,
    refusal,
    writer_conflicts,
)
from .conftest import disk
from .procs import DaemonProc, FakeQemu, ModelCluster

NODES = ("node-a", "node-b")  # DaemonProc.on_model's names for nodes 1 and 2
DISKS = ("one.qcow2", "two.qcow2", "share.raw")
MODES = ("EX", "PR", "RO")  # RO: a readonly disk, which takes no lock
RELEASE_DEADLINE_S = 1.0  # README: a QEMU's locks are released within a second of its exit
MAX_LIVE_OWNERS = 4
# A race's loser may ask in the moment between the winner's grant and its publishing itself
# in the lock value block: the empty LVB names nobody, and the daemon guesses the mode from
# what it asked for. The guess is right for a PR ask (the holder is EX); for an EX ask it
# says PR though the winner is EX: a wrong refusal message (reported; not a second writer).
UNPUBLISHED = {"PR": Holder("", "", "EX"), "EX": Holder("", "", "PR")}
RACE_START_TIMEOUT_S = 5.0  # both askers must be ready to send within this
CAMPAIGN = settings(max_examples=12, stateful_step_count=25, deadline=None, print_blob=True)
SHRINK_LIMIT_S = 60  # hypothesis shrinks a failure this long at most, then prints it
CAMPAIGN_TIMEOUT_S = 300  # pytest-timeout: the campaign, a shrink and the final replay

WANTS = st.lists(
    st.tuples(st.sampled_from(DISKS), st.sampled_from(MODES)),
    min_size=1,
    max_size=2,
    unique_by=lambda want: want[0],
)


# Who holds what in the table below: vm-1 and vm-2 on node-a, vm-3 on node-b.
HELD = {
    "vm-1": {"share.raw": "PR"},
    "vm-2": {"one.qcow2": "PR"},
    "vm-3": {"two.qcow2": "EX", "share.raw": "PR"},
}


@pytest.mark.parametrize(
    ("asker", "wants", "expected"),
    [
        pytest.param("vm-1", [("one.qcow2", "PR")], None, id="shared-beside-shared"),
        pytest.param("vm-1", [("two.qcow2", "RO")], None, id="readonly-takes-no-lock"),
        pytest.param(
            "vm-1",
            [("one.qcow2", "EX")],
            Refusal("one.qcow2", frozenset({Holder("vm-2", "node-a", "PR")})),
            id="holder-on-the-same-node-named",
        ),
        pytest.param(
            "vm-1",
            [("one.qcow2", "PR"), ("two.qcow2", "PR")],
            Refusal("two.qcow2", frozenset({Holder("vm-3", "node-b", "EX")})),
            id="writer-on-the-other-node-named-from-the-lvb",
        ),
        pytest.param(
            "vm-3",
            [("one.qcow2", "EX")],
            Refusal("one.qcow2", frozenset({Holder("", "", "PR")})),
            id="readers-on-the-other-node-unnamed",
        ),
        pytest.param(
            "vm-1",
            [("share.raw", "EX")],
            Refusal("share.raw", frozenset({None})),
            id="convert-refused-by-the-other-node-names-nobody",
        ),
    ],
)
def test_the_model_names_the_holder_the_daemon_can_know(
    asker: str, wants: list[Want], expected: Refusal | None
) -> None:
    vms = {name: Vm(name, "node-b" if name == "vm-3" else "node-a") for name in HELD}
    for name, held in HELD.items():
        vms[name].held = dict(held)
    assert refusal(vms[asker], wants, vms.values()) == expected


# -- audits, after every rule ------------------------------------------------------------------


@dataclass
class Seen:
    """What the daemons that run reported after a rule, beside the model."""

    locks: dict[str, list[dict[str, Any]]]  # node -> its `locks`, for the nodes that run
    vms: list[Vm]
    cluster: ModelCluster
    paths: dict[str, str]  # disk -> its path
    up: dict[str, bool]


def audit_daemons_run(seen: Seen) -> None:
    for node, daemon in seen.cluster.daemons.items():
        running = daemon.proc is not None and daemon.proc.poll() is None
        assert running == seen.up[node], f"virtdlmd of {node}: running {running}, up {seen.up}"


def audit_one_writer(seen: Seen) -> None:
    """Never two writers of a disk, nor a writer beside a reader, across both nodes: what the
    running daemons report, and the orphans the model says a stopped one left behind."""
    reported: dict[str, list[tuple[str, str, str]]] = {}
    for node, locks in seen.locks.items():
        for lk in locks:
            reported.setdefault(os.path.basename(lk["path"]), []).append(
                (node, lk["domain"], lk["mode"])
            )
    orphans = holders_of(vm for vm in seen.vms if not seen.up[vm.node])
    for name, holders in orphans.items():
        reported.setdefault(name, []).extend(holders)
    assert not writer_conflicts(reported), f"two writers: {writer_conflicts(reported)}"
    assert not writer_conflicts(holders_of(seen.vms)), "the model itself grants two writers"


def audit_live_owners(seen: Seen) -> None:
    live = {(vm.qemu.uuid, vm.qemu.pid): vm for vm in seen.vms if vm.alive and vm.qemu}
    for node, locks in seen.locks.items():
        for lk in locks:
            vm = live.get((lk["uuid"], lk["pid"]))
            assert vm is not None, f"{node} reports a lock of an owner that is gone: {lk}"
            assert vm.qemu is not None and vm.qemu.proc.poll() is None, f"{vm} exited: {lk}"


def audit_model(seen: Seen) -> None:
    for node, locks in seen.locks.items():
        assert {lk["node"] for lk in locks} <= {node}, locks
        got = {(lk["domain"], lk["path"], lk["mode"]) for lk in locks}
        want = {
            (vm.name, seen.paths[name], mode)
            for vm in seen.vms
            if vm.node == node and vm.alive
            for name, mode in vm.held.items()
        }
        assert got == want, f"{node} holds {sorted(got - want)} beyond the model, lacks " + (
            f"{sorted(want - got)}; model: {[(vm, vm.node, vm.alive, vm.held) for vm in seen.vms]}"
        )


def audit_logs(seen: Seen) -> None:
    cluster = seen.cluster
    logs = {path: text for d in cluster.daemons.values() for path, text in d.logs().items()}
    assert cluster.server is not None
    with open(os.path.join(cluster.directory, "model.log"), encoding="utf-8") as f:
        logs["model.log"] = f.read()
    for path, text in logs.items():
        bad = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
        assert not bad, f"{path}: {bad}"


AUDITS: tuple[Callable[[Seen], None], ...] = (
    audit_daemons_run,
    audit_one_writer,
    audit_live_owners,
    audit_model,
    audit_logs,
)


# -- the state machine ------------------------------------------------------------------------


class ModelCampaign(RuleBasedStateMachine):
    owners = Bundle("owners")

    def __init__(self) -> None:
        super().__init__()
        self._cluster: ModelCluster | None = None  # started by the first rule that needs it
        self.directory = ""
        self.paths: dict[str, str] = {}  # disk -> its path
        self.up = dict.fromkeys(NODES, True)
        self.vms: list[Vm] = []

    @property
    def cluster(self) -> ModelCluster:
        """The example's processes, started on first use: swarm testing gives up on some
        examples before their first rule, and those start nothing."""
        if self._cluster is None:
            self.directory = tempfile.mkdtemp(prefix="vdl-")  # short: unix socket paths
            _OPEN.add(self)
            self.paths = {name: os.path.join(self.directory, name) for name in DISKS}
            for path in self.paths.values():
                open(path, "wb").close()
            self._cluster = ModelCluster.start(self.directory)
            assert tuple(self._cluster.daemons) == NODES, self._cluster.daemons
        return self._cluster

    def teardown(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        _OPEN.discard(self)

    def _daemon(self, vm: Vm) -> DaemonProc:
        return self.cluster.daemons[vm.node]

    def _specs(self, wants: Sequence[Want]) -> list[Any]:
        return [
            disk(self.paths[name], readonly=mode == "RO", shared=mode == "PR")
            for name, mode in wants
        ]

    def _qemu(self, vm: Vm) -> FakeQemu:
        assert vm.qemu is not None
        return vm.qemu

    @precondition(lambda self: sum(vm.alive for vm in self.vms) < MAX_LIVE_OWNERS)
    @rule(target=owners, node=st.sampled_from(NODES), wants=WANTS)
    def start_vm(self, node: str, wants: list[Want]) -> Any:
        """What libvirt does to start a domain: a QEMU registers, its disks are acquired, and
        a refused QEMU is killed."""
        name = f"vm-{len(self.vms) + 1}"
        if not self.up[node]:
            with pytest.raises(AssertionError, match="virtdlmd is not running"):
                self.cluster.start_qemu(node, name)
            return multiple()
        vm = Vm(name, node, self.cluster.start_qemu(node, name))
        self.vms.append(vm)
        if self._acquire(vm, wants):
            return vm
        self._qemu(vm).kill()
        vm.alive = False
        return multiple()

    @rule(vm=owners, wants=WANTS)
    def acquire(self, vm: Vm, wants: list[Want]) -> None:
        """More disks, or other modes, for a running owner (a hot-plug, a re-acquire)."""
        self._acquire(vm, wants)

    def _acquire(self, vm: Vm, wants: list[Want]) -> bool:
        """Ask vm's daemon for `wants`; whether they were granted, as the model expects."""
        request = self._qemu(vm).acquire_request(self._specs(wants))
        if not self.up[vm.node]:
            with pytest.raises(DaemonUnavailable, match="virtdlmd is not running"):
                self._daemon(vm).send(request)
            return False
        expected = refusal(vm, wants, self.vms)
        reply = self._daemon(vm).send(request)
        if expected is None:
            assert reply["ok"], f"{vm} on {vm.node} refused {wants}: {reply}"
            grant(vm, wants)
            return True
        self._check_refusal(reply, expected)
        return False

    def _check_refusal(
        self, reply: dict[str, Any], expected: Refusal, also: Holder | None = None
    ) -> None:
        """BUSY, on the disk the model says, naming one of the holders it allows (or `also`)."""
        path = self.paths[expected.disk]
        assert (reply["ok"], reply.get("code"), reply.get("error")) == (False, 6, "BUSY"), reply
        assert reply["resource"] == path, (expected, reply)
        got = Holder(**reply["holder"]) if "holder" in reply else None
        assert got in expected.holders or (also and got == also), (expected, reply)
        named = "by another owner" if got is None else f"by {got.domain or 'an unknown'}"
        assert reply["message"].startswith(f"disk {path} is locked "), reply
        assert named in reply["message"], (named, reply)

    @precondition(
        lambda self: (
            all(self.up.values())
            and sum(vm.alive for vm in self.vms) + len(NODES) <= MAX_LIVE_OWNERS
        )
    )
    @rule(
        name=st.sampled_from(DISKS),
        modes=st.tuples(st.sampled_from(("EX", "PR")), st.sampled_from(("EX", "PR"))),
    )
    def start_together(self, name: str, modes: tuple[str, str]) -> None:
        """A VM starts on each node at the same moment, both asking for one disk: what they
        get must be what they would get one after the other, in some order. Both are killed
        then, so that who won changes nothing later and a failure after it replays alike."""
        asks = []
        for node, mode in zip(NODES, modes, strict=True):
            vm = Vm(f"vm-{len(self.vms) + 1}", node)
            vm.qemu = self.cluster.start_qemu(node, vm.name)
            self.vms.append(vm)
            asks.append((vm, [(name, mode)]))
        start = threading.Barrier(len(asks), timeout=RACE_START_TIMEOUT_S)
        with ThreadPoolExecutor(len(asks)) as pool:
            sent = [pool.submit(self._send_at, start, vm, wants) for vm, wants in asks]
            replies = [f.result(RACE_START_TIMEOUT_S + REPLY_TIMEOUT_S) for f in sent]
        granted = [bool(reply["ok"]) for reply in replies]
        in_order = one_after_another(asks, self.vms)
        reversed_ = one_after_another(asks[::-1], self.vms)[::-1]
        fits = [out for out in (in_order, reversed_) if [r is None for r in out] == granted]
        assert fits, f"{asks} at once got {replies}: neither order of the two gives that"
        for i, (vm, wants) in enumerate(asks):
            if granted[i]:
                grant(vm, wants)
                continue
            allowed = frozenset(h for out in fits if (r := out[i]) is not None for h in r.holders)
            try:
                self._check_refusal(replies[i], Refusal(name, allowed), UNPUBLISHED[wants[0][1]])
            except AssertionError as err:  # a race's outcome may not come again on a replay
                err.add_note(f"{asks} at once got {replies}")
                raise
        self.audits()  # the daemons report the winner
        for vm, _wants in asks:
            self.kill_owner(vm)

    def _send_at(self, start: threading.Barrier, vm: Vm, wants: list[Want]) -> dict[str, Any]:
        """vm's acquire of `wants`, sent once every asker is ready (start)."""
        request = self._qemu(vm).acquire_request(self._specs(wants))
        start.wait()
        return self._daemon(vm).send(request)

    @rule(vm=owners, names=st.lists(st.sampled_from(DISKS), unique=True, max_size=2))
    def release(self, vm: Vm, names: list[str]) -> None:
        """Release the named disks; none named: everything the owner holds."""
        request = self._qemu(vm).release_request(self._specs([(n, "EX") for n in names]))
        if not self.up[vm.node]:
            with pytest.raises(DaemonUnavailable, match="virtdlmd is not running"):
                self._daemon(vm).send(request)
            return
        reply = self._daemon(vm).send(request)
        assert reply["ok"], reply
        for name in names or list(vm.held):
            vm.held.pop(name, None)

    @rule(vm=consumes(owners))
    def kill_owner(self, vm: Vm) -> None:
        """kill -9 an owner's QEMU: its daemon releases its locks within RELEASE_DEADLINE_S,
        and refuses it any more; a stopped daemon leaves them held until it starts again."""
        qemu = self._qemu(vm)
        qemu.kill()
        vm.alive = False
        if not self.up[vm.node]:
            return
        vm.held.clear()
        daemon = self._daemon(vm)
        wait_for(
            lambda: all(lk["domain"] != vm.name for lk in daemon.locks()),
            RELEASE_DEADLINE_S,
            0.01,
            f"{vm.node} to release the locks of {vm} after its kill -9",
        )
        if os.path.exists(f"/proc/{qemu.pid}"):
            return  # the pid was reused: it is another process's now
        reply = daemon.send(qemu.acquire_request([disk(self.paths[DISKS[0]])]))
        refused = (reply["ok"], reply.get("code"), reply.get("error"))
        assert refused == (False, 11, "NO_SUCH_PROCESS"), reply

    @precondition(lambda self: all(self.up.values()) and any(vm.held for vm in self.vms))
    @rule(node=st.sampled_from(NODES), how=st.sampled_from(("kill -9", "SIGTERM")))
    def stop_daemon(self, node: str, how: str) -> None:
        """Stop a node's virtdlmd: its locks stay held (orphans in the model DLM)."""
        daemon = self.cluster.daemons[node]
        assert daemon.proc is not None
        if how == "kill -9":
            daemon.kill9()
        else:
            daemon.stop()
        self.up[node] = False

    @precondition(lambda self: not all(self.up.values()))
    @rule()
    def start_daemon(self) -> None:
        """Start the stopped virtdlmd: it adopts the locks of owners still running and
        purges those of owners that died while it was down."""
        for node, up in self.up.items():
            if not up:
                self.cluster.daemons[node].start()
                self.up[node] = True
                for vm in self.vms:
                    if vm.node == node and not vm.alive:
                        vm.held.clear()

    @invariant()
    def audits(self) -> None:
        if self._cluster is None:
            return  # nothing started, nothing to look at
        locks = {node: d.locks() for node, d in self.cluster.daemons.items() if self.up[node]}
        seen = Seen(locks, self.vms, self.cluster, self.paths, self.up)
        for audit in AUDITS:
            audit(seen)


_OPEN: set[ModelCampaign] = set()  # examples whose processes were started, not torn down


@pytest.fixture
def clusters_closed() -> Iterator[None]:
    """Whatever happens to the campaign, no example's processes outlive the test."""
    yield
    for example in list(_OPEN):
        example.teardown()


@pytest.mark.timeout(CAMPAIGN_TIMEOUT_S)
def test_model_campaign(clusters_closed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hypothesis's bound on shrinking (300 s) is a module constant it documents as
    # monkeypatchable; each try here starts processes, so a failure gets a shorter one.
    monkeypatch.setattr(conjecture_engine, "MAX_SHRINKING_SECONDS", SHRINK_LIMIT_S)
    run_state_machine_as_test(ModelCampaign, settings=CAMPAIGN)
