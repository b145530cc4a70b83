"""The one wrapper for the vagrant CLI: verbs as methods, deadlines, progress, and parsers.

Like python-vagrant, public methods are named after vagrant's verbs and the parsing of
``--machine-readable`` output is kept apart (pure functions, tested on captured text).
Unlike it, every call has a deadline and a failure raises (VagrantError with the command,
exit code and the log's tail) instead of returning partial output. Long verbs stream their
output to .lab/logs/vagrant.log and print progress lines with the elapsed time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..command import Result, run
from ..wait import LabError

UP_TIMEOUT_S = 1200.0
DESTROY_TIMEOUT_S = 300.0
QUERY_TIMEOUT_S = 60.0
PROGRESS_MARKERS = (
    "Bringing machine",
    "Creating image",
    "Uploading base box",
    "Waiting for domain",
    "Waiting for machine to boot",
    "Machine booted",
)


class VagrantError(LabError):
    pass


class VagrantTimeout(VagrantError):
    pass


@dataclass(frozen=True)
class MachineState:
    name: str
    state: str  # "running", "not_created", "shutoff", ...


def parse_status(text: str) -> list[MachineState]:
    """Machines and states from `vagrant status --machine-readable`."""
    out = []
    for line in text.splitlines():
        parts = line.split(",", 3)
        if len(parts) == 4 and parts[2] == "state" and parts[1]:
            out.append(MachineState(parts[1], parts[3].strip()))
    return out


def boot_or_network_timeout(log_tail: str) -> bool:
    """Failures worth one retry: a boot that timed out, an address that never came."""
    needles = (
        "Timed out while waiting for the machine to boot",
        "Waiting for domain to get an IP address",
        "timed out",
        "Call to virDomainCreateWithFlags failed",
    )
    return any(n in log_tail for n in needles)


class Vagrant:
    def __init__(self, root: str, log_path: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.log_path = log_path
        self.env = dict(
            os.environ if env is None else env,
            VAGRANT_DEFAULT_PROVIDER="libvirt",
            VAGRANT_CHECKPOINT_DISABLE="1",
        )

    def _query(self, *args: str, timeout_s: float = QUERY_TIMEOUT_S) -> Result:
        result = run(["vagrant", *args], timeout_s, "host", self.env, cwd=self.root)
        if not result.ok:
            raise VagrantError(
                f"vagrant {' '.join(args)} failed (rc {result.rc}): {result.stderr.strip()[-800:]}"
            )
        return result

    def _stream(self, args: Sequence[str], timeout_s: float, what: str) -> None:
        """Run a long verb, logging everything and printing progress with elapsed time."""
        started = time.monotonic()
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n### vagrant {' '.join(args)} ({time.strftime('%F %T')})\n")
            proc = subprocess.Popen(
                ["vagrant", *args],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its own process group: see expire()
            )
            expired = threading.Event()

            def expire() -> None:
                """Kill vagrant and every child it started (ssh, helpers): a child left
                alive would hold the output pipe open and the read below would hang."""
                expired.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

            timer = threading.Timer(timeout_s, expire)
            timer.start()
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    log.write(f"[{time.monotonic() - started:7.1f}] {line}")
                    if any(m in line for m in PROGRESS_MARKERS):
                        print(
                            f"  [{time.monotonic() - started:6.0f}s] {line.strip()[:110]}",
                            file=sys.stderr,
                            flush=True,
                        )
                rc = proc.wait()
            finally:
                timer.cancel()
        if expired.is_set():
            raise VagrantTimeout(
                f"vagrant {what} did not finish in {timeout_s:.0f} s (log {self.log_path})"
            )
        if rc != 0:
            raise VagrantError(
                f"vagrant {what} failed (rc {rc}); last lines of "
                f"{self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # -- verbs ----------------------------------------------------------------------------

    def up(self, provision: bool = False, timeout_s: float = UP_TIMEOUT_S) -> None:
        self._stream(["up", "--provision" if provision else "--no-provision"], timeout_s, "up")

    def status(self) -> list[MachineState]:
        return parse_status(self._query("status", "--machine-readable").stdout)

    def ssh_config(self, name: str) -> str:
        return self._query("ssh-config", name).stdout

    def destroy(self, timeout_s: float = DESTROY_TIMEOUT_S) -> None:
        self._stream(["destroy", "--force"], timeout_s, "destroy")
