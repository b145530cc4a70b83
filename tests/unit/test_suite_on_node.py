"""What the suite runs inside a node (lab.suite.on_node), without a node."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from lab.command import run
from lab.suite import on_node
from lab.suite.on_node import (
    NODE_TREE,
    OnNodeError,
    command,
    holds,
    main,
    qemu_pid,
    seconds_until_released,
)
from lab.wait import WaitTimeout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_SUCH_PID = 999_999_999  # above any pid_max (at most 2**22)
LOCKS = [
    {"domain": "vm-1", "path": "/srv/one.qcow2", "mode": "EX"},
    {"domain": "vm-2", "path": "/srv/share.raw", "mode": "PR"},
]


def test_the_command_runs_this_module_with_the_trees_packages() -> None:
    cmd = command("kill-qemu", "vm 1")
    assert cmd == (
        f"PYTHONPATH={NODE_TREE}/plugin:{NODE_TREE} python3 -m lab.suite.on_node kill-qemu 'vm 1'"
    )


def test_holds_looks_for_the_domain_among_the_lock_records() -> None:
    assert holds(LOCKS, "vm-1") and holds(LOCKS, "vm-2")
    assert not holds(LOCKS, "vm-3") and not holds([], "vm-1")


class Locks:
    """virtdlmd's answers, one per poll; the kill is recorded."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.polls = 0
        self.killed_at_poll: int | None = None

    def held(self) -> bool:
        self.polls += 1
        return self.answers.pop(0) if self.answers else False

    def kill(self) -> None:
        self.killed_at_poll = self.polls


def test_the_release_is_timed_from_the_kill_to_the_first_poll_that_sees_nothing() -> None:
    locks = Locks(True, True, True, False)
    seconds = seconds_until_released(locks.held, locks.kill, "vm-1's locks", 5.0, 0.001)
    assert locks.killed_at_poll == 1, "killed once, after the first poll saw the locks"
    assert locks.polls == 4 and 0 <= seconds < 5.0


def test_locks_not_held_before_the_kill_are_an_error_and_nothing_is_killed() -> None:
    locks = Locks(False)
    with pytest.raises(OnNodeError, match="vm-1's locks: none held before the kill"):
        seconds_until_released(locks.held, locks.kill, "vm-1's locks", 5.0, 0.001)
    assert locks.killed_at_poll is None


def test_locks_never_released_end_the_watch_at_its_deadline() -> None:
    with pytest.raises(WaitTimeout, match="vm-1's locks to be released after the kill"):
        seconds_until_released(lambda: True, lambda: None, "vm-1's locks", 0.05, 0.01)


def test_the_qemu_pid_comes_from_libvirtds_pid_file_and_must_be_running(tmp_path) -> None:
    (tmp_path / "vm-1.pid").write_text(f"{os.getpid()}\n")
    assert qemu_pid("vm-1", str(tmp_path)) == os.getpid()
    (tmp_path / "vm-2.pid").write_text(f"{NO_SUCH_PID}\n")
    with pytest.raises(OnNodeError, match=f"pid {NO_SUCH_PID} from .* is not running"):
        qemu_pid("vm-2", str(tmp_path))
    (tmp_path / "vm-3.pid").write_text("garbage\n")
    for vm in ("vm-3", "vm-4"):
        with pytest.raises(OnNodeError, match=f"no QEMU pid for {vm}"):
            qemu_pid(vm, str(tmp_path))


def test_the_program_prints_the_seconds_or_one_line_saying_why_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(on_node, "kill_qemu", lambda vm, socket, watch_s: 0.12345)
    assert main(["kill-qemu", "vm-1"]) == 0
    assert capsys.readouterr().out == "0.123\n"

    def fails(vm: str, socket: str, watch_s: float) -> float:
        raise OnNodeError("the locks of vm-1: none held before the kill")

    monkeypatch.setattr(on_node, "kill_qemu", fails)
    assert main(["kill-qemu", "vm-1"]) == 1
    out = capsys.readouterr()
    assert (
        out.out == ""
        and out.err == "kill-qemu vm-1: the locks of vm-1: none held before the kill\n"
    )


def test_the_module_needs_nothing_the_nodes_lack() -> None:
    """A node has python3 and this tree, not the host's lab kit (libvirt-python, paramiko)."""
    probe = (
        "import sys, lab.suite.on_node; "
        "extra = {'libvirt', 'paramiko', 'yaml', 'vagrant', 'testinfra'} & set(sys.modules); "
        "sys.exit(f'imports {sorted(extra)}' if extra else 0)"
    )
    env = {"PYTHONPATH": f"{ROOT}/plugin:{ROOT}", "PATH": os.environ.get("PATH", "")}
    result = run([sys.executable, "-c", probe], timeout_s=30, env=env, cwd=ROOT)
    assert result.ok, result.describe()


def test_the_disk_reader_answers_each_line_and_survives_a_bad_one(tmp_path: Path) -> None:
    disk = tmp_path / "x.raw"
    disk.write_bytes(b"VDLMREC1" + b"\0" * 4088)
    lines = [f"read {disk}", "nonsense", f"read {tmp_path}/missing.raw", f"wipe {disk}"]
    out = io.StringIO()
    on_node.serve_disks(iter(lines), out)
    answers = [json.loads(a) for a in out.getvalue().splitlines()]
    assert len(answers) == 4
    assert answers[0][0]["path"] == str(disk) and answers[0][0]["collision"] is None
    assert "not understood" in answers[1]["error"]
    assert "No such file" in answers[2]["error"]
    assert answers[3] == "wiped" and disk.read_bytes()[:8] == b"\0" * 8
