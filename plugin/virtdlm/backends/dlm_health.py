"""The libdlm backend's health probe: is this node's kernel lockspace usable, from outside it.

A DLM call on a stopped lockspace blocks until recovery ends, for ever if it never does, so
the probe asks no DLM call. It reads four sources, none of them the lockspace handle:

- the lockspace's sysfs directory, /sys/kernel/dlm/<lockspace>: present while this node is
  in the lockspace; missing after we joined means it was released (``gone``).
- dlm_controld, the process. When dlm_controld exits, the kernel stops every lockspace: the
  last close of its monitor device (fs/dlm/user.c, monitor_device_close) calls
  dlm_stop_lockspaces() (fs/dlm/lockspace.c), which logs "no userland control daemon,
  stopping lockspace" and dlm_ls_stop()s each running one; from then on every lock, convert
  and unlock waits in dlm_lock_recovery(). A new dlm_controld does not start them again: it
  finds "uncontrolled lockspace"s and has corosync remove the node, which needs a reboot
  (dlm_controld's check_uncontrolled_lockspaces). So the probe remembers the dlm_controld
  *instance* (pid and start time, proc(5)) seen when it was made, and the lockspace counts as
  ``stopped`` from the first reading where that instance is gone, whatever runs after it.
  The instance is found by its name in /proc/<pid>/comm rather than by its pid file: the pid
  file's path changed across dlm versions (/var/run/dlm_controld.pid,
  /run/dlm_controld/dlm_controld.pid) and stays behind a killed daemon, while /proc says
  what runs; the scan happens once at start and again only after the instance is gone.
- `dlm_tool status` (dlm_controld's own view, libdlmcontrol's dlmc_print_status): a line
  "fence <nodeid> <reason> pid <p> actor <a> fail <walltime> fence <walltime> now <t>" (or
  "... delay actor ...") is printed for each node that needs fencing and is not fenced yet;
  while one is, recovery of every lockspace waits for it. Reported as "waiting for fencing of
  node N (reason)" since its fail time.
- `corosync-quorumtool -s`: exit 0 quorate, 2 not quorate (its man page, corosync 3.x), any
  other end (1 = no corosync, a timeout, not installed) unknown. The tool rather than libquorum
  through cffi: a libquorum call into a hung corosync cannot be given up, a child process can
  be killed at its deadline; and every node with corosync has the tool, while libquorum would
  be one more library to load inside virtdlmd.

Each tool runs with a deadline (TOOL_TIMEOUT_S); a tool that is missing, fails or hangs
makes its part unknown, never the lockspace unhealthy. The parsers are pure functions over
the tools' text, tested with captured samples.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time

from ..procfs import process_alive, process_start_time
from .base import LOCKSPACE_GONE, LOCKSPACE_OK, LOCKSPACE_STOPPED, HealthReading

log = logging.getLogger(__name__)

SYSFS_DLM = "/sys/kernel/dlm"
PROC = "/proc"
DLM_CONTROLD_COMM = "dlm_controld"
QUORUM_TOOL = ("corosync-quorumtool", "-s")
DLM_STATUS_TOOL = ("dlm_tool", "status")
TOOL_TIMEOUT_S = 5.0  # per tool and reading; the monitor waits for the whole reading longer
QUORUM_EXIT_QUORATE = 0
QUORUM_EXIT_NOT_QUORATE = 2

_FENCE_LINE = re.compile(
    r"^fence (?P<node>\d+) (?P<reason>\S+) .*?\bfail (?P<fail>\d+) fence \d+ now \d+"
)
_FENCE_NO_DATA = re.compile(r"^fence (?P<node>\d+) no data")


# -- parsers: pure functions over the tools' output ------------------------------------------


def parse_quorum(rc: int | None, output: str) -> tuple[bool | None, str]:
    """(quorate, detail) from `corosync-quorumtool -s`'s exit code (None: did not run)."""
    if rc == QUORUM_EXIT_QUORATE:
        return True, "corosync-quorumtool: quorate"
    if rc == QUORUM_EXIT_NOT_QUORATE:
        return False, "corosync-quorumtool: not quorate"
    first = next((line.strip() for line in output.splitlines() if line.strip()), "")
    return None, f"corosync-quorumtool exited {rc}" + (f": {first}" if first else "")


def parse_fencing(output: str) -> tuple[str, float | None]:
    """(what, since) for the first node `dlm_tool status` says awaits fencing; ("", None)
    when none does."""
    for line in output.splitlines():
        m = _FENCE_LINE.match(line.strip())
        if m:
            fail = int(m["fail"])
            return (
                f"waiting for fencing of node {m['node']} ({m['reason']})",
                float(fail) if fail > 0 else None,
            )
        m = _FENCE_NO_DATA.match(line.strip())
        if m:
            return f"waiting for fencing of node {m['node']}", None
    return "", None


# -- the sources -----------------------------------------------------------------------------


def find_process(comm: str, proc: str = PROC) -> tuple[int, int] | None:
    """(pid, start time) of a process whose /proc/<pid>/comm is `comm`, or None."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "comm"), encoding="ascii", errors="replace") as f:
                if f.read().strip() != comm:
                    continue
        except OSError:  # exited meanwhile
            continue
        start = process_start_time(int(entry))
        if start is not None:
            return int(entry), start
    return None


def run_tool(argv: tuple[str, ...], timeout_s: float = TOOL_TIMEOUT_S) -> tuple[int | None, str]:
    """(exit code, stdout + stderr) of a tool; exit code None when it is not installed or did
    not end within timeout_s (the text then says which)."""
    if shutil.which(argv[0]) is None:
        return None, f"{argv[0]} is not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return None, f"{' '.join(argv)} did not answer in {timeout_s:g} s"
    except OSError as err:
        return None, f"{' '.join(argv)}: {err.strerror}"
    return done.returncode, done.stdout + done.stderr


class DlmHealthProbe:
    """HealthProbe of the kernel DLM for one lockspace this node has joined."""

    def __init__(self, lockspace: str, sysfs: str = SYSFS_DLM, proc: str = PROC) -> None:
        self.lockspace = lockspace
        self._sysfs = os.path.join(sysfs, lockspace)
        self._proc = proc
        self._controld = find_process(DLM_CONTROLD_COMM, proc)
        self._gone_since: float | None = None
        self._stopped_since: float | None = None
        self._stopped_detail = ""
        if self._controld is None:
            log.warning(
                "%s: no dlm_controld process found at start: the lockspace counts as stopped",
                lockspace,
            )

    def read(self) -> HealthReading:
        lockspace, detail, since = self._lockspace()
        fencing, fencing_since = "", None
        if lockspace == LOCKSPACE_OK:  # dlm_controld answers only while it runs
            rc, out = run_tool(DLM_STATUS_TOOL)
            if rc is not None:
                fencing, fencing_since = parse_fencing(out)
        quorate, quorum_detail = parse_quorum(*run_tool(QUORUM_TOOL))
        return HealthReading(
            lockspace=lockspace,
            lockspace_detail=detail,
            lockspace_since=since,
            quorate=quorate,
            quorum_detail=quorum_detail,
            fencing=fencing,
            fencing_since=fencing_since,
        )

    def _lockspace(self) -> tuple[str, str, float | None]:
        """The lockspace's state from sysfs and the dlm_controld instance; sticky, as the
        kernel's is: a gone or stopped lockspace never runs again in this daemon's life."""
        if self._gone_since is not None or not os.path.isdir(self._sysfs):
            self._gone_since = self._gone_since or time.time()
            return (
                LOCKSPACE_GONE,
                f"{self._sysfs} is missing: this node is no longer in the lockspace",
                self._gone_since,
            )
        if self._stopped_since is None and not self._controld_alive():
            self._stopped_since = time.time()
            self._stopped_detail = self._why_stopped()
        if self._stopped_since is not None:
            return LOCKSPACE_STOPPED, self._stopped_detail, self._stopped_since
        return LOCKSPACE_OK, "", None

    def _controld_alive(self) -> bool:
        return self._controld is not None and process_alive(*self._controld)

    def _why_stopped(self) -> str:
        now = find_process(DLM_CONTROLD_COMM, self._proc)
        if self._controld is None:
            return "dlm_controld is not running"
        if now is None:
            return f"dlm_controld (pid {self._controld[0]}) is not running"
        return (
            f"dlm_controld (pid {self._controld[0]}) exited and pid {now[0]} runs now; the "
            "kernel stopped the lockspace when the first one exited, and only a reboot "
            "clears it"
        )

    def close(self) -> None:
        pass
