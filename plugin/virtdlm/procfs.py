"""What /proc says about a process: is this pid still the process we met (proc(5)).

A pid alone is not an identity: pids are reused. A process is (pid, start time), the start
time read from /proc/<pid>/stat. The daemon keys owners on it; the lab uses it to tell a
live daemon or QEMU from a stale pid file.
"""

from __future__ import annotations

STAT_START_TIME_FIELD = 19  # proc(5) field 22, counted after the ")" that ends field 2
STAT_STATE_ZOMBIE = "Z"


def process_start_time(pid: int) -> int | None:
    """The pid's start time in clock ticks since boot (proc(5) field 22), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:  # gone (ENOENT, ESRCH) or not ours to read: no live process to key on
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) <= STAT_START_TIME_FIELD or fields[0] == STAT_STATE_ZOMBIE:
        return None  # a zombie has exited: its locks are free to go
    return int(fields[STAT_START_TIME_FIELD])


def process_alive(pid: int, start_time: int) -> bool:
    """True while `pid` is still the process that started at `start_time`."""
    return process_start_time(pid) == start_time
