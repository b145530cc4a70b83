"""The one way the lab runs a command: with a timeout, returning a result record.

Callers choose strictness: ``run`` returns the Result whatever the exit code; ``check``
raises CommandFailed on a non-zero exit; a timeout always raises CommandTimeout, a command
that cannot start (not installed) CommandNotStarted. Tests never call subprocess themselves.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from virtdlm.procfs import process_start_time

from .wait import LabError

DEFAULT_TIMEOUT_S = 60.0
REAP_TIMEOUT_S = 5.0  # after a timeout's kill, how long to wait for the pipes to close


@dataclass(frozen=True)
class Result:
    node: str
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def describe(self) -> str:
        return (
            f"[{self.node}] {shlex.join(self.argv)} -> rc {self.rc} in {self.seconds:.1f} s"
            f"\nstdout: {self.stdout.strip()[-2000:]}\nstderr: {self.stderr.strip()[-2000:]}"
        )


class CommandFailed(LabError):
    def __init__(self, result: Result) -> None:
        super().__init__(result.describe())
        self.result = result


class CommandNotStarted(LabError):
    pass


class CommandTimeout(LabError):
    def __init__(self, node: str, argv: Sequence[str], timeout_s: float, out: str) -> None:
        super().__init__(
            f"[{node}] {shlex.join(argv)} did not finish in {timeout_s:.0f} s; "
            f"last output: {out.strip()[-500:]!r}"
        )
        self.argv = tuple(argv)


def run(
    argv: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    node: str = "host",
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    cwd: str | None = None,
    show_progress: bool = False,
) -> Result:
    """`show_progress`: the command's stderr goes straight to ours (a long step's progress
    lines appear as they are written) and the Result's stderr is empty."""
    started = time.monotonic()
    # Its own process group, so that a timeout kills the command *and* its children: a
    # child left alive would hold the output pipes open and the wait would never end.
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None if show_progress else subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:  # not installed, not executable: say so, with the OS's words
        raise CommandNotStarted(f"[{node}] {shlex.join(argv)}: cannot start it: {exc}") from exc
    try:
        out, err = proc.communicate(input_text, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # a descendant left the group and kept a pipe
            proc.kill()
            out = ""
        raise CommandTimeout(node, argv, timeout_s, out or "") from exc
    return Result(node, tuple(argv), proc.returncode, out, err or "", time.monotonic() - started)


def check(
    argv: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    node: str = "host",
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    show_progress: bool = False,
) -> Result:
    result = run(argv, timeout_s, node, env, input_text, show_progress=show_progress)
    if not result.ok:
        raise CommandFailed(result)
    return result


def spawn(argv: Sequence[str], log_path: str) -> int:
    """Start a daemon that must outlive this process (in its own session, its output
    appended to `log_path` after a line naming the command); its pid. The caller watches
    it by its pid file and stops it by pid."""
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%F %T')} {shlex.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as exc:
            raise CommandNotStarted(f"[host] {shlex.join(argv)}: cannot start it: {exc}") from exc
    return proc.pid


def alive(pid: int) -> bool:
    """Running, not a zombie: the same test virtdlmd uses for its owners."""
    return process_start_time(pid) is not None


def read_pid(path: str) -> int | None:
    """The pid a daemon wrote to its pid file; None if there is no file or no number in it."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
