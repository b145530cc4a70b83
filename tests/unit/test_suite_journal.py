"""The node-journal audit (lab.suite.journal) on journal text, without a lab.

The entries are written in the shape `journalctl -o json --output-fields=...` prints them on
the lab's nodes (Debian 12, systemd 252): one object a line, every value a string, a value that
is not UTF-8 as a list of byte values, and the cursor and timestamps always included.
"""

from __future__ import annotations

import json

import pytest

from lab.command import CommandFailed, Result
from lab.suite.journal import (
    ALWAYS_ALLOWED,
    MAX_SHOWN_LINES,
    UNITS,
    JournalError,
    JournalWatch,
    bad_lines,
    cursor_command,
    entries_command,
    failure_message,
    parse_cursor,
    parse_entries,
)
from lab.virt.refusal import LOCK_DAEMON_DOWN, LOCK_MANAGER, QEMU_IMAGE_LOCK, log_signs

CURSOR = (
    "s=4b0e6a8f3c5d4f1e9a2b7c6d5e4f3a2b;i=1c4f;b=0d3f5e7a9b1c4d6e8f0a2b4c6d8e0f1a;"
    "m=3a2b1c0;t=62e1f0a1b2c3d;x=9f8e7d6c5b4a3210"
)
T0 = 1764505200_000000  # 2025-11-30 12:20:00 UTC, in microseconds


def entry(
    message: object, priority: str | None, unit: str, ident: str, pid: str = "812", **extra: str
) -> str:
    fields: dict[str, object] = {
        "__CURSOR": CURSOR,
        "__REALTIME_TIMESTAMP": str(T0),
        "__MONOTONIC_TIMESTAMP": "61012416",
        "_BOOT_ID": "0d3f5e7a9b1c4d6e8f0a2b4c6d8e0f1a",
        "_SYSTEMD_UNIT": unit,
        "SYSLOG_IDENTIFIER": ident,
        "_PID": pid,
        "MESSAGE": message,
        **extra,
    }
    if priority is not None:
        fields["PRIORITY"] = priority
    return json.dumps(fields)


BUSY = entry(
    "resource busy: disk /var/lib/libvirt/shared/one.qcow2 is locked exclusively by vm-1 on node-b",
    "3",
    "libvirtd.service",
    "libvirtd",
)
QEMU_LOCK = entry(
    "internal error: process exited while connecting to monitor: 2025-11-30T12:20:00.649038Z "
    'qemu-system-x86_64: -blockdev {"node-name":"libvirt-1-format"}: Failed to get "write" '
    "lock\nIs another process using the image [/var/lib/libvirt/shared/one.qcow2]?",
    "3",
    "libvirtd.service",
    "libvirtd",
)
DAEMON_DOWN = entry(
    "operation failed: virtdlmd is not running (socket /run/libvirt/virtdlmd.sock: "
    "Connection refused)",
    "3",
    "libvirtd.service",
    "libvirtd",
)
DNSMASQ = entry(
    "Cannot check dnsmasq binary /usr/sbin/dnsmasq: No such file or directory",
    "3",
    "libvirtd.service",
    "libvirtd",
)
# virtdlmd writes its log to stderr: journald gives every line priority 6 (info).
VIRTDLMD_INFO = entry(
    "2025-11-30 12:20:00,123 virtdlmd[901] INFO libvirt:3f1c acquire EX for vm-1 (one.qcow2)",
    "6",
    "virtdlmd.service",
    "virtdlmd",
    "901",
)
VIRTDLMD_ERROR = entry(
    "2025-11-30 12:20:00,456 virtdlmd[901] ERROR owner vm-1 lost disk one.qcow2 while "
    "virtdlmd was down",
    "6",
    "virtdlmd.service",
    "virtdlmd",
    "901",
)
LOCK_LOST = entry(
    "2025-11-30 12:20:00,789 virtdlmd[901] WARNING the lock of vm-1 on one.qcow2 was lost",
    "6",
    "virtdlmd.service",
    "virtdlmd",
    "901",
)
TRACEBACK = [
    entry("Traceback (most recent call last):", "6", "virtdlmd.service", "virtdlmd", "901"),
    entry(
        '  File "/opt/virtdlm/plugin/virtdlm/server.py", line 210, in _recover',
        "6",
        "virtdlmd.service",
        "virtdlmd",
        "901",
    ),
    entry("[TOTEM ] interleaved line", "5", "corosync.service", "corosync", "700"),
    entry(
        "    raise BackendError('ERROR in lockspace')",
        "6",
        "virtdlmd.service",
        "virtdlmd",
        "901",
    ),
    entry("RuntimeError: lockspace gone", "6", "virtdlmd.service", "virtdlmd", "901"),
]
# systemd's own lines about a unit: _SYSTEMD_UNIT is init.scope, UNIT names the unit.
KILLED = entry(
    "virtdlmd.service: Main process exited, code=killed, status=9/KILL",
    "5",
    "init.scope",
    "systemd",
    "1",
    UNIT="virtdlmd.service",
)
TOKEN = entry(
    "[TOTEM ] A processor failed, forming new configuration: token timed out (3000ms), "
    "waiting 3600ms for consensus.",
    "5",
    "corosync.service",
    "corosync",
    "700",
)
FENCE = entry(
    "1234 fence request 1 pid 4321 nodedown time 1764505200 fence_all dlm_stonith",
    "3",
    "dlm.service",
    "dlm_controld",
    "650",
)
NOT_UTF8 = entry(list(b"bad \xff byte"), None, "libvirtd.service", "libvirtd")


def text(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_the_cursor_is_that_of_the_last_entry_and_none_for_an_empty_journal() -> None:
    assert parse_cursor(text(TOKEN)) == CURSOR
    assert parse_cursor("") is None
    assert "-n 1" in cursor_command() and "-o json" in cursor_command()


def test_entries_are_read_after_the_cursor_for_the_four_units_or_since_boot_without_one() -> None:
    cmd = entries_command(CURSOR)
    assert f"--after-cursor='{CURSOR}'" in cmd, "the cursor's ';' must reach journalctl quoted"
    assert [u for u in UNITS if f"-u {u}" in cmd] == list(UNITS)
    assert UNITS == ("virtdlmd.service", "libvirtd.service", "dlm.service", "corosync.service")
    assert " -b " in entries_command(None) and "--after-cursor" not in entries_command(None)


def test_entries_carry_node_unit_process_priority_and_message() -> None:
    busy, killed, odd = parse_entries("node-a", text(BUSY, KILLED, NOT_UTF8))
    assert (busy.node, busy.unit, busy.identifier, busy.pid, busy.priority) == (
        "node-a",
        "libvirtd.service",
        "libvirtd",
        "812",
        3,
    )
    assert busy.render().startswith("[node-a] 12:20:00.000000 libvirtd.service libvirtd[812] err:")
    assert killed.unit == "virtdlmd.service", "systemd's line about the unit counts as the unit's"
    assert odd.message == "bad \ufffd byte" and odd.priority == 6, "no PRIORITY: info"
    multi = parse_entries("node-a", text(QEMU_LOCK))[0].render()
    assert "\n" not in multi and '"write" lock | Is another process' in multi


def test_lines_that_are_not_journal_json_are_an_error() -> None:
    with pytest.raises(JournalError, match="not JSON"):
        parse_entries("node-a", "-- No entries --\n")


def test_errors_tracebacks_and_lost_locks_are_bad_and_notices_and_info_are_not() -> None:
    entries = parse_entries("node-b", text(VIRTDLMD_INFO, KILLED, TOKEN, BUSY, VIRTDLMD_ERROR))
    bad = bad_lines(entries)
    assert len(bad) == 2
    assert "resource busy" in bad[0] and "lost disk one.qcow2" in bad[1]
    assert len(bad_lines(parse_entries("node-b", text(LOCK_LOST)))) == 1, "lost at warning"
    assert len(bad_lines(parse_entries("node-a", text(FENCE)))) == 1, "err from dlm_controld"


def test_a_traceback_is_one_line_with_the_rest_of_it_from_the_same_process() -> None:
    (line,) = bad_lines(parse_entries("node-a", text(*TRACEBACK)))
    assert line.endswith(
        'Traceback (most recent call last): | File "/opt/virtdlm/plugin/virtdlm/server.py", '
        "line 210, in _recover | raise BackendError('ERROR in lockspace') | "
        "RuntimeError: lockspace gone"
    ), "one line: the frame that says ERROR is part of it, not a line of its own"
    assert "interleaved" not in line
    assert bad_lines(parse_entries("node-a", text(*TRACEBACK)), ["RuntimeError: lockspace"]) == []


@pytest.mark.parametrize(
    ("layers", "sample", "allowed"),
    [
        ((LOCK_MANAGER,), BUSY, True),
        ((LOCK_MANAGER,), QEMU_LOCK, False),
        ((QEMU_IMAGE_LOCK,), QEMU_LOCK, True),
        ((QEMU_IMAGE_LOCK,), BUSY, False),
        ((LOCK_MANAGER, LOCK_DAEMON_DOWN), DAEMON_DOWN, True),
        ((), DAEMON_DOWN, False),
    ],
    ids=["busy", "busy-not-qemu", "qemu", "qemu-not-busy", "daemon-down", "nothing-allowed"],
)
def test_a_test_allows_exactly_the_refusals_it_expects(
    layers: tuple[str, ...], sample: str, allowed: bool
) -> None:
    bad = bad_lines(parse_entries("node-a", text(sample)), log_signs(*layers))
    assert bad == [] if allowed else len(bad) == 1


def test_libvirtds_start_without_dnsmasq_is_allowed_in_every_test() -> None:
    assert "Cannot check dnsmasq binary" in ALWAYS_ALLOWED
    assert bad_lines(parse_entries("node-a", text(DNSMASQ))) == []


def test_the_failure_message_names_the_units_and_the_marker_and_is_bounded() -> None:
    lines = [f"line {i}" for i in range(MAX_SHOWN_LINES + 5)]
    message = failure_message(lines)
    assert "virtdlmd.service" in message and "@pytest.mark.allow_log" in message
    assert "line 0" in message and f"line {MAX_SHOWN_LINES}" not in message
    assert message.endswith("... and 5 more")


class FakeNode:
    """A node whose journal holds the given text; records the commands it ran."""

    def __init__(self, name: str, cursor_text: str, entries_text: str) -> None:
        self.name = name
        self.answers = {"-n 1": cursor_text, "--output-fields=MESSAGE": entries_text}
        self.commands: list[str] = []

    def check(self, command: str, timeout_s: float = 60.0) -> Result:
        self.commands.append(command)
        out = next(text for key, text in self.answers.items() if key in command)
        return Result(self.name, (command,), 0, out, "", 0.01)


def test_the_watch_reads_each_armed_node_after_its_cursor_and_skips_nodes_that_are_down() -> None:
    a = FakeNode("node-a", text(TOKEN), text(VIRTDLMD_INFO, VIRTDLMD_ERROR))
    b = FakeNode("node-b", "", text(BUSY, FENCE))
    watch = JournalWatch({"node-a": a, "node-b": b}, log_signs(LOCK_MANAGER)).arm()
    assert watch.cursors == {"node-a": CURSOR, "node-b": None}
    bad = watch.bad_lines()
    assert [line.split()[0] for line in bad] == ["[node-a]", "[node-b]"]
    assert "lost disk" in bad[0] and "fence request 1" in bad[1]
    assert "--after-cursor" in a.commands[-1] and " -b " in b.commands[-1]
    assert watch.bad_lines(skip=["node-b"]) == bad[:1]


class DirtyJournalNode(FakeNode):
    """A node whose journalctl aborts seeking a cursor into a file a power cut left dirty."""

    def check(self, command: str, timeout_s: float = 60.0) -> Result:
        if "--after-cursor" in command:
            self.commands.append(command)
            failed = Result(self.name, (command,), 134, "", ABORT, 0.01)
            raise CommandFailed(failed)
        return super().check(command, timeout_s)


ABORT = (
    "Assertion 'last_index <= right' failed at src/libsystemd/sd-journal/journal-file.c:2688, "
    "function generic_array_bisect(). Aborting."
)


def test_a_journal_left_dirty_by_a_fence_is_read_from_the_current_boot() -> None:
    node = DirtyJournalNode("node-b", text(TOKEN), text(BUSY, FENCE))
    watch = JournalWatch({"node-b": node}, log_signs(LOCK_MANAGER)).arm()
    bad = watch.bad_lines()
    assert len(bad) == 1 and "fence request 1" in bad[0]
    assert "--after-cursor" in node.commands[-2] and " -b " in node.commands[-1]


def test_any_other_journalctl_failure_is_an_error() -> None:
    class Broken(FakeNode):
        def check(self, command: str, timeout_s: float = 60.0) -> Result:
            if "--after-cursor" in command:
                raise CommandFailed(Result(self.name, (command,), 1, "", "No such file", 0.01))
            return super().check(command, timeout_s)

    watch = JournalWatch({"node-a": Broken("node-a", text(TOKEN), "")}).arm()
    with pytest.raises(CommandFailed):
        watch.bad_lines()
