"""The one way the lab runs a command: with a timeout, returning a result record.

Callers choose strictness: ``run`` returns the Result whatever the exit code; ``check``
raises CommandFailed on a non-zero exit; a timeout always raises CommandTimeout. Tests never
call subprocess themselves.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .wait import LabError

DEFAULT_TIMEOUT_S = 60.0


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
) -> Result:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=dict(env) if env is not None else None,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else ""
        raise CommandTimeout(node, argv, timeout_s, out) from err
    return Result(
        node, tuple(argv), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started
    )


def check(
    argv: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    node: str = "host",
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> Result:
    result = run(argv, timeout_s, node, env, input_text)
    if not result.ok:
        raise CommandFailed(result)
    return result
