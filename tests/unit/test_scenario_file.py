"""Scenario files (lab.scenario.schema): what they may say, and the error every bad one gets:
file, line, what is wrong, and exit status 2 from the command line, never a traceback."""

from __future__ import annotations

import glob
import os

import pytest

from lab.scenario import __main__ as cli
from lab.scenario.schema import ACTIONS, ScenarioError, Step, Together, dump, load, loads

HEAD = "version: 1\nlab: {storage: nfs, lock_manager: dlm}\n"
VMS = "vms:\n  vm-1:\n    disks: [{disk: one, mode: rw}]\n"
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def scenario(steps: str, vms: str = VMS, head: str = HEAD) -> str:
    return head + vms + "steps:\n" + steps


def test_a_scenario_reads_its_steps_groups_and_expectations() -> None:
    s = loads(
        scenario(
            "  - {on: node-a, do: start, vm: vm-1}\n"
            "  - {on: node-a, do: start, vm: vm-1, expect: lock-manager, code: 87, "
            "holder: vm-1@node-b}\n"
            "  - together:\n"
            "      - {on: node-a, do: destroy, vm: vm-1}\n"
            "      - {on: node-b, do: wait, seconds: 0.5}\n"
        )
    )
    first, refused, group = s.steps
    assert isinstance(first, Step) and (first.node, first.do, first.vm, first.expect) == (
        "node-a",
        "start",
        "vm-1",
        "ok",
    )
    assert isinstance(refused, Step) and (refused.code, refused.holder) == (87, "vm-1@node-b")
    assert isinstance(group, Together) and [x.do for x in group.steps] == ["destroy", "wait"]
    assert first.line == 7 and group.line == 9


def test_what_dump_writes_load_reads_back_the_same() -> None:
    for path in sorted(glob.glob(os.path.join(ROOT, "scenarios", "**", "*.yaml"), recursive=True)):
        if os.path.basename(path) == "tables.yaml":
            continue
        s = load(path)
        assert loads(dump(s)).to_yaml() == s.to_yaml(), path


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", None, "empty"),
        ("a: [", 1, "not valid YAML"),
        ("- 1\n", 1, "must be a mapping"),
        (HEAD + VMS + "steps: []\nextra: 1\n", 7, "unknown key 'extra'"),
        (HEAD + VMS, 1, "has no 'steps'"),
        ("version: 2\nlab: {}\nvms: {}\nsteps: []\n", 1, "version must be 1"),
        ("version: 1\nlab: {storage: ceph}\nvms: {}\nsteps: []\n", 2, "'ceph' is not one of"),
        ("version: 1\nlab: {lock_manager: sanlock}\nvms: {}\nsteps: []\n", 2, "not one of"),
        ("version: 1\nlab: {nodes: 9}\nvms: {}\nsteps: []\n", 2, "lab.nodes must be"),
        ("version: 1\nlab: {fencing: maybe}\nvms: {}\nsteps: []\n", 2, "true or false"),
        (scenario("  - {on: node-a, do: fly, vm: vm-1}\n"), 7, "unknown action 'fly'"),
        (scenario("  - {on: node-z, do: start, vm: vm-1}\n"), 7, "'node-z' is not in this lab"),
        (scenario("  - {on: node-a, do: start, vm: vm-9}\n"), 7, "'vm-9' is not declared"),
        (scenario("  - {on: node-a, do: start}\n"), 7, "start needs 'vm'"),
        (scenario("  - {on: node-a, do: migrate, vm: vm-1}\n"), 7, "migrate needs 'to'"),
        (scenario("  - {on: node-a, do: migrate, vm: vm-1, to: node-a}\n"), 7, "another node"),
        (scenario("  - {do: start, vm: vm-1}\n"), 7, "has no 'on'"),
        (scenario("  - {on: node-a, vm: vm-1}\n"), 7, "has no 'do'"),
        (scenario("  - {on: node-a, do: start, vm: vm-1, color: red}\n"), 7, "unknown key 'color'"),
        (scenario("  - {on: node-a, do: wait, seconds: soon}\n"), 7, "must be a number"),
        (scenario("  - {on: node-a, do: start, vm: vm-1, expect: maybe}\n"), 7, "not one of"),
        (scenario("  - {on: node-a, do: start, vm: vm-1, code: 87}\n"), 7, "belong to a refusal"),
        (
            scenario("  - {on: node-a, do: save, vm: vm-1, file: /etc/x}\n"),
            7,
            "a name on the share",
        ),
        (scenario("  - together: [{on: node-a, do: wait, seconds: 1}]\n"), 7, "at least two"),
        (
            scenario("  - {on: node-a, do: start, vm: vm-1}\n", "vms:\n  vm-1: {}\n"),
            4,
            "no 'disks'",
        ),
        (
            scenario(
                "  - {on: node-a, do: start, vm: vm-1}\n", "vms:\n  vm-1: {disks: [{disk: one}]}\n"
            ),
            4,
            "no 'mode'",
        ),
        (
            scenario("  - {on: node-a, do: start, vm: vm-1}\n", "vms:\n  vm 1: {disks: []}\n"),
            4,
            "VM name",
        ),
        (
            scenario(
                "  - {on: node-a, do: start, vm: vm-1}\n",
                "vms:\n  vm-1: {disks: [{path: ../../etc/passwd, mode: rw}]}\n",
            ),
            4,
            "may not hold '..'",
        ),
    ],
)
def test_every_kind_of_bad_file_gets_file_line_and_what(
    text: str, line: int | None, words: str
) -> None:
    with pytest.raises(ScenarioError) as caught:
        loads(text, "bad.yaml")
    err = caught.value
    assert err.source == "bad.yaml" and err.line == line and words in err.message, str(err)
    assert str(err).startswith(f"bad.yaml:{line}: " if line else "bad.yaml: ")


def test_the_command_line_says_what_is_wrong_and_exits_2(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = os.path.join(str(tmp_path), "bad.yaml")
    with open(bad, "w", encoding="utf-8") as f:
        f.write(scenario("  - {on: node-a, do: fly}\n"))
    assert cli.main(["validate", bad]) == cli.EXIT_INVALID
    assert cli.main(["replay", bad]) == cli.EXIT_INVALID  # refused before any lab is touched
    assert cli.main(["replay", bad + ".missing"]) == cli.EXIT_INVALID
    out = capsys.readouterr().out
    assert f"{bad}:7: step 1: unknown action 'fly'" in out and "Traceback" not in out
    assert "cannot read the file" in out


def test_every_action_is_documented() -> None:
    with open(os.path.join(ROOT, "docs", "scenarios.md"), encoding="utf-8") as f:
        doc = f.read()
    missing = [name for name in ACTIONS if f"`{name}`" not in doc]
    assert not missing, f"docs/scenarios.md does not describe: {missing}"
