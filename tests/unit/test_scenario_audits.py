"""The audits (lab.scenario.audits) and the history (lab.scenario.history) on stored records:
what each audit sees, when it does not apply, and the offline check and conversion."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest

from lab.scenario import audits, history
from lab.scenario.schema import ScenarioError, loads

ONE = "/var/lib/libvirt/shared/one.qcow2"
PART1 = "/dev/disk/by-id/virtio-virtdlm-shared-part1"
SCENARIO = """version: 1
lab: {storage: nfs, lock_manager: dlm}
vms:
  vm-1:
    disks: [{disk: one, mode: rw}]
  vm-2:
    disks: [{disk: one, mode: rw}]
steps:
  - {on: node-a, do: start, vm: vm-1}
  - {on: node-b, do: start, vm: vm-2, expect: lock-manager, code: 87, holder: vm-1@node-a}
"""


def step(do: str, vm: str, node: str = "node-a", **kw: Any) -> dict[str, Any]:
    base = {
        "node": node,
        "do": do,
        "args": {"vm": vm},
        "describe": f"[{node}] {do} {vm}",
        "expect": "ok",
        "code": None,
        "holder": "",
        "outcome": "ok",
        "layer": "",
        "libvirt_code": None,
        "holder_seen": "",
        "message": "",
        "seconds": 1.0,
        "note": "",
    }
    return {**base, **kw}


def node(
    domains: dict[str, Any], locks: Any, qemu: list[Any], real: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "up": True,
        "domains": domains,
        "locks": locks,
        "quorum": {"quorate": True, "detail": "quorate", "members": ["node-a", "node-b"]},
        "qemu": qemu,
        "paths": real or {},
    }


def running(*disks: tuple[str, str], state: str = "running") -> dict[str, Any]:
    return {"state": state, "disks": dict(disks)}


def record(index: int = 1, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "step",
        "index": index,
        "wall": "2026-11-30T12:00:00.000",
        "monotonic": 1.0,
        "steps": [step("start", "vm-1")],
        "lock_manager": "dlm",
        "invariant": {"ok": True, "saw": "one.qcow2: vm-1 #3"},
        "state": {
            "node-a": node(
                {"vm-1": running((ONE, "rw"))},
                [{"domain": "vm-1", "path": ONE, "mode": "EX"}],
                [{"pid": 10, "domain": "vm-1", "writes": [ONE]}],
            ),
            "node-b": node({}, [], []),
        },
        "expected": {"down": [], "cut": [], "virtdlmd_down": []},
        "journal": [],
    }
    base.update(kw)
    return base


def failing(rec: dict[str, Any]) -> set[str]:
    return {v.audit for v in audits.failed(audits.run_all(rec))}


def test_a_clean_step_passes_every_audit() -> None:
    assert failing(record()) == set()


def test_two_running_qemus_writing_one_disk_is_a_double_writer_by_the_nodes_own_proc() -> None:
    rec = record()
    rec["state"]["node-b"] = node(
        {"vm-2": running((PART1, "rw"))},
        [{"domain": "vm-2", "path": PART1, "mode": "EX"}],
        [{"pid": 20, "domain": "vm-2", "writes": ["/dev/vdb1"]}],
        {PART1: "/dev/vdb1"},
    )
    rec["state"]["node-a"]["domains"]["vm-1"]["disks"][PART1] = "rw"
    rec["state"]["node-a"]["paths"] = {PART1: "/dev/vdb1"}
    rec["state"]["node-a"]["qemu"][0]["writes"].append("/dev/vdb1")
    rec["state"]["node-a"]["locks"].append({"domain": "vm-1", "path": PART1, "mode": "EX"})
    verdict = audits.no_double_writer(rec)
    assert not verdict.ok and "/dev/vdb1 written by vm-1@node-a, vm-2@node-b" in verdict.saw


def test_shareable_writers_and_a_paused_qemu_are_not_double_writers() -> None:
    rec = record()
    rec["state"]["node-a"]["domains"]["vm-1"] = running((ONE, "shareable"))
    rec["state"]["node-a"]["locks"] = [{"domain": "vm-1", "path": ONE, "mode": "PR"}]
    rec["state"]["node-b"] = node(
        {"vm-2": running((ONE, "shareable")), "vm-3": running((ONE, "rw"), state="paused")},
        [{"domain": "vm-2", "path": ONE, "mode": "PR"}],
        [
            {"pid": 20, "domain": "vm-2", "writes": [ONE]},
            {"pid": 30, "domain": "vm-3", "writes": [ONE]},
        ],
    )
    assert failing(rec) == set()


def test_locks_must_agree_with_domains_once_settled() -> None:
    missing = record()
    missing["state"]["node-a"]["locks"] = []
    assert "vm-1@node-a runs with" in audits.locks_agree(missing).saw
    orphan = record()
    orphan["state"]["node-b"]["locks"] = [{"domain": "vm-9", "path": ONE, "mode": "EX"}]
    assert failing(orphan) == {"locks agree with domains"}
    nop = copy.deepcopy(missing)
    nop["lock_manager"] = "nop"
    assert not audits.locks_agree(nop).applies and failing(nop) == {"daemons alive"} - {
        "daemons alive"
    }


def test_a_daemon_down_fails_unless_the_scenario_stopped_it() -> None:
    rec = record()
    rec["state"]["node-b"]["locks"] = {"error": "virtdlmd is not running"}
    assert failing(rec) == {"daemons alive"}
    rec["expected"]["virtdlmd_down"] = ["node-b"]
    assert failing(rec) == set()


def test_quorum_is_audited_only_while_every_node_is_up_and_whole() -> None:
    rec = record()
    rec["state"]["node-a"]["quorum"] = {"quorate": False, "detail": "not quorate", "members": []}
    assert failing(rec) == {"cluster quorate"}
    rec["expected"]["cut"] = ["node-b"]
    assert not audits.quorate(rec).applies


def refusal(**seen: Any) -> dict[str, Any]:
    """vm-2 started on node-b, expected to be refused naming vm-1 on node-a; `seen`: what
    came of it."""
    expected = {"expect": "lock-manager", "code": 87, "holder": "vm-1@node-a"}
    return step("start", "vm-2", "node-b", **expected, **seen)


def test_expectations_code_and_holder() -> None:
    assert failing(record(steps=[refusal(outcome="ok")])) == {"expectation"}
    seen = {"outcome": "lock-manager", "libvirt_code": 87, "holder_seen": "vm-1@node-a"}
    right = record(steps=[refusal(**seen)])
    assert failing(right) == set()
    other_holder = record(steps=[refusal(**{**seen, "holder_seen": "vm-3@node-a"})])
    assert "holder 'vm-3@node-a'" in audits.expectation(other_holder).saw
    anything = record(steps=[step("start", "vm-2", expect="any", outcome="other")])
    assert not audits.expectation(anything).applies


def test_the_journal_and_the_stored_invariant_fail_a_step() -> None:
    assert failing(record(journal=["node-a virtdlmd: ERROR boom"])) == {"journals clean"}
    bad = record(invariant={"ok": False, "saw": "COLLISION", "evidence": "data"})
    assert failing(bad) == {"no double writer (libvirt, data)"}


def write_history(tmp: str, records: list[dict[str, Any]]) -> str:
    path = os.path.join(tmp, "history.jsonl")
    scenario = loads(SCENARIO, "s.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            json.dumps(history.header(scenario, {"mount_point": "/var/lib/libvirt/shared"})) + "\n"
        )
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def test_check_runs_the_audits_again_on_a_stored_history(tmp_path: Any) -> None:
    clean = write_history(str(tmp_path), [record()])
    assert history.check(clean) == []
    orphan = record(index=2)
    orphan["state"]["node-b"]["locks"] = [{"domain": "vm-9", "path": ONE, "mode": "EX"}]
    dirty = write_history(str(tmp_path), [record(), orphan])
    [(index, verdicts)] = history.check(dirty)
    assert index == 2 and [v.audit for v in verdicts] == ["locks agree with domains"]


def test_a_history_turns_back_into_the_scenario_expecting_what_was_seen(tmp_path: Any) -> None:
    refused = step(
        "start",
        "vm-2",
        "node-b",
        outcome="lock-manager",
        libvirt_code=87,
        holder_seen="vm-1@node-a",
    )
    path = write_history(str(tmp_path), [record(), record(index=2, steps=[refused])])
    s = history.to_scenario(path)
    first, second = s.steps
    assert (first.do, first.vm, first.expect) == ("start", "vm-1", "ok")  # type: ignore[union-attr]
    assert (second.expect, second.code, second.holder) == ("lock-manager", 87, "vm-1@node-a")  # type: ignore[union-attr]
    assert set(s.vms) == {"vm-1", "vm-2"}


def test_a_history_that_is_not_one_says_where(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "h.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"kind": "step"}\n')
    with pytest.raises(ScenarioError, match="h.jsonl:1: a history starts with its scenario line"):
        history.check(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write("not json\n")
    with pytest.raises(ScenarioError, match="h.jsonl:1: not a history line"):
        history.check(path)
