"""The live recorder (lab.scenario.record, lab.scenario.tape): a domain's XML as disks, event
sequences as steps on captured values, and the recorder itself on libvirt's test driver."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from lab.nodes import WRITER_BOOT_IMAGE
from lab.scenario import record as rec
from lab.scenario.schema import DiskUse, dump, loads
from lab.scenario.tape import EVENT_NAMES, Event, Tape, disk_path, disk_uses
from lab.suite.matrix import SHARED_DISK
from lab.virt.domain import Disk, DomainSpec, domain_xml
from lab.wait import LabError, wait_for

MP = "/var/lib/libvirt/shared"  # the share's mount point (lab/settings.yaml)
TEST_URI = "test:///default"  # one state for every connection of this process
EVENT_TIMEOUT_S = 10.0
ONE = (DiskUse("rw", path="one.qcow2"),)
TWO = (DiskUse("rw", path="two.qcow2"),)

# -- disks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(f"{MP}/one.qcow2", "one.qcow2", id="on-the-share"),
        pytest.param(f"{MP}/dir/x.raw", "dir/x.raw", id="below-the-share"),
        pytest.param(f"{MP}-other/one.qcow2", f"{MP}-other/one.qcow2", id="next-to-the-share"),
        pytest.param(f"{SHARED_DISK}-part1", "part1", id="partition-1"),
        pytest.param(f"{SHARED_DISK}-part12", "part12", id="partition-12"),
        pytest.param(SHARED_DISK, SHARED_DISK, id="whole-shared-device"),
        pytest.param(f"{SHARED_DISK}-partx", f"{SHARED_DISK}-partx", id="not-a-partition"),
        pytest.param("/srv/images/a.img", "/srv/images/a.img", id="elsewhere"),
    ],
)
def test_a_disk_path_is_named_as_a_scenario_names_it(path: str, expected: str) -> None:
    assert disk_path(path, MP + "/") == expected


LAB_DISKS = (
    Disk(f"{MP}/one.qcow2"),
    Disk(f"{MP}/share.raw", shareable=True),
    Disk(f"{SHARED_DISK}-part2", readonly=True),
)
LAB_USES = (
    DiskUse("rw", path="one.qcow2"),
    DiskUse("shareable", path="share.raw"),
    DiskUse("ro", path="part2"),
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(DomainSpec("vm-1", LAB_DISKS), LAB_USES, id="firmware-only"),
        pytest.param(
            DomainSpec("vm-1", LAB_DISKS, writer_boot=WRITER_BOOT_IMAGE),
            LAB_USES,
            id="writer-boot-disk-left-out",
        ),
        pytest.param(
            DomainSpec("vm-1", (Disk(f"{MP}/two.qcow2", readonly=True),)),
            (DiskUse("ro", path="two.qcow2"),),
            id="read-only-first-disk-kept",
        ),
        pytest.param(DomainSpec("vm-1"), (), id="no-disks"),
    ],
)
def test_a_domains_xml_gives_its_disk_uses(spec: DomainSpec, expected: tuple[DiskUse]) -> None:
    assert disk_uses(domain_xml(spec), MP) == expected


# -- events -> steps --------------------------------------------------------------------------

L = libvirt
KINDS: dict[str, tuple[int, int]] = {  # short names for the tables below
    "defined": (L.VIR_DOMAIN_EVENT_DEFINED, L.VIR_DOMAIN_EVENT_DEFINED_ADDED),
    "updated": (L.VIR_DOMAIN_EVENT_DEFINED, L.VIR_DOMAIN_EVENT_DEFINED_UPDATED),
    "undefined": (L.VIR_DOMAIN_EVENT_UNDEFINED, L.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED),
    "booted": (L.VIR_DOMAIN_EVENT_STARTED, L.VIR_DOMAIN_EVENT_STARTED_BOOTED),
    "restored": (L.VIR_DOMAIN_EVENT_STARTED, L.VIR_DOMAIN_EVENT_STARTED_RESTORED),
    "migrated-in": (L.VIR_DOMAIN_EVENT_STARTED, L.VIR_DOMAIN_EVENT_STARTED_MIGRATED),
    "paused": (L.VIR_DOMAIN_EVENT_SUSPENDED, L.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
    "paused-migrating": (L.VIR_DOMAIN_EVENT_SUSPENDED, L.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED),
    "paused-io-error": (L.VIR_DOMAIN_EVENT_SUSPENDED, L.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR),
    "unpaused": (L.VIR_DOMAIN_EVENT_RESUMED, L.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
    "resumed-migrated": (L.VIR_DOMAIN_EVENT_RESUMED, L.VIR_DOMAIN_EVENT_RESUMED_MIGRATED),
    "destroyed": (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
    "shutdown": (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN),
    "crashed": (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_CRASHED),
    "failed": (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_FAILED),
    "migrated-out": (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_MIGRATED),
    "saved": (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SAVED),
    "managed-saved": (L.VIR_DOMAIN_EVENT_STOPPED, L.VIR_DOMAIN_EVENT_STOPPED_SAVED),
    "snapshot-started": (L.VIR_DOMAIN_EVENT_STARTED, L.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT),
    "panicked": (L.VIR_DOMAIN_EVENT_CRASHED, L.VIR_DOMAIN_EVENT_CRASHED_PANICKED),
}


def event(text: str, index: int = 0, disks: tuple[DiskUse, ...] = ONE) -> Event:
    """'a booted' or 'b paused @12.5': node-a/node-b, a kind above, the time (default: index)."""
    node, kind, *at = text.split()
    seconds = float(at[0].lstrip("@")) if at else float(index)
    vm = "vm-1"
    return Event(f"node-{node}", vm, *KINDS[kind], seconds, disks, managed=kind == "managed-saved")


def played(events: list[str], wait_after_s: float = 0.0) -> Tape:
    tape = Tape(wait_after_s)
    for i, text in enumerate(events):
        tape.feed(event(text, i))
    return tape


def said(text: str) -> str:
    """'a migrate to node-b' as Step.describe says it: '[node-a] migrate vm-1 to node-b'."""
    node, do, *rest = text.split()
    return " ".join([f"[node-{node}]", do, "vm-1", *rest])


LIFECYCLE = ["a defined", "a booted", "a paused", "a unpaused", "a destroyed", "a undefined"]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            LIFECYCLE,
            ["a define", "a start", "a suspend", "a resume", "a destroy", "a undefine"],
            id="lifecycle",
        ),
        pytest.param(
            [
                "a booted",
                "a unpaused",
                "a booted",
                "a paused",
                "a paused",
                "a unpaused",
                "a unpaused",
            ],
            ["a start", "a suspend", "a resume"],
            id="consecutive-duplicates",
        ),
        pytest.param(
            ["a booted", "a saved", "b restored", "b unpaused"],
            ["a start", "a save", "b restore"],
            id="save-restore-elsewhere",
        ),
        pytest.param(
            ["a booted", "a managed-saved", "a restored", "a unpaused"],
            ["a start", "a managedsave", "a start"],
            id="managedsave-start-qemu",
        ),
        pytest.param(
            ["a booted", "a managed-saved", "a booted"],
            ["a start", "a managedsave", "a start"],
            id="managedsave-start-test-driver",
        ),
        pytest.param(
            [
                "a booted",
                "b migrated-in",
                "a paused-migrating",
                "b resumed-migrated",
                "b defined",
                "a migrated-out",
                "a undefined",
            ],
            ["a start", "a migrate to node-b", "a undefine"],
            id="migrate-persistent-undefinesource",
        ),
        pytest.param(
            ["a booted", "a migrated-out", "b migrated-in", "b paused", "b unpaused"],
            ["a start", "a migrate to node-b", "b suspend", "b resume"],
            id="migrate-source-half-first",
        ),
        pytest.param(
            ["a booted", "b migrated-in", "a migrated-out", "a migrated-in", "b migrated-out"],
            ["a start", "a migrate to node-b", "b migrate to node-a"],
            id="migrate-there-and-back",
        ),
        pytest.param(
            [
                "a booted",
                "b migrated-in",
                "a paused-migrating",
                "b failed",
                "a resumed-migrated",
                "a destroyed",
            ],
            ["a start", "a destroy"],
            id="migration-that-failed",
        ),
        pytest.param(
            ["a booted", "a shutdown", "a booted", "a crashed", "a booted", "a failed"],
            ["a start", "a destroy", "a start", "a destroy", "a start", "a kill-qemu"],
            id="stops-as-the-replay-does-them",
        ),
        pytest.param(["a failed", "a destroyed"], [], id="stop-of-what-does-not-run"),
        pytest.param(
            ["a booted", "a paused-io-error", "a unpaused", "a panicked", "a snapshot-started"],
            ["a start", "a resume"],
            id="libvirt-and-the-guest-do-no-steps",
        ),
        pytest.param(["a booted", "b booted"], ["a start", "b start"], id="one-vm-on-two-nodes"),
        pytest.param(["a booted", "a defined"], ["a start"], id="made-persistent-while-running"),
    ],
)
def test_events_make_steps(events: list[str], expected: list[str]) -> None:
    steps = played(events).steps
    assert [s.describe() for s in steps] == [said(e) for e in expected]
    assert all(s.expect == "ok" for s in steps)


@pytest.mark.parametrize(
    ("wait_after_s", "events", "expected"),
    [
        pytest.param(
            5.0,
            ["a booted @0", "a paused @2", "a unpaused @10.04"],
            ["start vm-1", "suspend vm-1", "wait 8 s", "resume vm-1"],
            id="a-pause-longer-than-the-limit",
        ),
        pytest.param(
            5.0,
            ["a booted @0", "a unpaused @30", "a paused @32"],  # the duplicate makes no step
            ["start vm-1", "wait 32 s", "suspend vm-1"],
            id="measured-between-steps-not-events",
        ),
        pytest.param(
            0.0,
            ["a booted @0", "a paused @600"],
            ["start vm-1", "suspend vm-1"],
            id="off-by-default",
        ),
    ],
)
def test_pauses_become_wait_steps_when_asked(
    wait_after_s: float, events: list[str], expected: list[str]
) -> None:
    steps = played(events, wait_after_s).steps
    assert [s.describe().removeprefix("[node-a] ") for s in steps] == expected


def test_save_and_restore_use_the_file_the_replay_uses() -> None:
    save, restore = played(["a booted", "a saved", "a restored"]).steps[1:]
    assert (save.do, save.file, restore.do, restore.file) == (
        "save",
        "vm-1.save",
        "restore",
        "vm-1.save",
    )


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        pytest.param(ONE, None, id="same-disks"),
        pytest.param(TWO, TWO, id="other-disks"),
        pytest.param(None, None, id="destination-xml-unread"),
    ],
)
def test_a_migration_carries_the_destinations_disks_when_they_differ(
    destination: tuple[DiskUse, ...] | None, expected: tuple[DiskUse, ...] | None
) -> None:
    tape = Tape()
    tape.feed(event("a booted"))
    tape.feed(Event("node-b", "vm-1", *KINDS["migrated-in"], 1.0, destination))
    tape.feed(event("a migrated-out", 2))
    assert tape.steps[-1].do == "migrate" and tape.steps[-1].disks == expected
    assert tape.disks["vm-1"] == ONE


@pytest.mark.parametrize(
    ("events", "words"),
    [
        pytest.param(["a booted", "a migrated-out"], "[node-a] vm-1 left", id="to-no-node"),
        pytest.param(["b migrated-in"], "[node-b] vm-1 came", id="from-no-node"),
        pytest.param(["a booted", "a paused-io-error"], "libvirt paused it", id="io-error"),
        pytest.param(["a booted", "a panicked"], "the guest crashed", id="panic"),
    ],
)
def test_what_makes_no_step_is_noted(events: list[str], words: str) -> None:
    tape = played(events)
    tape.finish()
    assert any(words in note for note in tape.notes), tape.notes


def test_an_events_line_names_the_node_what_came_and_the_step() -> None:
    tape = Tape()
    entry = tape.feed(event("b booted"))
    assert entry.line() == "[node-b] vm-1 started (booted) -> [node-b] start vm-1"
    quiet = tape.feed(event("b unpaused"))
    assert (quiet.steps, quiet.note) == ((), "")
    odd = Event("node-a", "vm-1", 42, 7, 0.0)
    assert odd.describe() == "event 42 (7)"
    started = EVENT_NAMES[L.VIR_DOMAIN_EVENT_STARTED][1]
    assert started[L.VIR_DOMAIN_EVENT_STARTED_MIGRATED] == "migrated"
    stopped = EVENT_NAMES[L.VIR_DOMAIN_EVENT_STOPPED][1]
    assert stopped[L.VIR_DOMAIN_EVENT_STOPPED_SAVED] == "saved"


def test_a_tapes_scenario_is_a_valid_file_with_its_vms_disks() -> None:
    tape = played(LIFECYCLE + ["b booted", "b saved", "a restored"])
    scenario = tape.scenario()
    assert scenario.vms["vm-1"].disks == ONE
    again = loads(dump(scenario, "recorded"))
    assert again.to_yaml() == scenario.to_yaml()


def test_the_recorder_refuses_nodes_that_are_not_the_labs() -> None:
    with pytest.raises(LabError, match="node-x"):
        rec.Recorder({"node-x": TEST_URI}, MP)


# -- the recorder on libvirt's test driver ----------------------------------------------------


def lab_xml(name: str, disks: tuple[Disk, ...] = LAB_DISKS, writer: bool = True) -> str:
    spec = DomainSpec(
        name, disks, domain_type="test", writer_boot=WRITER_BOOT_IMAGE if writer else ""
    )
    return domain_xml(spec)


@pytest.fixture
def quiet_node(tmp_path: Path) -> str:
    """A node of its own: a test driver file is private to each connection."""
    path = os.path.join(tmp_path, "node-b.xml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("<node/>")
    return f"test://{path}"


@pytest.fixture
def acting() -> Iterator[libvirt.virConnect]:
    """A connection to test:///default: the recorder's node-a sees what it does."""
    conn = libvirt.open(TEST_URI)
    yield conn
    for name in ("vm-0", "vm-1"):
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    conn.close()


def then_its_event(entries: list[rec.Entry], count: int) -> None:
    """Wait for vm-1's count-th event, as people wait for virsh before their next command
    (a start right after a managedsave, before its event came, would read as a save)."""
    wait_for(
        lambda: sum(e.event.vm == "vm-1" for e in entries) >= count,
        EVENT_TIMEOUT_S,
        what=f"vm-1's event {count}",
    )


def test_the_recorder_turns_what_is_done_on_a_node_into_a_scenario(
    acting: libvirt.virConnect, quiet_node: str, tmp_path: Path
) -> None:
    acting.defineXML(lab_xml("vm-0", LAB_DISKS[:1], writer=False)).create()  # before recording
    entries: list[rec.Entry] = []
    recorder = rec.Recorder({"node-a": TEST_URI, "node-b": quiet_node}, MP, 0.0, entries.append)
    recorder.start()
    save = os.path.join(tmp_path, "vm-1.save")
    try:
        dom = acting.defineXML(lab_xml("vm-1"))
        actions = [
            dom.create,
            dom.suspend,
            dom.resume,
            lambda: dom.managedSave(0),
            dom.create,
            lambda: dom.save(save),
            lambda: acting.restore(save),
            dom.destroy,
            dom.undefine,
        ]
        then_its_event(entries, 1)
        for count, action in enumerate(actions, 2):
            action()
            then_its_event(entries, count)
    finally:
        scenario = recorder.stop()
    assert not rec.EVENT_LOOP.running
    mine = [s for s in scenario.flat() if s.vm in ("vm-0", "vm-1")]
    assert [(s.node, s.do, s.vm) for s in mine] == [
        ("node-a", "start", "vm-0"),  # it ran when the recording started
        ("node-a", "define", "vm-1"),
        ("node-a", "start", "vm-1"),
        ("node-a", "suspend", "vm-1"),
        ("node-a", "resume", "vm-1"),
        ("node-a", "managedsave", "vm-1"),
        ("node-a", "start", "vm-1"),
        ("node-a", "save", "vm-1"),
        ("node-a", "restore", "vm-1"),
        ("node-a", "destroy", "vm-1"),
        ("node-a", "undefine", "vm-1"),
    ]
    assert scenario.vms["vm-1"].disks == LAB_USES  # the writer's boot disk left out
    assert scenario.vms["vm-0"].disks == ONE
    assert loads(dump(scenario)).to_yaml() == scenario.to_yaml()


def test_a_node_that_cannot_be_reached_fails_the_start_and_stops_the_loop(tmp_path: Path) -> None:
    missing = f"test://{tmp_path}/no-such-node.xml"
    recorder = rec.Recorder({"node-a": TEST_URI, "node-b": missing}, MP)
    with pytest.raises(LabError, match=r"\[node-b\] connect"):
        recorder.start()
    assert not rec.EVENT_LOOP.running


class _CtrlC(threading.Event):
    def wait(self, timeout: float | None = None) -> bool:
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    "stop", [pytest.param(_CtrlC(), id="ctrl-c"), pytest.param(None, id="set")]
)
def test_record_writes_the_file_and_a_summary_when_it_stops(
    stop: threading.Event | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = os.path.join(tmp_path, "node-a.xml")
    with open(node, "w", encoding="utf-8") as f:
        f.write(f"<node>{lab_xml('vm-9', LAB_DISKS[2:], writer=False)}</node>")
    if stop is None:
        stop = threading.Event()
        stop.set()
    out = os.path.join(tmp_path, "bug.yaml")
    rec.record(out, {"node-a": f"test://{node}", "node-b": f"test://{node}"}, MP, stop)
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"wrote {out}: 2 steps, 1 VMs from 2 events, 0 notes"
    assert any("[node-a] vm-9 started (booted, before the recording)" in x for x in printed)
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("# recorded on ") and "Refused attempts make no event" in text
    written = loads(text)
    assert [s.describe() for s in written.flat()] == ["[node-a] start vm-9", "[node-b] start vm-9"]
    assert written.vms["vm-9"].disks == (DiskUse("ro", path="part2"),)
    assert not rec.EVENT_LOOP.running
