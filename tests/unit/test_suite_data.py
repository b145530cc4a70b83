"""The data audit on captured evidence: what proves a double write, and what does not."""

from __future__ import annotations

import json

import pytest

from lab.guest.disks import Evidence, evidence_from_json, qcow2_data_offset
from lab.guest.writer import Collision, Record
from lab.suite import data
from lab.virt.domain import Disk, DomainSpec, domain_xml

ONE = "/srv/one.qcow2"
SHARE = "/srv/share.raw"
BOOT = "/var/lib/libvirt/images/boot.img"


def writer_xml(name: str, *disks: Disk, boot: str = BOOT) -> str:
    return domain_xml(DomainSpec(name, disks, writer_boot=boot))


def running(**domains: str) -> dict[str, str]:
    return {f"node-a/{name}": xml for name, xml in domains.items()}


def rec(writer: str, counter: int, nonce: int = 7, ok: bool = True) -> Record:
    return Record(writer, nonce, counter, ok)


def test_writer_disks_are_the_exclusive_disks_of_writer_guests() -> None:
    vm1 = writer_xml("vm-1", Disk(ONE), Disk(SHARE, shareable=True))
    firmware = domain_xml(DomainSpec("fw", (Disk("/srv/two.qcow2"),)))
    assert data.is_writer(vm1) and not data.is_writer(firmware)
    assert data.writer_disks(running(**{"vm-1": vm1, "fw": firmware})) == {ONE: ["node-a/vm-1"]}


@pytest.mark.parametrize(
    ("evidence", "found"),
    [
        (Evidence(ONE, rec("vm-1", 40), None), []),
        (Evidence(ONE, None, None), []),
        (
            Evidence(ONE, rec("vm-2", 9), Collision("vm-1", 7, 120, rec("vm-2", 3, nonce=5))),
            ["one.qcow2: writer vm-1 (nonce 7, at its write 120) read back vm-2's record"],
        ),
        (Evidence(ONE, rec("vm-1", 40, ok=False), None), ["one.qcow2: the record of vm-1 is torn"]),
    ],
    ids=["one-writer", "not-written-yet", "collision", "torn"],
)
def test_what_proves_a_double_write(evidence: Evidence, found: list[str]) -> None:
    got = data.problems([evidence])
    assert len(got) == len(found) and all(g.startswith(f) for g, f in zip(got, found, strict=True))


def test_audit_passes_one_writer_and_reports_its_counter() -> None:
    vm1 = writer_xml("vm-1", Disk(ONE))
    seen = data.audit(lambda paths: [Evidence(ONE, rec("vm-1", 40), None)], running(v=vm1), {}, "x")
    assert seen == "one.qcow2: vm-1 #40"


def test_audit_fails_on_a_collision_with_the_disks_evidence() -> None:
    vm1 = writer_xml("vm-1", Disk(ONE))
    ev = Evidence(ONE, rec("vm-2", 9), Collision("vm-1", 7, 120, rec("vm-2", 3)))
    with pytest.raises(data.DataAuditFailure, match="read back vm-2's record") as err:
        data.audit(lambda paths: [ev], running(v=vm1), {}, "start vm-2 on node-b")
    assert "start vm-2 on node-b" in str(err.value)
    assert err.value.summary == "one.qcow2: COLLISION vm-1 saw vm-2"


def test_where_libvirt_shows_two_writers_the_audit_waits_for_the_data() -> None:
    vm1, vm2 = writer_xml("vm-1", Disk(ONE)), writer_xml("vm-2", Disk(ONE))
    reads = [
        [Evidence(ONE, rec("vm-1", 40), None)],
        [Evidence(ONE, rec("vm-2", 2), Collision("vm-1", 7, 41, rec("vm-2", 1)))],
    ]
    calls: list[list[str]] = []

    def read(paths: list[str]) -> list[Evidence]:
        calls.append(paths)
        return reads[min(len(calls), len(reads)) - 1]

    doubles = {ONE: ["node-a/vm-1", "node-b/vm-2"]}
    with pytest.raises(data.DataAuditFailure):
        data.audit(read, {**running(a=vm1), "node-b/vm-2": vm2}, doubles, "x", wait_s=10)
    assert len(calls) == 2


def test_without_data_evidence_the_audit_gives_up_after_its_wait() -> None:
    vm1 = writer_xml("vm-1", Disk(ONE))
    ev = [Evidence(ONE, rec("vm-1", 40), None)]
    seen = data.audit(lambda p: ev, running(a=vm1), {ONE: ["a", "b"]}, "x", wait_s=0)
    assert seen == "one.qcow2: vm-1 #40"


def test_evidence_survives_json_between_node_and_host() -> None:
    ev = Evidence(ONE, rec("vm-2", 9), Collision("vm-1", 7, 120, rec("vm-2", 3)))
    assert evidence_from_json(json.loads(json.dumps(ev.to_json()))) == ev
    blank = Evidence(ONE, None, None)
    assert evidence_from_json(json.loads(json.dumps(blank.to_json()))) == blank


def test_qcow2_map_gives_the_file_offset_of_guest_offset_0() -> None:
    written = '[{"start": 0, "length": 65536, "depth": 0, "present": true, "zero": false,'
    written += ' "data": true, "offset": 327680},'
    written += ' {"start": 65536, "length": 67043328, "depth": 0, "present": false,'
    written += ' "zero": true, "data": false}]'
    assert qcow2_data_offset(written) == 327680
    never = '[{"start": 0, "length": 67108864, "depth": 0, "present": false, "zero": true,'
    never += ' "data": false}]'
    assert qcow2_data_offset(never) is None


def test_history_catches_a_writer_that_went_on_after_another_wrote() -> None:
    history = data.History()
    a1, b, a2 = rec("vm-1", 40, nonce=1), rec("vm-2", 3, nonce=2), rec("vm-1", 55, nonce=1)
    assert history.note([Evidence(ONE, a1, None)]) == []
    assert history.note([Evidence(ONE, rec("vm-1", 47, nonce=1), None)]) == []  # one writer
    assert history.note([Evidence(ONE, b, None)]) == []  # a handover: vm-1 may have stopped
    found = history.note([Evidence(ONE, a2, None)])
    assert found and "vm-1 went on writing (counter 47 -> 55) after vm-2 wrote" in found[0]


def test_history_allows_handovers_and_reboots() -> None:
    history = data.History()
    samples = [
        rec("vm-1", 40, nonce=1),
        rec("vm-2", 3, nonce=2),  # vm-1 destroyed, vm-2 took the disk
        rec("vm-1", 5, nonce=3),  # vm-1 started again: a new boot, a new nonce
    ]
    for r in samples:
        assert history.note([Evidence(ONE, r, None)]) == []
    history.clear()
    assert history.seen == {}
