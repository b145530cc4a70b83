"""The node-journal audit of the two-node suite: what the lock's daemons logged during a test.

Before a test the audit takes a journal cursor on each node; after it, it reads what virtdlmd,
libvirtd, dlm_controld and corosync logged since (``JournalWatch``), and the test fails on any
entry that is bad and not allowed:
- bad: journal priority err or worse (libvirtd, dlm_controld and corosync log with
  priorities), or a line that lab.suite.audit.BAD_LINE finds (ERROR, Traceback, a lost lock:
  virtdlmd logs to stderr, so every line of it arrives as info with its level in the text);
- allowed: the entry, as rendered for the report, contains a substring of the test's
  ``allow_log`` markers or of ALWAYS_ALLOWED.
Building the journalctl command lines, parsing their JSON and judging entries are pure
functions, tested on journal text (tests/unit/test_suite_journal.py).
"""

from __future__ import annotations

import datetime
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..command import CommandFailed, Result
from ..wait import LabError
from .audit import BAD_LINE

UNITS = ("virtdlmd.service", "libvirtd.service", "dlm.service", "corosync.service")
ERR_PRIORITY = 3  # syslog(3): emerg 0, alert 1, crit 2, err 3, warning 4, notice 5, info 6
PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
INFO_PRIORITY = 6  # what journald gives a line without a priority
FIELDS = ("MESSAGE", "PRIORITY", "_SYSTEMD_UNIT", "UNIT", "SYSLOG_IDENTIFIER", "_PID")
JOURNAL_TIMEOUT_S = 30.0
MAX_SHOWN_LINES = 40  # of one failure message; the rest is counted
MAX_TRACEBACK_LINES = 40  # shown after a "Traceback" line
TRACEBACK = "Traceback (most recent call last)"

# What libvirtd on a lab node logs at err priority each time it starts, in any test: the box
# is built without libvirt's recommended packages (lab/box/build-box), so its network driver
# finds no dnsmasq and its sysinfo no dmidecode. Nothing to do with locks, and the lines of a
# start (the control run's switch, a reboot) may land in the next test's window.
ALWAYS_ALLOWED = (
    "Cannot check dnsmasq binary",
    "Unable to find 'dnsmasq' binary",  # libvirtd's start: the nodes need no libvirt network
    "dmidecode",
    # libvirtd's RPC layer when a remote client (this suite's qemu+tcp connection, or the
    # peer libvirtd of a p2p migration) goes away without a goodbye: seen after migrations.
    "End of file while reading data: Input/output error",
)


class JournalError(LabError):
    pass


@dataclass(frozen=True)
class Entry:
    node: str
    unit: str
    identifier: str
    pid: str
    priority: int
    message: str
    realtime_us: int

    def render(self) -> str:
        """One line: node, UTC time, unit, process, priority, message."""
        when = datetime.datetime.fromtimestamp(self.realtime_us / 1e6, datetime.UTC)
        known = 0 <= self.priority < len(PRIORITY_NAMES)
        prio = PRIORITY_NAMES[self.priority] if known else str(self.priority)
        text = " | ".join(self.message.splitlines())
        return (
            f"[{self.node}] {when:%H:%M:%S.%f} {self.unit} {self.identifier}[{self.pid}] "
            f"{prio}: {text}"
        )


def cursor_command() -> str:
    """The last entry of the node's journal, for its cursor (always printed with JSON)."""
    return "journalctl --no-pager -q -n 1 -o json --output-fields=PRIORITY"


def entries_command(cursor: str | None, units: Sequence[str] = UNITS) -> str:
    """Every entry of these units after the cursor (no cursor: since this boot)."""
    where = f"--after-cursor={shlex.quote(cursor)}" if cursor else "-b"
    unit_args = " ".join(f"-u {shlex.quote(u)}" for u in units)
    return (
        f"journalctl --no-pager -q -o json --output-fields={','.join(FIELDS)} {where} {unit_args}"
    )


def parse_cursor(text: str) -> str | None:
    """The cursor of the entry `cursor_command` printed; None if the journal is empty."""
    entries = [_record(line) for line in text.splitlines() if line.strip()]
    cursors = [str(e["__CURSOR"]) for e in entries if e.get("__CURSOR")]
    return cursors[-1] if cursors else None


def parse_entries(node: str, text: str) -> list[Entry]:
    """journalctl -o json output (one object a line) as entries."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = _record(line)
        out.append(
            Entry(
                node,
                # systemd's own lines about a unit carry UNIT; the unit's processes' lines
                # carry _SYSTEMD_UNIT
                _text(fields.get("UNIT") or fields.get("_SYSTEMD_UNIT")) or "?",
                _text(fields.get("SYSLOG_IDENTIFIER")) or "?",
                _text(fields.get("_PID")) or "?",
                int(_text(fields.get("PRIORITY")) or INFO_PRIORITY),
                _text(fields.get("MESSAGE")),
                int(_text(fields.get("__REALTIME_TIMESTAMP")) or 0),
            )
        )
    return out


def is_bad(entry: Entry) -> bool:
    return entry.priority <= ERR_PRIORITY or BAD_LINE.search(entry.message) is not None


def bad_lines(entries: Iterable[Entry], allow: Sequence[str] = ()) -> list[str]:
    """The rendered bad entries that no allowed substring (nor ALWAYS_ALLOWED) covers.

    A traceback comes as one line per entry: its first line is shown with the rest of it
    (the same process's following lines, up to the exception's own line), joined by " | ".
    """
    allowed = (*ALWAYS_ALLOWED, *allow)
    seq = list(entries)
    out = []
    shown: set[int] = set()  # a traceback's lines, shown with its first one
    for i, entry in enumerate(seq):
        if i in shown or not is_bad(entry):
            continue
        rest = _traceback_rest(seq, i)
        shown.update(rest)
        line = " | ".join([entry.render(), *(seq[j].message.strip() for j in rest)])
        if not any(a in line for a in allowed):
            out.append(line)
    return out


def _traceback_rest(entries: Sequence[Entry], i: int) -> list[int]:
    """Where the rest of the traceback that starts at entries[i] is (none if it is not one)."""
    head = entries[i]
    if TRACEBACK not in head.message:
        return []
    rest = []
    for j in range(i + 1, len(entries)):
        entry = entries[j]
        if (entry.unit, entry.pid) != (head.unit, head.pid):
            continue  # another process's line, interleaved
        rest.append(j)
        if not entry.message[:1].isspace() or len(rest) >= MAX_TRACEBACK_LINES:
            break  # "SomeError: message" ends a traceback; its frames are indented
    return rest


def failure_message(lines: Sequence[str], units: Sequence[str] = UNITS) -> str:
    shown = [*lines[:MAX_SHOWN_LINES]]
    if len(lines) > MAX_SHOWN_LINES:
        shown.append(f"... and {len(lines) - MAX_SHOWN_LINES} more")
    return (
        f"unexpected lines in the nodes' journals ({', '.join(units)}) during this test; "
        "if the test causes them, allow them with @pytest.mark.allow_log(substring, ...):\n"
        + "\n".join(shown)
    )


class Shell(Protocol):
    """What the watch needs of a node (lab.nodes.node.Node): a command that must succeed."""

    def check(self, command: str, timeout_s: float = ...) -> Result: ...


class JournalWatch:
    """Per node: where its journal ended when the test began; the bad lines since then."""

    def __init__(self, nodes: Mapping[str, Shell], allow: Sequence[str] = ()) -> None:
        self.nodes = dict(nodes)
        self.allow = tuple(allow)
        self.cursors: dict[str, str | None] = {}

    def arm(self) -> JournalWatch:
        for name, node in self.nodes.items():
            out = node.check(cursor_command(), timeout_s=JOURNAL_TIMEOUT_S).stdout
            self.cursors[name] = parse_cursor(out)
        return self

    def bad_lines(self, skip: Iterable[str] = (), advance: bool = False) -> list[str]:
        """The bad, not allowed lines of every armed node but `skip` (nodes that are down).
        `advance`: the next call reads only what comes after these lines (a scenario reads
        its journals after every step)."""
        down = set(skip)
        out: list[str] = []
        for name, cursor in list(self.cursors.items()):
            if name in down:
                continue
            text = self._entries(name, cursor)
            out.extend(bad_lines(parse_entries(name, text), self.allow))
            if advance:
                self.cursors[name] = parse_cursor(text) or cursor
        return out

    def _entries(self, name: str, cursor: str | None) -> str:
        """journalctl's entries after the cursor. A node powered off under its journal (a
        fence) leaves the old boot's file dirty, and seeking a cursor into it can make
        systemd 252's journalctl abort ("Assertion 'last_index <= right' failed"): the
        current boot is read then, which is all that can still be read on that node."""
        node = self.nodes[name]
        try:
            return node.check(entries_command(cursor), timeout_s=JOURNAL_TIMEOUT_S).stdout
        except CommandFailed as err:
            if cursor is None or "Assertion" not in err.result.stderr:
                raise
            return node.check(entries_command(None), timeout_s=JOURNAL_TIMEOUT_S).stdout


def _record(line: str) -> dict[str, object]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise JournalError(f"journalctl -o json printed a line that is not JSON: {line!r}") from err
    if not isinstance(value, dict):
        raise JournalError(f"journalctl -o json printed a line that is not an object: {line!r}")
    return value


def _text(value: object) -> str:
    """A journal field as text: journalctl prints a field that is not UTF-8 as a list of
    byte values, and a field given more than once as a list of its values."""
    if value is None:
        return ""
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return bytes(value).decode("utf-8", errors="replace")
        return " ".join(_text(v) for v in value)
    return str(value)
