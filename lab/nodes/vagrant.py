"""The one wrapper for vagrant: python-vagrant's verbs, each with a deadline and raising errors.

python-vagrant (``import vagrant``) runs every verb: ``up`` (streaming, so progress shows
as it happens), ``status``, ``destroy``, ``ssh_config``, ``box_list`` and ``box_remove``.
It has no deadlines and returns or raises without vagrant's words, so each verb runs in
the child program lab.nodes.vagrant_verb through lab.command.run: at the deadline the
child's process group (vagrant and whatever it started) is killed and VagrantTimeout
raised; a failure raises VagrantError with the command, exit code and vagrant's own error
text or the log's tail. Decoding what the child prints is pure and tested on captured text.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from ..command import CommandTimeout, Result, run
from ..settings import REPO
from ..wait import LabError

UP_TIMEOUT_S = 1200.0
DESTROY_TIMEOUT_S = 300.0
QUERY_TIMEOUT_S = 60.0
BOX_REMOVE_TIMEOUT_S = 120.0
ERROR_TAIL_CHARS = 800
LOG_TAIL_LINES = 25
CHILD = "lab.nodes.vagrant_verb"


class VagrantError(LabError):
    pass


class VagrantTimeout(VagrantError):
    pass


@dataclass(frozen=True)
class MachineState:
    name: str
    state: str  # "running", "not_created", "poweroff" (libvirt's shutoff), ...


@dataclass(frozen=True)
class Box:
    name: str
    provider: str
    version: str


def decode_status(text: str) -> list[MachineState]:
    """The child's `status` output (python-vagrant's Status records as JSON)."""
    return [MachineState(str(s["name"]), str(s["state"])) for s in _json_list(text)]


def decode_boxes(text: str) -> list[Box]:
    """The child's `box-list` output (python-vagrant's Box records as JSON)."""
    return [
        Box(str(b["name"]), str(b["provider"] or ""), str(b["version"] or ""))
        for b in _json_list(text)
    ]


def _json_list(text: str) -> list[dict[str, object]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise VagrantError(f"{CHILD} printed no JSON ({err}): {text[:300]!r}") from err
    if not isinstance(value, list):
        raise VagrantError(f"{CHILD} printed {type(value).__name__}, not a list: {text[:300]!r}")
    return value


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
        base = os.environ if env is None else env
        self.env = dict(
            base,
            VAGRANT_DEFAULT_PROVIDER="libvirt",
            VAGRANT_CHECKPOINT_DISABLE="1",
            # the child imports lab.nodes.vagrant_verb from this tree, whatever its cwd
            PYTHONPATH=os.pathsep.join(p for p in (REPO, base.get("PYTHONPATH")) if p),
        )

    def _verb(self, args: list[str], timeout_s: float, logged: bool = False) -> Result:
        """Run one verb in the child; `logged`: vagrant's words are in the log, not stderr."""
        what = " ".join(args)
        argv = [sys.executable, "-m", CHILD, "--root", self.root, "--log", self.log_path, *args]
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        try:
            # up's progress lines go straight to our stderr as the child writes them
            result = run(argv, timeout_s, "host", self.env, cwd=self.root, show_progress=logged)
        except CommandTimeout as err:
            raise VagrantTimeout(
                f"vagrant {what} did not finish in {timeout_s:.0f} s (log {self.log_path})"
            ) from err
        if result.ok:
            return result
        if logged:
            raise VagrantError(
                f"vagrant {what} failed (rc {result.rc}); last lines of "
                f"{self.log_path}:\n{self.log_tail()}"
            )
        raise VagrantError(
            f"vagrant {what} failed (rc {result.rc}): {result.stderr.strip()[-ERROR_TAIL_CHARS:]}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # -- verbs ----------------------------------------------------------------------------

    def up(self, provision: bool = False, timeout_s: float = UP_TIMEOUT_S) -> None:
        self._verb(["up", *(["--provision"] if provision else [])], timeout_s, logged=True)

    def status(self) -> list[MachineState]:
        return decode_status(self._verb(["status"], QUERY_TIMEOUT_S).stdout)

    def ssh_config(self, name: str) -> str:
        text = json.loads(self._verb(["ssh-config", name], QUERY_TIMEOUT_S).stdout)
        return str(text)

    def destroy(self, timeout_s: float = DESTROY_TIMEOUT_S) -> None:
        self._verb(["destroy"], timeout_s, logged=True)

    def box_list(self) -> list[Box]:
        return decode_boxes(self._verb(["box-list"], QUERY_TIMEOUT_S).stdout)

    def box_remove(self, name: str, provider: str) -> None:
        self._verb(["box-remove", name, provider], BOX_REMOVE_TIMEOUT_S)
